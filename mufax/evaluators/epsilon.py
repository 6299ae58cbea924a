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
  rule with exactly one of FPR, FNR zero is discarded (0 here, the floor of
  ε); otherwise max(0, log(1 − δ − FPR) − log FNR, log(1 − δ − FNR) −
  log FPR).
  """
  tp = np.arange(n_models + 1)[:, None]
  fpr = np.arange(n_models + 1)[None, :] / n_models
  fnr = (n_models - tp) / n_models
  with np.errstate(divide='ignore', invalid='ignore'):
    ratio_1 = np.log(1 - delta - fpr) - np.log(fnr)
    ratio_2 = np.log(1 - delta - fnr) - np.log(fpr)
  eps = np.maximum(np.fmax(ratio_1, ratio_2), 0.0)
  # FPR = FNR = 1 (both logs NaN): the inverted rule is perfect; the
  # challenge's code counts it as +∞ too.
  eps = np.where(np.isnan(ratio_1) & np.isnan(ratio_2), np.inf, eps)
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
  positive one; each achievable pair at least once.

  The right ends run from min(b) + w − BUFFER to max(b) + BUFFER, where
  w = max(b) − min(b): a range of exactly 2·BUFFER, like each right end's
  left ends, so both grids have n = ⌈2·BUFFER·GRID_DENSITY⌉ points and one
  step. (Floating-point arithmetic could round that range above 2·BUFFER and
  add a point that the formula does not have.) The left ends of right end i
  are then points i .. i + n − 1 of one lattice.
  """
  n = math.ceil(2 * BUFFER * GRID_DENSITY)
  step = 2 * BUFFER / (n - 1)
  w = b[-1] - b[0]
  first_right = b[0] + w - BUFFER
  lattice = np.arange(2 * n - 1) * step
  rights = first_right + lattice[:n]
  lefts = (first_right - w - BUFFER) + lattice
  # Both pools on one sorted axis: a rule keeps the points between two cuts,
  # and b_below[c] is how many of the first c points are b's.
  points = np.concatenate([b, a])
  order = np.argsort(points)
  points = points[order]
  b_below = np.concatenate([[0], np.cumsum(order < len(b))])
  a_below = np.arange(len(points) + 1) - b_below
  # Rule (i, j) keeps the points after cut left_cut[i + j] up to cut
  # right_cut[i]. Both cut arrays are sorted, so each distinct cut fills a run
  # of indices, and a right run [i0, i1] meets a left run [k0, k1] in some
  # rule iff k0 − i1 ≤ n − 1 and k1 ≥ i0. Comparing runs (at most 2N + 1 of
  # each) instead of the n² rules is what makes ε cheap.
  right_cut, right_first, right_len = np.unique(
      np.searchsorted(points, rights, side='right'), return_index=True,
      return_counts=True)
  left_cut, left_first, left_len = np.unique(
      np.searchsorted(points, lefts, side='left'), return_index=True,
      return_counts=True)
  meet = ((left_first[None, :] <= (right_first + right_len + n - 2)[:, None])
          & ((left_first + left_len - 1)[None, :] >= right_first[:, None]))
  # A left end beyond the right end keeps nothing: the clip at 0.
  tp = np.maximum(b_below[right_cut][:, None] - b_below[left_cut][None, :], 0)
  fp = np.maximum(a_below[right_cut][:, None] - a_below[left_cut][None, :], 0)
  return tp[meet], fp[meet]


def _example_epsilon(u: np.ndarray, r: np.ndarray, table: np.ndarray) -> float:
  """ε of one example from its sorted pools, before the clip."""
  p, q = (r, u) if np.median(r) > np.median(u) else (u, r)
  span_p, span_q = p[-1] - p[0], q[-1] - q[0]
  wide = max(span_p, span_q)
  # Two constant pools (0/0) are no peakier than each other: the rules decide
  # (equal constants: 0; different ones: a perfect threshold, the cap).
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


def forget_score(eps, n_models: int) -> float:
  """F: the mean over examples of the worth of the bucket that holds ε_i (0
  beyond the last bucket). 1 is perfect; report N beside it, as the buckets
  depend on N."""
  eps = np.asarray(eps, dtype=np.float64)
  if eps.ndim != 1 or eps.size == 0 or np.any(np.isnan(eps)) or np.any(
      eps < 0):
    raise ValueError('forget_score needs a non-empty 1-D array of ε >= 0.')
  worths = np.append(bucket_worths(n_models), 0.0)  # the last: beyond them
  bucket = np.minimum(np.floor(eps / BUCKET_WIDTH), len(worths) - 1)
  return float(worths[bucket.astype(int)].mean())


def final_score(f: float, ra_u: float, ra_r: float, ta_u: float,
                ta_r: float) -> float:
  """F · (RA_U / RA_R) · (TA_U / TA_R): F discounted by lost utility."""
  return f * (ra_u / ra_r) * (ta_u / ta_r)


@base.register('epsilon')
def evaluate(row: base.Population, refs: base.References) -> base.Result:
  """F of the row's forget φ against retraining (columns F, F_N: N), the
  final score where both populations have retain and test accuracies, and
  table `examples`: each forget example's ε."""
  pools = base.forget_pools(row, refs)
  if pools is None:
    return base.result()
  u, r = pools
  eps = epsilons(u, r)
  f = forget_score(eps, u.shape[0])
  scalars = {'F': f, 'F_N': u.shape[0]}
  columns = [base.record_column(p, key) for p in (row, refs.retrain)
             for key in ('retain_accuracy', 'test_accuracy')]
  if all(c is not None for c in columns):
    ra_u, ta_u, ra_r, ta_r = (c.mean() for c in columns)
    scalars['final_score'] = final_score(f, ra_u, ra_r, ta_u, ta_r)
  examples = [{'example': i, 'identity': identity.item(), 'epsilon': float(e)}
              for i, (identity, e) in enumerate(zip(refs.forget_identities,
                                                    eps))]
  return base.result(scalars, tables={'examples': examples})
