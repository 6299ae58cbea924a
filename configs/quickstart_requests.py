"""The quick start's deletion requests (docs/protocol.md §10): four requests
of 15 people each, drawn from the synthetic set's train, served one after
another by every paper method (8 seeds each, the fewest for which F and the
attack mean something), with the batch baseline and a population retrained
without the people of each request and every one before it.

The training is shortened as in quickstart_sweep (quickstart_population's
epochs, the tiny ResNet), since every request's models are retrained.
"""

from configs import quickstart_population


def get_config():
  config = quickstart_population.get_config()
  config.methods = 'original'
  config.model.name = 'resnet_tiny'
  config.model.num_filters = 0
  config.population.size = 8
  config.requests.count = 4
  config.requests.people = 15
  config.requests.first = 'drawn'
  config.requests.methods = 'paper'
  return config
