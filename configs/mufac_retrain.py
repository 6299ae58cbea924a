"""MUFAC (paper splits): the model retrained on retain only (SPEC §4)."""

from configs import mufac_original


def get_config():
  config = mufac_original.get_config()
  config.models = 'retrain'
  return config
