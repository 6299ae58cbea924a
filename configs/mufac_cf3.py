"""MUFAC (paper splits): CF-3 (protocol §5; k is config.unlearn.cf_k.k) beside the original."""

from configs import default


def get_config():
  return default.for_dataset('mufac/paper', 'original,cf_k')
