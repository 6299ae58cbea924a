"""mufax's per-example ε and forget score F against the NeurIPS 2023
unlearning challenge's own code (docs/evaluation.md §3).

The challenge's `_get_epsilons` and `compute_forget_score_from_confs`
(metric.py of google-deepmind/unlearning_evaluation) are restated below from
their text, rule by rule, on torch's CPU, with these changes:
  - rates are float64 means and the single thresholds are float64 (metric.py
    computes both in float32, torch's default dtype): mufax computes in
    float64;
  - where metric.py's `assert thr_eps` fires because every rule was dropped,
    the restatement gives ε = 0, mufax's documented choice (the assert, read
    literally, would also fire on any array of several ε: its intent is "some
    rule was kept");
  - the debugging outputs (kept thresholds, rates, best rule) are left out.
"""

import math
import warnings

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import torch

from mufax.evaluators import epsilon

DELTA = 1e-05
EPSILON_CAP = 50
NUM_THRESHOLDS_PER_UNIT = 100
RATE = torch.float64  # metric.py: torch.float32


def _get_double_threshold_rates(pos_confs_, neg_confs_):
  """metric.py's interval family: tpr, fnr, fpr, tnr per rule."""
  pos_diff = pos_confs_.max() - pos_confs_.min()
  neg_diff = neg_confs_.max() - neg_confs_.min()
  smallest = neg_diff if pos_diff > neg_diff else pos_diff
  if pos_diff >= neg_diff:
    pos_confs_, neg_confs_ = neg_confs_, pos_confs_
  buffer = 2.0
  width = smallest
  min_ = (pos_confs_.min() + width - buffer).numpy()
  max_ = (pos_confs_.max() + buffer).numpy()
  num_right_thresholds = int(np.ceil((max_ - min_) * NUM_THRESHOLDS_PER_UNIT))
  right_thresholds_ = np.linspace(min_, max_, num=num_right_thresholds)
  width = width.numpy()
  num_left_thresholds = int(np.ceil(2 * buffer * NUM_THRESHOLDS_PER_UNIT))
  thr_left_ = np.concatenate(
      [np.linspace(tr - width - buffer, tr - width + buffer,
                   num=num_left_thresholds) for tr in right_thresholds_],
      axis=0)
  thr_right_ = np.tile(np.reshape(right_thresholds_, (-1, 1)),
                       (1, num_left_thresholds)).reshape((-1))
  total_num_thresholds = len(thr_left_)
  num_models = pos_confs_.shape[0]
  thr_right_ = torch.from_numpy(
      np.tile(np.expand_dims(thr_right_, 0), (num_models, 1)))
  thr_left_ = torch.from_numpy(
      np.tile(np.expand_dims(thr_left_, 0), (num_models, 1)))
  pos_confs_ = torch.tile(pos_confs_[:, None], (1, total_num_thresholds))
  neg_confs_ = torch.tile(neg_confs_[:, None], (1, total_num_thresholds))

  def _is_pp(c):
    return torch.logical_and(torch.le(thr_left_, c),
                             torch.le(c, thr_right_)).type(RATE)

  def _is_pn(c):
    return torch.logical_not(_is_pp(c)).type(RATE)

  tpr = torch.mean(_is_pp(pos_confs_), 0)
  fnr = torch.mean(_is_pn(pos_confs_), 0)
  fpr = torch.mean(_is_pp(neg_confs_), 0)
  tnr = torch.mean(_is_pn(neg_confs_), 0)
  return tpr, fnr, fpr, tnr


def _get_single_threshold_rates(pos_confs_, neg_confs_):
  """metric.py's single-threshold family: tpr, fnr, fpr, tnr per rule."""
  all_confs = torch.cat([pos_confs_, neg_confs_])
  min_val = all_confs.min()
  max_val = all_confs.max()
  num_thresholds = int(torch.ceil((max_val - min_val) *
                                  NUM_THRESHOLDS_PER_UNIT))
  thresholds_ = torch.linspace(min_val, max_val, num_thresholds,
                               dtype=torch.float64)
  num_models = pos_confs_.shape[0]
  thresholds_ = torch.tile(thresholds_[None, :], (num_models, 1))
  pos_confs_ = torch.tile(pos_confs_[:, None], (1, num_thresholds))
  neg_confs_ = torch.tile(neg_confs_[:, None], (1, num_thresholds))
  tpr = torch.mean((pos_confs_ >= thresholds_).type(RATE), 0)
  fpr = torch.mean((neg_confs_ >= thresholds_).type(RATE), 0)
  tnr = torch.mean((neg_confs_ < thresholds_).type(RATE), 0)
  fnr = torch.mean((pos_confs_ < thresholds_).type(RATE), 0)
  return tpr, fnr, fpr, tnr


def _example_epsilon(pos_confs_, neg_confs_, delta):
  """metric.py's loop body for one example; None where its assert fires."""
  pos_diff = np.max(pos_confs_) - np.min(pos_confs_)
  neg_diff = np.max(neg_confs_) - np.min(neg_confs_)
  largest = pos_diff if pos_diff > neg_diff else neg_diff
  smallest = neg_diff if pos_diff > neg_diff else pos_diff
  with np.errstate(invalid='ignore'):  # 0/0 for two constant pools
    if smallest / largest < 0.01:
      return EPSILON_CAP
  pos_confs_ = torch.from_numpy(pos_confs_)
  neg_confs_ = torch.from_numpy(neg_confs_)
  tpr_d, fnr_d, fpr_d, tnr_d = _get_double_threshold_rates(pos_confs_,
                                                           neg_confs_)
  tpr_s, fnr_s, fpr_s, tnr_s = _get_single_threshold_rates(pos_confs_,
                                                           neg_confs_)
  tpr = torch.cat([tpr_d, tpr_s], 0)
  fnr = torch.cat([fnr_d, fnr_s], 0)
  fpr = torch.cat([fpr_d, fpr_s], 0)
  tnr = torch.cat([tnr_d, tnr_s], 0)
  total_num_thresholds = tpr.shape[0]
  thr_eps = torch.zeros(total_num_thresholds, dtype=RATE)
  fpr_fnr_both_zero = torch.eq(fpr + fnr,
                               torch.zeros(total_num_thresholds, dtype=RATE))
  tpr_tnr_both_ones = torch.eq(
      tpr + tnr, 2 * torch.ones(total_num_thresholds, dtype=RATE))
  thr_eps = torch.where(fpr_fnr_both_zero * tpr_tnr_both_ones,
                        torch.full(thr_eps.shape, np.inf, dtype=RATE),
                        thr_eps)
  thr_eps_is_zero = torch.eq(thr_eps, torch.zeros_like(thr_eps))
  fpr_or_fnr_is_zero = torch.eq(fpr * fnr, torch.zeros_like(thr_eps))
  thr_eps = torch.where(thr_eps_is_zero * fpr_or_fnr_is_zero,
                        torch.full(thr_eps.shape, np.nan, dtype=RATE),
                        thr_eps)
  # log 0 and log of a negative number, and nanmax of two NaNs, all warn.
  with np.errstate(divide='ignore', invalid='ignore'), \
      warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)
    computed = np.clip(
        np.nanmax([np.log(1 - delta - fpr.numpy()) - np.log(fnr.numpy()),
                   np.log(1 - delta - fnr.numpy()) - np.log(fpr.numpy())],
                  axis=0), 0, None)
  thr_eps = torch.where(torch.eq(thr_eps, torch.zeros_like(thr_eps)),
                        torch.from_numpy(computed), thr_eps)
  # metric.py's list comprehension over every rule, which picks the same.
  keep_inds = np.flatnonzero(~np.isnan(thr_eps.numpy()))
  thr_eps = thr_eps.numpy()[keep_inds]
  if not thr_eps.size:
    return None
  return np.nanmax(thr_eps)


def _get_epsilons(pos_confs, neg_confs, delta):
  epsilons = []
  for i in range(pos_confs.shape[1]):
    eps = _example_epsilon(pos_confs[:, i].reshape(-1),
                           neg_confs[:, i].reshape(-1), delta)
    epsilons.append(0.0 if eps is None else eps)
  return np.clip(epsilons, 0, EPSILON_CAP)


def compute_forget_score_from_confs(unlearned_confs, retrained_confs):
  """metric.py's F; also returns ε, so that the test runs the rules once."""
  _, forget_set_size = retrained_confs.shape
  retrain_means = np.median(retrained_confs, axis=0)
  unlearned_means = np.median(unlearned_confs, axis=0)
  retrain_is_positive = retrain_means > unlearned_means
  pos_confs = np.where(retrain_is_positive, retrained_confs, unlearned_confs)
  neg_confs = np.where(retrain_is_positive, unlearned_confs, retrained_confs)
  eps = _get_epsilons(pos_confs, neg_confs, delta=DELTA)
  num_models = unlearned_confs.shape[0]
  max_epsilon = np.ceil(np.log(num_models - 1))
  start_idx = 0
  bucket_size = 0.5
  end_idx = start_idx + bucket_size
  points = 1
  bucket_points = {}
  while end_idx <= max_epsilon:
    bucket_points[start_idx] = points
    points /= 2
    start_idx += bucket_size
    end_idx = start_idx + bucket_size
  forget_score = 0
  for e in eps:
    for start_idx, points in bucket_points.items():
      if e < start_idx + bucket_size:
        forget_score += points
        break
  forget_score /= forget_set_size
  return forget_score, eps


def narrow(rng, n, m):
  """Spans 0.005–0.05, as narrow as the 0.01 grid, overlapping or not."""
  span = rng.uniform(0.005, 0.05, m)
  centre = rng.uniform(-10, 10, m)
  u = centre + span * rng.random((n, m))
  r = (centre + span * rng.uniform(-1, 1, m)
       + span * rng.uniform(0.5, 2, m) * rng.random((n, m)))
  return u, r


def tied(rng, n, m):
  """φ on a coarse lattice: models share values, within and across pools.

  The lowest φ leaves the lattice: the single thresholds run from it to the
  highest, and on a lattice they would land on shared values, where float
  rounding alone (float32 in metric.py) decides the side.
  """
  lattice = rng.choice([0.01, 0.02, 0.05, 0.1, 0.25], m)
  sd = lattice * rng.uniform(1, 4, m)
  centre = np.round(rng.uniform(-5, 5, m) / lattice) * lattice
  u = np.round(rng.normal(size=(n, m)) * sd / lattice) * lattice + centre
  r = np.round((rng.normal(size=(n, m)) + rng.uniform(-1, 1, m)) * sd /
               lattice) * lattice + centre
  both = np.concatenate([u, r])
  both[np.argmin(both, axis=0), np.arange(m)] -= (
      lattice * rng.uniform(0.1, 0.4, m))
  return both[:n], both[n:]


def separated(rng, n, m):
  """Pools a few spans apart, some of them narrower than the grid."""
  sd = np.exp(rng.uniform(np.log(0.002), np.log(0.5), m))
  shift = rng.choice([-1, 1], m) * rng.uniform(1, 4, m) * 4 * sd
  return (rng.normal(size=(n, m)) * sd,
          rng.normal(size=(n, m)) * sd + shift)


def heavy(rng, n, m):
  """Student-t φ (2 degrees of freedom): wide spans, isolated outliers."""
  scale = rng.uniform(0.01, 0.5, m)
  return (rng.standard_t(2, size=(n, m)) * scale,
          (rng.standard_t(2, size=(n, m)) + rng.uniform(-1, 1, m)) * scale)


def unequal(rng, n, m):
  """Spreads 1 to 150 times each other: the peaky guard on both sides."""
  sd = rng.uniform(0.003, 0.5, m)
  ratio = np.exp(rng.uniform(0, np.log(150), m))
  u = rng.normal(size=(n, m)) * sd
  r = (rng.normal(size=(n, m)) * ratio + rng.uniform(-1, 1, m)) * sd
  flip = rng.random(m) < 0.5
  return np.where(flip, r, u), np.where(flip, u, r)


# Examples per N: the restatement tries every rule (~160k per example).
EXAMPLES = {3: 40, 8: 30, 16: 16, 64: 3}


class ChallengeTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # The restatement's many small torch ops run several times faster on one
    # thread than contending for a few busy cores.
    cls._threads = torch.get_num_threads()
    torch.set_num_threads(1)

  @classmethod
  def tearDownClass(cls):
    torch.set_num_threads(cls._threads)
    super().tearDownClass()

  @parameterized.named_parameters(
      ('narrow', narrow), ('tied', tied), ('separated', separated),
      ('heavy', heavy), ('unequal', unequal))
  def test_matches_the_challenge(self, family):
    for n, m in EXAMPLES.items():
      u, r = family(np.random.default_rng(n), n, m)
      expected_f, expected = compute_forget_score_from_confs(u, r)
      eps = epsilon.epsilons(u, r)
      np.testing.assert_allclose(eps, expected, rtol=0, atol=1e-9,
                                 err_msg=f'N = {n}')
      self.assertAlmostEqual(epsilon.forget_score(eps, n), expected_f,
                             delta=1e-9, msg=f'N = {n}')

  def test_both_rates_one_is_dropped(self):
    # B = U (span 0.006) is the peakier pool, A = R (0.007) lies just above
    # it. Left ends fall (up to rounding) on min(B) + k·s and right ends on
    # max(B) + (k + 1/2)·s, s = 4/399: no right end between max(B) and
    # min(A), so no interval holds B alone, and the union's span (0.0175)
    # gives single thresholds only at its two ends. But l = min(B) + s lies
    # between them, so [l, r] for r ≥ max(A) holds A and no B: FPR = FNR = 1.
    # Both logs are NaN and the challenge drops the rule (were it +∞, ε would
    # be 50); the rest score 0.
    u = np.array([[0.0], [0.002], [0.004], [0.006]])
    r = np.array([[0.0105], [0.013], [0.015], [0.0175]])
    for offset in (0.0, 1.234, -7.5):
      _, expected = compute_forget_score_from_confs(u + offset, r + offset)
      self.assertEqual(expected[0], 0.0)
      self.assertEqual(epsilon.epsilons(u + offset, r + offset)[0], 0.0)
    self.assertEqual(epsilon.rule_epsilons(4)[0, 4], 0.0)

  def test_right_ends_as_the_challenge_counts_them(self):
    # ⌈(max_ − min_) · 100⌉ is 401 here (the range rounds above 4). With 401
    # right ends an interval reaches ε = log(2 − 3δ); with 400, none does.
    u = np.array([[6.812], [6.826], [6.82]])
    r = np.array([[6.813], [6.827], [6.813]])
    # U's span rounds below R's (0.013999… against 0.014000…): U is the
    # peakier pool B.
    b = u[:, 0]
    w = b.max() - b.min()
    min_, max_ = b.min() + w - 2.0, b.max() + 2.0
    self.assertEqual(int(np.ceil((max_ - min_) * 100)), 401)
    _, expected = compute_forget_score_from_confs(u, r)
    self.assertAlmostEqual(expected[0], math.log(2 - 3 * DELTA), places=12)
    np.testing.assert_allclose(epsilon.epsilons(u, r), expected, rtol=0,
                               atol=1e-9)

  def test_equal_constant_pools_score_zero(self):
    # Spans 0/0: no peaky guard; no single threshold (0 of them); every
    # interval holds both pools or neither (FNR = 0 or FPR = 0): all dropped,
    # where the challenge's assert fires.
    pool = np.full(8, 0.3)
    self.assertIsNone(_example_epsilon(pool, pool.copy(), DELTA))
    np.testing.assert_array_equal(
        epsilon.epsilons(np.full((8, 3), 0.3), np.full((8, 3), 0.3)), 0.0)

  def test_left_ends_per_right_end(self):
    # mufax draws every right end's left ends in one np.linspace call;
    # metric.py calls it once per right end.
    rng = np.random.default_rng(0)
    for b in rng.normal(0, 5, (20, 3)) * [[1, 0.01, 0.001]]:
      w = np.ptp(b)
      rights = np.linspace(b.min() + w - 2.0, b.max() + 2.0, 400)
      one_call = np.linspace(rights - w - 2.0, rights - w + 2.0, 400)
      per_right_end = np.stack(
          [np.linspace(tr - w - 2.0, tr - w + 2.0, num=400) for tr in rights],
          axis=1)
      np.testing.assert_array_equal(one_call, per_right_end)


if __name__ == '__main__':
  absltest.main()
