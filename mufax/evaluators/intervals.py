"""Mean and 95% Student-t interval over a population's seeds
(docs/evaluation.md §1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
SUFFIX = '_ci95'


def t_interval(values) -> tuple[float, float]:
  """(mean, half width) of the 95% Student-t interval of `values`.

  The half width is t_{0.975, N−1} · sd / √N with the sample standard
  deviation (ddof = 1); one value has no spread to measure, so its half width
  is NaN. Non-finite values propagate (a NaN seed makes both NaN) rather than
  stop a whole evaluation.

  Raises:
    ValueError: on no values, or values that are not a 1-D sequence.
  """
  x = np.asarray(values, dtype=np.float64)
  if x.ndim != 1 or x.size == 0:
    raise ValueError(f't_interval needs a non-empty 1-D sequence, got '
                     f'{values!r}.')
  n = x.size
  if n == 1:
    return float(x[0]), math.nan
  quantile = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)
  return float(x.mean()), float(quantile * x.std(ddof=1) / math.sqrt(n))


def summarise(per_seed: Mapping[str, Sequence[float]]) -> dict[str, float]:
  """{column: mean, column + '_ci95': half width} for every per-seed column;
  a column of one value has its mean only (no interval, rather than NaN in
  results.json)."""
  out = {}
  for column, values in per_seed.items():
    out[column], half = t_interval(values)
    if len(values) > 1:
      out[column + SUFFIX] = half
  return out


# Resamples of the bootstrap over identities, and its seed: fixed, so a table
# is reproducible.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def bootstrap_half_width(values, groups) -> float:
  """Half the width of the 95% percentile bootstrap interval of the mean of
  `values`, resampling whole groups (the people of the forget set) with
  replacement: examples of one person are not independent.

  Args:
    values: [examples] a per-example score (its earnings in F, the attack's
      accuracy).
    groups: [examples] the group (identity) of each example.
  """
  values = np.asarray(values, dtype=np.float64)
  _, index = np.unique(np.asarray(groups), return_inverse=True)
  sums = np.bincount(index, weights=values)
  counts = np.bincount(index).astype(np.float64)
  rng = np.random.default_rng(BOOTSTRAP_SEED)
  drawn = rng.integers(len(sums), size=(BOOTSTRAP_RESAMPLES, len(sums)))
  means = sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1)
  low, high = np.quantile(means, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
  return float((high - low) / 2)
