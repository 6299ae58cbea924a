"""The quick start's table with 16 seeds per row and the extended evaluation
(docs/evaluation.md): every row is a population of 16 models, an `oracle`
row (16 more retrained models) gives the ceiling of the forget score F, and
every evaluator runs.

Half the quick start's epochs, so that the 16-member populations of the
original, the retrained and the oracle models fit in about 20 minutes on a
2-core CPU; the original still remembers its people (README: MIA 0.6-0.7).
"""

from configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.population.size = 16
  for kind in ('original', 'retrain'):
    config[kind].epochs = 20
    config[kind].decay_epochs = (7, 14)
  return config
