"""Result files that are either whole or absent.

A run can be killed at any moment; a reader (the same command started again,
or a person) must never take a half-written file for a finished one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile


@contextlib.contextmanager
def replaced_atomically(path: str, mode: str = 'w', **kwargs):
  """Opens a temporary file beside `path` for writing, and renames it to
  `path` once the block ends without an error (an atomic replace on POSIX
  file systems); on an error the temporary file is removed and `path` keeps
  what it held."""
  folder = os.path.dirname(path) or '.'
  os.makedirs(folder, exist_ok=True)
  fd, temporary = tempfile.mkstemp(dir=folder, suffix='.partial',
                                   prefix=f'.{os.path.basename(path)}.')
  try:
    # mkstemp's file is private (0600); a result file gets the permissions
    # that open() would give it.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    with os.fdopen(fd, mode, **kwargs) as f:
      yield f
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.unlink(temporary)
    raise


class WorkdirInUse(RuntimeError):
  """Another run holds the workdir."""


@contextlib.contextmanager
def exclusive(workdir: str):
  """Holds `workdir` for this process while the block runs.

  The lock is the kernel's (flock on `<workdir>/.lock`), so it goes with the
  process however that ends, SIGKILL included: a killed run never locks out
  the command that resumes it.

  Raises:
    WorkdirInUse: naming the process that holds it.
  """
  os.makedirs(workdir, exist_ok=True)
  fd = os.open(os.path.join(workdir, '.lock'), os.O_RDWR | os.O_CREAT, 0o666)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.read(fd, 64).decode(errors='replace').strip() or 'unknown'
    os.close(fd)
    raise WorkdirInUse(
        f'{workdir} is in use by another run (process {holder}): wait for it '
        'to end, or give this run another --workdir.') from None
  try:
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    yield
  finally:
    os.close(fd)
