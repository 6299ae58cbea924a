"""MUFAC (paper splits): the original model of SPEC §4, evaluated."""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'mufac/paper'
  config.models = 'original'
  return config
