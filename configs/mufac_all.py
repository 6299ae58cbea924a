"""MUFAC (paper splits): the whole table: original, retrained and every method."""

from configs import default


def get_config():
  return default.for_dataset('mufac/paper', 'all')
