"""The quick start: the built-in synthetic face set, no download."""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'synthetic_faces/small'
  return config
