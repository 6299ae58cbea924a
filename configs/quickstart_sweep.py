"""The quick start's methods tuned honestly (docs/protocol.md §9): every paper
method, SSD, SalUn and random labels, 8 candidates each (the defaults and 7
seeded draws from their search ranges), 4 seeds per candidate, chosen by both
honest criteria (nomus, retrain) and, for comparison, by peeking.

The training is shortened, not the search: quickstart_population's epochs
and the tiny ResNet, since every candidate program compiles its own steps
(a ResNet-18 of width 16 spends about 20 s compiling each on a 2-core CPU).
"""

from configs import quickstart_population


def get_config():
  config = quickstart_population.get_config()
  config.methods = 'original,retrain'
  config.model.name = 'resnet_tiny'
  config.model.num_filters = 0
  config.population.size = 4
  config.sweep.methods = 'all'
  config.sweep.candidates = 8
  config.sweep.criteria = 'nomus,retrain,peek'
  return config
