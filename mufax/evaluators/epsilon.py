"""Per-example ε and the forget score F of the NeurIPS 2023 unlearning
challenge (docs/evaluation.md §3).

For one forget example, the φ of N unlearned and of N retrained models are two
samples. Simple rules (a threshold, an interval) try to tell them apart; a
rule's false-positive and false-negative rates bound the ε of an (ε, δ)
indistinguishability statement, and ε_i is the largest bound over all rules.
F rewards examples whose ε_i is small, in buckets worth 1, 1/2, 1/4, ...
"""

from __future__ import annotations

import math

import numpy as np

from mufax.evaluators import base
from mufax.evaluators import intervals

DELTA = 1e-5
EPSILON_CAP = 50.0
# An example whose pools' spans differ by more than this factor scores the
# cap outright (one pool is a spike inside the other).
PEAKY_RATIO = 0.01
# Grid points per unit of φ, for thresholds and interval ends alike.
GRID_DENSITY = 100
# How far interval ends reach beyond the peakier pool.
BUFFER = 2.0
BUCKET_WIDTH = 0.5


def rule_epsilons(n_models: int, delta: float = DELTA) -> np.ndarray:
  """ε of a rule from its counts: [TP, FP], each 0..n_models.

  TP counts the positive pool's models that the rule calls positive, FP the
  negative pool's; FNR = (N − TP)/N, FPR = FP/N. A perfect rule is +∞; a
  dropped rule is 0 here, the floor of ε: one with exactly one of FPR, FNR
  zero, and one with FPR = FNR = 1, whose logs are both NaN (the challenge's
  `nanmax` of two NaNs is NaN, which drops it). Otherwise max(0,
  log(1 − δ − FPR) − log FNR, log(1 − δ − FNR) − log FPR), a NaN log (a rate
  of 1) ignored.
  """
  tp = np.arange(n_models + 1)[:, None]
  fpr = np.arange(n_models + 1)[None, :] / n_models
  fnr = (n_models - tp) / n_models
  with np.errstate(divide='ignore', invalid='ignore'):
    ratio_1 = np.log(1 - delta - fpr) - np.log(fnr)
    ratio_2 = np.log(1 - delta - fnr) - np.log(fpr)
  eps = np.fmax(np.fmax(ratio_1, ratio_2), 0.0)
  eps = np.where((fpr == 0) | (fnr == 0), 0.0, eps)
  return np.where((fpr == 0) & (fnr == 0), np.inf, eps)


def _threshold_counts(p: np.ndarray, q: np.ndarray):
  """(TP, FP) of every single threshold t: positive (pool p) when φ ≥ t."""
  lo, hi = min(p[0], q[0]), max(p[-1], q[-1])
  t = np.linspace(lo, hi, math.ceil((hi - lo) * GRID_DENSITY))
  n = len(p)
  return n - np.searchsorted(p, t), n - np.searchsorted(q, t)


def _interval_counts(a: np.ndarray, b: np.ndarray):
  """(TP, FP) of the interval rules l ≤ φ ≤ r, with b (the peakier pool) the
  positive one: every pair that some rule of the grid gives.

  With w = max(b) − min(b), the right ends are np.linspace(min(b) + w −
  BUFFER, max(b) + BUFFER, ⌈range · GRID_DENSITY⌉), the range and its
  rounding as in the challenge (401 points where it rounds above 4, not 400).
  Each right end r has its own left ends np.linspace(r − w − BUFFER, r − w +
  BUFFER, ⌈2 · BUFFER · GRID_DENSITY⌉): a left end that rounds onto a pool
  value counts it as the challenge's does.
  """
  w = b[-1] - b[0]
  lo, hi = b[0] + w - BUFFER, b[-1] + BUFFER
  rights = np.linspace(lo, hi, math.ceil((hi - lo) * GRID_DENSITY))
  n = math.ceil(2 * BUFFER * GRID_DENSITY)
  # Column i holds right end i's left ends. numpy computes each column as its
  # own call would, unless some column's step is 0 (only for |φ| beyond 2^53).
  lefts = np.linspace(rights - w - BUFFER, rights - w + BUFFER, n)
  # Both pools on one sorted axis: a rule keeps the points between two cuts,
  # and b_below[c] is how many of the first c points are b's.
  points = np.concatenate([b, a])
  order = np.argsort(points)
  points = points[order]
  b_below = np.concatenate([[0], np.cumsum(order < len(b))])
  a_below = np.arange(len(points) + 1) - b_below
  # pos[k, i]: how many of right end i's left ends are ≤ points[k]. Left end
  # j cuts after the points whose pos ≤ j, so cut c is reached iff pos[c − 1]
  # < pos[c] (padded with 0 and n): 2N + 1 cuts to look at per right end
  # instead of n rules, which is what makes ε cheap. The guess from the
  # nominal step is exact but for rounding; the loop settles it against the
  # grid itself.
  x = points[:, None]
  cols = np.arange(len(rights))
  flat = lefts.ravel()
  guess = np.floor((x - lefts[0]) * ((n - 1) / (2 * BUFFER)))
  pos = np.clip(guess + 1, 0, n).astype(int)
  while True:
    up = (pos < n) & (flat.take(np.minimum(pos, n - 1) * len(cols) + cols)
                      <= x)
    down = (pos > 0) & (flat.take(np.maximum(pos - 1, 0) * len(cols) + cols)
                        > x)
    if not (up.any() or down.any()):
      break
    pos += up.astype(int) - down.astype(int)
  edge = np.zeros((1, len(cols)), int)
  pos = np.concatenate([edge, pos, edge + n])
  reached = pos[:-1] < pos[1:]
  right_cut = np.searchsorted(points, rights, side='right')
  # A left end beyond the right end keeps nothing: the clip at 0.
  tp = np.maximum(b_below[right_cut] - b_below[:, None], 0)
  fp = np.maximum(a_below[right_cut] - a_below[:, None], 0)
  return tp[reached], fp[reached]


def _example_epsilon(u: np.ndarray, r: np.ndarray, table: np.ndarray) -> float:
  """ε of one example from its sorted pools, before the clip."""
  p, q = (r, u) if np.median(r) > np.median(u) else (u, r)
  span_p, span_q = p[-1] - p[0], q[-1] - q[0]
  wide = max(span_p, span_q)
  # Two constant pools (0/0) are no peakier than each other: the rules decide
  # (equal constants: every rule dropped, 0; different ones: usually a perfect
  # threshold, the cap).
  if wide > 0 and min(span_p, span_q) / wide < PEAKY_RATIO:
    return EPSILON_CAP
  tp, fp = _threshold_counts(p, q)
  best = table[tp, fp].max(initial=0.0)
  # A is the wider pool; on equal spans, the positive one.
  a, b = (p, q) if span_p >= span_q else (q, p)
  tp, fp = _interval_counts(a, b)
  return max(best, table[tp, fp].max(initial=0.0))


def epsilons(unlearned, retrained, *, delta: float = DELTA) -> np.ndarray:
  """ε_i of every example, clipped to [0, EPSILON_CAP].

  Equal to the challenge's `_get_epsilons` (metric.py of
  google-deepmind/unlearning_evaluation) computed in float64: its rates are
  float32 means, and its single thresholds float32 (torch.linspace's default
  dtype), so a threshold that lands on a pool value to within float32
  rounding may count it differently. Where every rule is dropped (two equal
  constant pools), the challenge's code raises; here ε_i = 0, as no rule found
  any evidence of a difference.

  Args:
    unlearned: [N, examples] φ of the unlearned models.
    retrained: [N, examples] φ of the retrained models (the same N).
    delta: the δ of the (ε, δ) bound.

  Returns:
    float64 [examples].

  Raises:
    ValueError: on pools of different shapes, fewer than 2 models, or
      non-finite values.
  """
  u = np.asarray(unlearned, dtype=np.float64)
  r = np.asarray(retrained, dtype=np.float64)
  if u.ndim != 2 or u.shape != r.shape or u.shape[0] < 2:
    raise ValueError(f'epsilons needs two [models >= 2, examples] pools of the '
                     f'same shape, got {u.shape} and {r.shape}.')
  if not (np.all(np.isfinite(u)) and np.all(np.isfinite(r))):
    raise ValueError('epsilons needs finite φ.')
  table = rule_epsilons(u.shape[0], delta)
  u, r = np.sort(u, axis=0), np.sort(r, axis=0)
  eps = np.array([_example_epsilon(u[:, i], r[:, i], table)
                  for i in range(u.shape[1])])
  return np.clip(eps, 0.0, EPSILON_CAP)


def bucket_worths(n_models: int) -> np.ndarray:
  """Worth 2^−k of bucket k = [k/2, (k+1)/2), for every bucket whose upper
  end is at most E = ⌈ln(N − 1)⌉: 2E buckets."""
  if n_models < 2:
    raise ValueError(f'The forget score needs at least 2 models, got '
                     f'{n_models}.')
  top = math.ceil(math.log(n_models - 1))
  return 2.0 ** -np.arange(int(top / BUCKET_WIDTH))


def earnings(eps, n_models: int) -> np.ndarray:
  """Each example's worth 2^−k of the bucket that holds ε_i (0 beyond the
  last bucket): F is their mean."""
  eps = np.asarray(eps, dtype=np.float64)
  if eps.ndim != 1 or eps.size == 0 or np.any(np.isnan(eps)) or np.any(
      eps < 0):
    raise ValueError('forget_score needs a non-empty 1-D array of ε >= 0.')
  worths = np.append(bucket_worths(n_models), 0.0)  # the last: beyond them
  bucket = np.minimum(np.floor(eps / BUCKET_WIDTH), len(worths) - 1)
  return worths[bucket.astype(int)]


def forget_score(eps, n_models: int) -> float:
  """F: the mean over examples of their `earnings`. 1 is perfect; report N
  beside it, as the buckets depend on N."""
  return float(earnings(eps, n_models).mean())


def final_score(f: float, ra_u: float, ra_r: float, ta_u: float,
                ta_r: float) -> float:
  """F · (RA_U / RA_R) · (TA_U / TA_R): F discounted by lost utility."""
  return f * (ra_u / ra_r) * (ta_u / ta_r)


@base.register('epsilon')
def evaluate(row: base.Population, refs: base.References) -> base.Result:
  """F of the row's forget φ against retraining (columns F, F_N: N, and
  F_ci95: the half width of its bootstrap interval over identities), the
  final score where both populations have retain and test accuracies, and
  table `examples`: each forget example's ε."""
  pools = base.forget_pools(row, refs)
  if pools is None:
    return base.result()
  u, r = pools
  eps = epsilons(u, r)
  worth = earnings(eps, u.shape[0])
  f = float(worth.mean())
  scalars = {'F': f, 'F' + intervals.SUFFIX: intervals.bootstrap_half_width(
      worth, refs.forget_identities), 'F_N': u.shape[0]}
  columns = [base.record_column(p, key) for p in (row, refs.retrain)
             for key in ('retain_accuracy', 'test_accuracy')]
  if all(c is not None for c in columns):
    ra_u, ta_u, ra_r, ta_r = (c.mean() for c in columns)
    scalars['final_score'] = final_score(f, ra_u, ra_r, ta_u, ta_r)
  examples = [{'example': i, 'identity': identity.item(), 'epsilon': float(e)}
              for i, (identity, e) in enumerate(zip(refs.forget_identities,
                                                    eps))]
  return base.result(scalars, tables={'examples': examples})
