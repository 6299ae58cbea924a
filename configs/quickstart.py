"""The quick start: the whole table on the built-in synthetic face set.

A narrower ResNet-18 on 32x32 images, trained long enough that the original
model remembers its people (high MIA) and the retrained one does not; then
every unlearning method with the reference's hyperparameters.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'synthetic_faces/small'
  config.methods = 'all'
  config.model.num_filters = 16
  for kind in ('original', 'retrain'):
    config[kind].epochs = 40
    config[kind].decay_epochs = (14, 27)
  config.log_every_s = 10.0
  return config
