"""Every per-model record as a per-seed column (docs/evaluation.md §1).

Accuracy, MIA, seconds, ... are measured on each model; `base.result` adds
their means and 95% intervals over the seeds.
"""

from __future__ import annotations

import numbers

from mufax.evaluators import base


@base.register('seeds')
def evaluate(row: base.Population, refs: base.References) -> base.Result:
  """A per-seed column for every real-number key that all records have
  (the seed itself excepted)."""
  del refs  # Records are the row's own.
  if not row.records:
    return base.result()
  keys = [key for key, value in row.records[0].items()
          if key != 'seed' and isinstance(value, numbers.Real)
          and not isinstance(value, bool)]
  columns = {key: base.record_column(row, key) for key in keys}
  return base.result(per_seed={key: column for key, column in columns.items()
                               if column is not None})
