"""MUFAC (paper splits): the model retrained from scratch on retain (SPEC §4)."""

from configs import default


def get_config():
  return default.for_dataset('mufac/paper', 'retrain')
