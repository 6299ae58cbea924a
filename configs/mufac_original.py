"""MUFAC (paper splits): the original model of protocol §4."""

from configs import default


def get_config():
  return default.for_dataset('mufac/paper', 'original')
