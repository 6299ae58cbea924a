"""MUFAC (paper splits): advanced NegGrad (protocol §5) beside the original."""

from configs import default


def get_config():
  return default.for_dataset('mufac/paper', 'original,advanced_neggrad')
