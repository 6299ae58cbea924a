"""Cost relative to retraining (docs/evaluation.md §7)."""

from __future__ import annotations

import numpy as np

from mufax.evaluators import base

# Record key -> its per-seed column relative to retraining.
COSTS = {'seconds': 'relative_seconds', 'flops': 'relative_flops'}


@base.register('cost')
def evaluate(row: base.Population, refs: base.References) -> base.Result:
  """Each model's seconds and FLOPs over the retrained population's mean.

  A column is left out when either population lacks the key, or when
  retraining's cost is not positive (no ratio to speak of).
  """
  scalars, per_seed = {}, {}
  for key, column in COSTS.items():
    mine = base.record_column(row, key)
    retrain = base.record_column(refs.retrain, key)
    if mine is not None and retrain is not None and retrain.mean() > 0:
      relative = mine / retrain.mean()
      # Members trained in one program share one measurement: a single
      # number, not an interval of width 0.
      if np.all(relative == relative[0]):
        scalars[column] = relative[0]
      else:
        per_seed[column] = relative
  return base.result(scalars, per_seed)
