"""The extended evaluation (docs/evaluation.md §1–§7) on constructed
populations."""

import math

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from scipy import stats

from mufax import evaluators
from mufax.evaluators import base
from mufax.evaluators import confidence
from mufax.evaluators import epsilon
from mufax.evaluators import identity
from mufax.evaluators import intervals
from mufax.evaluators import lira
from mufax.evaluators import low_fpr

DELTA = epsilon.DELTA


def literal_epsilon(u, r):
  """§3 for one example, rule by rule as written (np.linspace grids)."""
  p, q = (r, u) if np.median(r) > np.median(u) else (u, r)
  span_p, span_q = np.ptp(p), np.ptp(q)
  narrow, wide = sorted((span_p, span_q))
  if wide > 0 and narrow / wide < 0.01:
    return 50.0
  lo, hi = min(p.min(), q.min()), max(p.max(), q.max())
  t = np.linspace(lo, hi, math.ceil((hi - lo) * 100))[:, None]
  fnr, fpr = [np.mean(p < t, -1)], [np.mean(q >= t, -1)]
  a, b = (p, q) if span_p >= span_q else (q, p)
  w = np.ptp(b)
  first, last = b.min() + w - 2, b.max() + 2
  rights = np.linspace(first, last, math.ceil((last - first) * 100))
  lefts = np.linspace(rights - w - 2, rights - w + 2, 400, axis=-1)
  inside = lambda x: (lefts[..., None] <= x) & (x <= rights[:, None, None])
  fnr.append(np.mean(~inside(b), -1).ravel())
  fpr.append(np.mean(inside(a), -1).ravel())
  fnr, fpr = np.concatenate(fnr), np.concatenate(fpr)
  if np.any((fpr == 0) & (fnr == 0)):
    return 50.0
  keep = (fpr > 0) & (fnr > 0)
  fpr, fnr = fpr[keep], fnr[keep]
  # A rule with FPR = FNR = 1 has two NaN logs: dropped, like the others.
  with np.errstate(invalid='ignore'):
    ratios = np.stack([np.log(1 - DELTA - fpr) - np.log(fnr),
                       np.log(1 - DELTA - fnr) - np.log(fpr)])
  return float(np.clip(np.nanmax(ratios, initial=0.0), 0.0, 50.0))


def gaussian_pools(n_models, n_examples, shift, seed):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n_models, n_examples)) + shift,
          rng.normal(size=(n_models, n_examples)))


class IntervalsTest(absltest.TestCase):

  def test_two_and_three_values(self):
    # sd([0, 1]) = 1/√2, so the half width is t_{0.975,1} · 1/2.
    mean, half = intervals.t_interval([0.0, 1.0])
    self.assertEqual(mean, 0.5)
    self.assertAlmostEqual(half, 12.706204736 / 2, places=8)
    mean, half = intervals.t_interval([1.0, 2.0, 3.0])  # sd = 1
    self.assertEqual(mean, 2.0)
    self.assertAlmostEqual(half, 4.302652730 / math.sqrt(3), places=8)

  def test_one_value_has_no_width(self):
    mean, half = intervals.t_interval([0.7])
    self.assertEqual(mean, 0.7)
    self.assertTrue(math.isnan(half))

  def test_rejects_empty(self):
    with self.assertRaisesRegex(ValueError, 'non-empty'):
      intervals.t_interval([])

  def test_summarise_every_column(self):
    self.assertEqual(
        intervals.summarise({'a': [1.0, 2.0, 3.0], 'b': [4.0]}).keys(),
        {'a', 'a_ci95', 'b'})

  def test_bootstrap_resamples_people_not_images(self):
    rng = np.random.default_rng(0)
    values, people = rng.normal(size=200), np.arange(200)
    half = intervals.bootstrap_half_width(values, people)
    # Near the normal interval of a mean of 200 independent values.
    self.assertAlmostEqual(half, 1.96 * values.std() / np.sqrt(200),
                           delta=0.15 * half)
    # Ten identical images per person are one person's worth of evidence:
    # the interval does not shrink by √10.
    self.assertAlmostEqual(
        intervals.bootstrap_half_width(np.repeat(values, 10),
                                       np.repeat(people, 10)), half)
    self.assertEqual(intervals.bootstrap_half_width(values, people), half)
    self.assertEqual(intervals.bootstrap_half_width(np.ones(30),
                                                    np.arange(30) % 7), 0.0)


class ConfidenceTest(absltest.TestCase):

  def test_softmax_matches_direct_formula(self):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4, 20, 7)).astype(np.float32)
    labels = rng.integers(0, 7, 20)
    z = logits.astype(np.float64)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    true = p[:, np.arange(20), labels]
    expected = np.log(true) - np.log(p.sum(-1) - true)
    got = confidence.phi(logits, labels, 'softmax')
    self.assertEqual(got.dtype, np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(confidence.phi(logits[1], labels, 'softmax'),
                               expected[1], rtol=1e-9, atol=1e-12)

  def test_sigmoid_matches_direct_formula(self):
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (3, 10, 4))
    labels = rng.integers(0, 2, (10, 4))
    sigma = 1 / (1 + np.exp(-logits))
    p_true = np.where(labels == 1, sigma, 1 - sigma)
    expected = (np.log(p_true) - np.log(1 - p_true)).mean(-1)
    got = confidence.phi(logits, labels, 'sigmoid')
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    # The log odds of a two-way distribution are ±z.
    np.testing.assert_allclose(got, np.where(labels == 1, logits,
                                             -logits).mean(-1),
                               rtol=1e-9, atol=1e-12)

  def test_saturated_logits_stay_finite(self):
    logits = np.array([[1000.0, 0.0, 0.0]] * 2)
    got = confidence.phi(logits, np.array([0, 1]), 'softmax')
    np.testing.assert_allclose(got, [-np.log(1e-45), np.log(1e-45)])

  def test_bad_labels(self):
    with self.assertRaisesRegex(ValueError, 'integers in'):
      confidence.phi(np.zeros((2, 3)), np.array([0, 3]), 'softmax')
    with self.assertRaisesRegex(ValueError, '0 or 1'):
      confidence.phi(np.zeros((2, 3)), np.full((2, 3), 2), 'sigmoid')
    with self.assertRaisesRegex(ValueError, 'Unknown loss'):
      confidence.phi(np.zeros((2, 3)), np.array([0, 1]), 'hinge')


class EpsilonTest(parameterized.TestCase):

  def test_hand_computed_example(self):
    # U = 0, 1, 2, 3 and R = 0.5, 1.5, 2.5, 3.5: R has the higher median, so
    # R is positive; equal spans (3), no peaky guard. Best threshold: t in
    # (2, 2.5] calls R's 2.5, 3.5 and U's 3 positive: FNR = 1/2, FPR = 1/4,
    # ε = log(1 − δ − 1/2) − log(1/4) = log(2 − 4δ) (the other ratio,
    # log(3/2 − 2δ), is smaller). The interleaved pools let no interval of
    # width >= 1 do better: two of U's points always enclose one of R's.
    u = np.array([[0.0], [1.0], [2.0], [3.0]])
    eps = epsilon.epsilons(u, u + 0.5)
    self.assertAlmostEqual(eps[0], math.log(2 - 4 * DELTA), places=12)
    # N = 4: E = ⌈ln 3⌉ = 2; 0.69 is in bucket [0.5, 1), worth 1/2.
    self.assertEqual(epsilon.forget_score(eps, 4), 0.5)

  @parameterized.parameters(4, 8, 16)
  def test_matches_rule_by_rule(self, n_models):
    rng = np.random.default_rng(n_models)
    m = 24
    u = rng.normal(size=(n_models, m)) * rng.uniform(0.2, 3, m)
    u += rng.uniform(-3, 3, m)
    r = rng.normal(size=(n_models, m)) * rng.uniform(0.2, 3, m)
    u[:, :4], r[:, :4] = np.round(u[:, :4]), np.round(r[:, :4])  # ties
    u[:, 4:6] = r[:, 4:6]  # identical pools
    expected = [literal_epsilon(u[:, i], r[:, i]) for i in range(m)]
    np.testing.assert_array_equal(epsilon.epsilons(u, r), expected)
    self.assertGreaterEqual(len(set(expected)), 4)  # not all 0 or 50

  def test_peaky_guard(self):
    rng = np.random.default_rng(3)
    wide = rng.normal(size=(16, 1))
    narrow = 1e-3 * np.ptp(wide) * rng.random((16, 1))
    self.assertEqual(epsilon.epsilons(narrow, wide)[0], 50.0)
    self.assertEqual(epsilon.epsilons(np.zeros((16, 1)), wide)[0], 50.0)

  def test_constant_pools(self):
    same = np.full((8, 1), 0.3)
    self.assertEqual(epsilon.epsilons(same, same)[0], 0.0)
    self.assertEqual(epsilon.epsilons(same, same + 1.0)[0], 50.0)

  def test_rule_epsilons(self):
    table = epsilon.rule_epsilons(4)
    self.assertEqual(table[4, 0], np.inf)  # perfect
    self.assertEqual(table[0, 4], 0.0)  # FPR = FNR = 1: dropped
    self.assertEqual(table[2, 0], 0.0)  # FPR = 0 alone: discarded
    self.assertEqual(table[4, 2], 0.0)  # FNR = 0 alone: discarded
    self.assertEqual(table[2, 2], 0.0)  # chance
    self.assertAlmostEqual(table[3, 1], math.log((0.75 - DELTA) / 0.25))

  @parameterized.parameters((4, 2), (8, 2), (16, 3), (64, 5), (512, 7))
  def test_buckets(self, n_models, e):
    worths = epsilon.bucket_worths(n_models)
    self.assertLen(worths, 2 * e)
    np.testing.assert_array_equal(worths, 0.5 ** np.arange(2 * e))

  def test_forget_score(self):
    # N = 16: six buckets up to ε = 3.
    eps = [0.0, 0.49, 0.5, 1.2, 2.99, 3.0, 50.0]
    expected = (1 + 1 + 0.5 + 0.25 + 1 / 32 + 0 + 0) / 7
    self.assertAlmostEqual(epsilon.forget_score(eps, 16), expected)
    self.assertEqual(epsilon.forget_score([0.1, 0.2], 2), 0.0)  # no buckets
    with self.assertRaisesRegex(ValueError, 'at least 2'):
      epsilon.forget_score([0.1], 1)

  def test_final_score(self):
    self.assertAlmostEqual(epsilon.final_score(0.5, 0.9, 1.0, 0.6, 0.8),
                           0.5 * 0.9 * 0.75)

  @parameterized.parameters((8, 0.0, 0.15, 0.21), (16, 0.0, 0.15, 0.21),
                            (64, 0.0, 0.15, 0.21), (8, 1.0, 0.12, 0.18),
                            (64, 1.0, 0.02, 0.07), (16, 10.0, 0.0, 0.0))
  def test_gaussian_levels(self, n_models, shift, lo, hi):
    # docs/evaluation.md §3: F ≈ 0.17–0.19 for one distribution (N = 8–64); 0.14
    # at N = 8 and 0.04 at N = 64 for a shift of one sd; 0 when far apart.
    u, r = gaussian_pools(n_models, 800, shift, seed=n_models)
    f = epsilon.forget_score(epsilon.epsilons(u, r), n_models)
    self.assertBetween(f, lo, hi)

  def test_bad_pools(self):
    with self.assertRaisesRegex(ValueError, 'same shape'):
      epsilon.epsilons(np.zeros((4, 3)), np.zeros((5, 3)))
    with self.assertRaisesRegex(ValueError, 'same shape'):
      epsilon.epsilons(np.zeros((1, 3)), np.zeros((1, 3)))
    with self.assertRaisesRegex(ValueError, 'finite'):
      epsilon.epsilons(np.full((4, 3), np.nan), np.zeros((4, 3)))


def direct_log_ratio(x, u_pool, r_pool):
  """Λ of φ `x` from Gaussians fitted to the two pools, by scipy."""
  fit = lambda pool: (pool.mean(), max(pool.var(), lira.VARIANCE_FLOOR))
  (mu_u, var_u), (mu_r, var_r) = fit(u_pool), fit(r_pool)
  return (stats.norm.logpdf(x, mu_u, math.sqrt(var_u))
          - stats.norm.logpdf(x, mu_r, math.sqrt(var_r)))


class LiraTest(absltest.TestCase):

  def test_same_distribution_is_chance(self):
    attack = lira.lira(*gaussian_pools(16, 400, 0.0, seed=0))
    self.assertAlmostEqual(attack.accuracy.mean(), 0.5, delta=0.03)
    self.assertAlmostEqual(attack.auc, 0.5, delta=0.03)

  def test_far_apart_is_told_apart(self):
    attack = lira.lira(*gaussian_pools(16, 100, 10.0, seed=1))
    self.assertEqual(attack.accuracy.min(), 1.0)
    self.assertEqual(attack.auc, 1.0)

  def test_log_ratios_leave_the_target_out(self):
    rng = np.random.default_rng(2)
    for u_models, r_models in ((5, 4), (5, 5)):
      u = rng.normal(size=(u_models, 3))
      r = rng.normal(1, 2, size=(r_models, 3))
      on_u, on_r = lira.log_ratios(u, r)
      paired = u_models == r_models
      for i in range(3):
        # Pools of one size are seed-paired: the target's twin leaves the
        # other pool's fit too.
        without = lambda pool, m: np.delete(pool[:, i], m)
        other = lambda pool, m: without(pool, m) if paired else pool[:, i]
        for m in range(u_models):
          self.assertAlmostEqual(on_u[m, i], direct_log_ratio(
              u[m, i], without(u, m), other(r, m)))
        for m in range(r_models):
          self.assertAlmostEqual(on_r[m, i], direct_log_ratio(
              r[m, i], other(u, m), without(r, m)))

  def test_variance_floor(self):
    on_u, _ = lira.log_ratios(np.zeros((3, 1)), np.ones((3, 1)))
    # Both fits at the floor: Λ = (0 − 1)² / (2 · 1e−6) for a U target.
    np.testing.assert_allclose(on_u, 0.5e6)

  def test_needs_two_models(self):
    with self.assertRaisesRegex(ValueError, 'models >= 2'):
      lira.lira(np.zeros((1, 4)), np.zeros((3, 4)))


class IdentityTest(absltest.TestCase):

  def test_means(self):
    phi = np.array([[1.0, 2.0, 3.0, 4.0, 5.0],
                    [0.0, 1.0, 0.0, 3.0, 5.0]])
    ids, images, means = identity.identity_means(
        phi, np.array(['b', 'a', 'b', 'c', 'a']))
    np.testing.assert_array_equal(ids, ['a', 'b', 'c'])
    np.testing.assert_array_equal(images, [2, 2, 1])
    np.testing.assert_allclose(means, [[3.5, 2.0, 4.0], [3.0, 0.0, 3.0]])

  def test_least_forgotten_identity_leads(self):
    refs = synthetic_references(n_models=8)
    row = refs.retrain
    u = row.phi['forget'].copy() + 0.01  # another population, nearly equal
    u[:, refs.forget_identities == 3] += 20.0  # identity 3 not forgotten
    result = identity.evaluate(
        base.Population('neggrad', {'forget': u}, {}, row.records), refs)
    table = result['tables']['identities']
    self.assertEqual([r['identity'] for r in table], [0, 1, 2, 3, 4, 5])
    self.assertEqual({r['images'] for r in table}, {5})
    worst = result['tables']['least_forgotten']
    self.assertLen(worst, identity.LEAST_FORGOTTEN)
    self.assertEqual(worst[0]['identity'], 3)
    self.assertEqual(worst[0]['epsilon'], 50.0)
    self.assertEqual(worst[0]['attack_accuracy'], 1.0)
    self.assertLess(max(r['epsilon'] for r in worst[1:]), 50.0)
    self.assertLess(result['scalars']['F_identity'], 1.0)


class LowFprTest(absltest.TestCase):

  def test_constructed(self):
    unseen = np.arange(1.0, 1001.0)  # 1000 unseen: 1 or 10 false positives
    forget = np.array([0.5, 0.6, 1.5, 2.0, 5.5, 10.5, 500, 600, 700, 2000])
    # FPR <= 0.1%: τ < 2 (τ = 2 would also take the unseen 2): 3 of 10. The
    # forget loss 2.0 ties an unseen one and needs a second false positive.
    self.assertEqual(low_fpr.tpr_at_fpr(forget, unseen, 0.001), 0.3)
    # FPR <= 1%: τ < 11: 6 of 10.
    self.assertEqual(low_fpr.tpr_at_fpr(forget, unseen, 0.01), 0.6)

  def test_per_model(self):
    unseen = np.tile(np.arange(1.0, 1001.0), (2, 1))
    forget = np.array([[0.5] * 5 + [900] * 5, [900] * 10])
    row = base.Population('x', {}, {'forget': forget, 'unseen': unseen},
                          [{}] * 2)
    result = low_fpr.evaluate(row, synthetic_references(2))
    self.assertEqual(result['per_seed']['tpr_at_0.1%_fpr'], [0.5, 0.0])
    self.assertEqual(result['scalars']['tpr_at_0.1%_fpr'], 0.25)

  def test_columns_are_named_by_the_rate_reached(self):
    for negatives, columns in (
        (1000, ['tpr_at_1%_fpr', 'tpr_at_0.1%_fpr']),
        (1062, ['tpr_at_0.942%_fpr', 'tpr_at_0.0942%_fpr']),
        (400, ['tpr_at_1%_fpr', 'tpr_at_0%_fpr']),
        (50, ['tpr_at_0%_fpr'])):
      rng = np.random.default_rng(negatives)
      unseen = rng.exponential(size=(2, negatives))
      # Half the forget losses below every unseen one.
      forget = np.concatenate([np.zeros((2, 5)), unseen[:, :5] + 1], axis=1)
      row = base.Population('x', {}, {'forget': forget, 'unseen': unseen},
                            [{}] * 2)
      result = low_fpr.evaluate(row, synthetic_references(2))
      self.assertEqual(list(result['per_seed']), columns, negatives)
      if columns[-1] == 'tpr_at_0%_fpr':
        # At zero false positives only the losses below every unseen one.
        self.assertEqual(result['per_seed']['tpr_at_0%_fpr'], [0.5, 0.5])


def synthetic_references(n_models, seed=0):
  """Small populations whose rows have every input an evaluator reads."""
  rng = np.random.default_rng(seed)

  def population(name, shift):
    phi = {split: rng.normal(size=(n_models, 30)) + shift
           for split in ('forget', 'retain', 'test', 'unseen')}
    losses = {split: rng.exponential(1.0 + shift, size=(n_models, 40))
              for split in ('forget', 'retain', 'test', 'unseen')}
    records = [{'seed': s, 'test_accuracy': 0.6 + 0.01 * s,
                'retain_accuracy': 0.9 - 0.01 * shift, 'mia': 0.5,
                'seconds': 10.0 + s + 5 * shift, 'flops': 1e9 * (1 + shift),
                'label': 'not a number'}
               for s in range(n_models)]
    return base.Population(name, phi, losses, records)

  return base.References(
      retrain=population('retrain', 0.0), oracle=population('oracle', 0.0),
      original=population('original', 1.0),
      forget_identities=np.repeat(np.arange(6), 5))


class RegistryTest(parameterized.TestCase):

  def test_every_evaluator_is_registered(self):
    self.assertEqual(set(evaluators.EVALUATORS),
                     {'cost', 'epsilon', 'identity', 'lira', 'low_fpr',
                      'seeds'})

  @parameterized.parameters(*sorted(evaluators.EVALUATORS))
  def test_uniform_result(self, name):
    refs = synthetic_references(n_models=8)
    result = evaluators.EVALUATORS[name](refs.original, refs)
    self.assertEqual(set(result), {'scalars', 'per_seed', 'tables'})
    self.assertNotEmpty(result['scalars'])
    for column, value in result['scalars'].items():
      self.assertIsInstance(value, float, column)
    for column, values in result['per_seed'].items():
      self.assertLen(values, 8)
      self.assertEqual(result['scalars'][column], np.mean(values))
      self.assertIn(column + '_ci95', result['scalars'])
    for rows in result['tables'].values():
      self.assertTrue(all(isinstance(r, dict) for r in rows))

  def test_evaluate_merges_everything(self):
    refs = synthetic_references(n_models=8)
    result = evaluators.run_all(refs.oracle, refs)
    for column in ('F', 'F_N', 'final_score', 'lira_accuracy', 'lira_auc',
                   'F_identity', 'lira_accuracy_identity', 'F_ci95',
                   'lira_accuracy_ci95', 'F_identity_ci95',
                   'lira_accuracy_identity_ci95',
                   # 40 unseen losses: 1% is 0 false positives.
                   'tpr_at_0%_fpr',
                   'relative_seconds_ci95', 'relative_flops',
                   'test_accuracy', 'seconds_ci95'):
      self.assertIn(column, result['scalars'])
    self.assertNotIn('seed', result['per_seed'])
    self.assertNotIn('label', result['per_seed'])
    self.assertEqual(result['scalars']['F_N'], 8.0)
    self.assertEqual(set(result['tables']),
                     {'examples', 'identities', 'least_forgotten'})
    examples = result['tables']['examples']
    self.assertLen(examples, 30)
    self.assertEqual([e['identity'] for e in examples],
                     refs.forget_identities.tolist())
    self.assertEqual([e['epsilon'] for e in examples],
                     epsilon.epsilons(refs.oracle.phi['forget'],
                                      refs.retrain.phi['forget']).tolist())

  def test_retrain_is_not_scored_against_itself(self):
    refs = synthetic_references(n_models=8)
    result = evaluators.run_all(refs.retrain, refs)
    self.assertNotIn('F', result['scalars'])
    self.assertNotIn('lira_accuracy', result['scalars'])
    self.assertAlmostEqual(result['scalars']['relative_seconds'], 1.0)

  def test_shared_original_is_scored_as_identical_members(self):
    refs = synthetic_references(n_models=8)
    one = base.Population('original',
                          {'forget': refs.original.phi['forget'][:1]}, {},
                          refs.original.records[:1])
    scalars = evaluators.run_all(one, refs, ['epsilon', 'lira'])['scalars']
    # One model is a point mass beside a population: every example's pools
    # are peaky (ε = 50) and the attack always tells it apart.
    self.assertEqual(scalars['F'], 0.0)
    self.assertEqual(scalars['F_N'], 8.0)
    self.assertEqual(scalars['lira_accuracy'], 1.0)

  def test_too_few_models_leave_f_and_the_attack_out(self):
    refs = synthetic_references(n_models=base.MIN_MODELS - 1)
    scalars = evaluators.run_all(refs.oracle, refs)['scalars']
    for column in ('F', 'lira_accuracy', 'F_identity',
                   'lira_accuracy_identity'):
      self.assertNotIn(column, scalars)
    self.assertIn('test_accuracy', scalars)

  def test_cost_is_relative_to_retraining(self):
    refs = synthetic_references(n_models=4)
    result = evaluators.EVALUATORS['cost'](refs.original, refs)
    # Original seconds 15..18, retraining's 10..13 (mean 11.5); FLOPs 2e9/1e9.
    np.testing.assert_allclose(result['per_seed']['relative_seconds'],
                               np.arange(15.0, 19.0) / 11.5)
    # Equal for every model (one shared measurement): one number.
    self.assertEqual(result['scalars']['relative_flops'], 2.0)
    self.assertNotIn('relative_flops_ci95', result['scalars'])

  def test_clashing_columns(self):
    evaluators.register('clash')(lambda row, refs: base.result({'F': 0.0}))
    self.addCleanup(evaluators.EVALUATORS.pop, 'clash')
    refs = synthetic_references(n_models=8)
    with self.assertRaisesRegex(ValueError, "'clash' writes scalars"):
      evaluators.run_all(refs.oracle, refs, ['epsilon', 'clash'])
    with self.assertRaisesRegex(ValueError, 'registered twice'):
      evaluators.register('clash')(lambda row, refs: base.result())


if __name__ == '__main__':
  absltest.main()
