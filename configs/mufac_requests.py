"""Deletion requests on real MUFAC (docs/protocol.md §10), an accelerator
job: five requests of 20 people each, drawn from train, served one after
another by every paper method, 8 seeds each, with the batch baseline and a
population of 8 retrained without the people of each request and every one
before it (§4's recipe, 128x128).
"""

from configs import mufac_scrub


def get_config():
  config = mufac_scrub.get_config()
  config.methods = 'original'
  config.population.size = 8
  config.requests.count = 5
  config.requests.people = 20
  config.requests.first = 'drawn'
  config.requests.methods = 'paper'
  return config
