"""MUFAC (paper splits): UNSIR stages 1 and 2 (protocol §5) beside the original."""

from configs import default


def get_config():
  return default.for_dataset('mufac/paper', 'original,unsir')
