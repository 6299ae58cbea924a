"""MUFAC's methods tuned honestly (docs/protocol.md §9), an accelerator job:
every paper method, SSD, SalUn and random labels, 32 candidates each, 8 seeds
per candidate, both honest criteria and peek, on real MUFAC at 128x128.

The originals and retrained models are §4's (30 epochs); originals,
retraining, the rehearsal retraining and every candidate are populations of
8.
"""

from configs import mufac_scrub


def get_config():
  config = mufac_scrub.get_config()
  config.methods = 'original,retrain'
  config.population.size = 8
  config.sweep.methods = 'all'
  config.sweep.candidates = 32
  config.sweep.criteria = 'nomus,retrain,peek'
  return config
