"""The MUFAC table (paper splits) with 64 seeds per row and the extended
evaluation (docs/evaluation.md): an accelerator job. On a CPU it starts,
prints its mesh and memory plan, and trains far too slowly to finish."""

from configs import paper


def get_config():
  config = paper.get_config('mufac,all')
  config.population.size = 64
  return config
