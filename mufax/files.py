"""Result files that are either whole or absent.

A run can be killed at any moment; a reader (the same command started again,
or a person) must never take a half-written file for a finished one.
"""

from __future__ import annotations

import contextlib
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
