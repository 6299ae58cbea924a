"""Result files that are either whole or absent.

A run can be killed at any moment; a reader (the same command started again,
or a person) must never take a half-written file for a finished one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile


class Unwritable(OSError):
  """A file or folder that cannot be written (no space, no permission); the
  message names it and says that nothing already written was lost."""


@contextlib.contextmanager
def replaced_atomically(path: str, mode: str = 'w', **kwargs):
  """Opens a temporary file beside `path` for writing, and renames it to
  `path` once the block ends without an error (an atomic replace on POSIX
  file systems); on an error the temporary file is removed and `path` keeps
  what it held.

  Raises:
    Unwritable: where the file system refuses the write (a full disk).
  """
  folder = os.path.dirname(path) or '.'
  temporary = None
  try:
    os.makedirs(folder, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=folder, suffix='.partial',
                                     prefix=f'.{os.path.basename(path)}.')
    # mkstemp's file is private (0600); a result file gets the permissions
    # that open() would give it.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    with os.fdopen(fd, mode, **kwargs) as f:
      yield f
    os.replace(temporary, path)
  except BaseException as e:
    if temporary and os.path.exists(temporary):
      os.unlink(temporary)
    if isinstance(e, OSError) and not isinstance(e, Unwritable):
      raise Unwritable(
          f'{path} could not be written ({e.strerror or e}); it keeps what '
          'it held, and every result written before is kept: free space or '
          'fix the folder, then run the same command again.') from e
    raise


class WorkdirInUse(RuntimeError):
  """Another run holds the workdir."""


@contextlib.contextmanager
def exclusive(workdir: str, process: int = 0):
  """Holds `workdir` for this process while the block runs.

  The lock is the kernel's (flock on `<workdir>/.lock`, `.lock.<process>`
  for the further processes of a run of several), so it goes with the
  process however that ends, SIGKILL included: a killed run never locks out
  the command that resumes it.

  Raises:
    WorkdirInUse: naming the process that holds it.
    Unwritable: where the workdir cannot be made or written.
  """
  name = '.lock' + (f'.{process}' if process else '')
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(os.path.join(workdir, name), os.O_RDWR | os.O_CREAT, 0o666)
  except OSError as e:
    raise Unwritable(f'The workdir {workdir} cannot be written '
                     f'({e.strerror or e}): give --workdir a folder this user '
                     'can write.') from None
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
