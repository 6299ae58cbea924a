"""Metrics: NoMUS against the published tables, the reference MIA, accuracies."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from sklearn import linear_model
from sklearn import model_selection

from mufax import datasets
from mufax import metrics
from mufax import published

# Every row of the protocol §7 tables (λ = 0.5).
PUBLISHED_ROWS = [
    dict(testcase_name=f'{dataset.replace("/", "_")}_{method}',
         row=published.published(datasets.task_of(dataset), method))
    for dataset in ('mufac/paper', 'mucac/multilabel', 'mucac/gender',
                    'mucac/smiling', 'mucac/young')
    for method in published.METHODS
]


def reference_mia(forget_losses, unseen_losses):
  """The reference notebook's `cal_mia` + `simple_mia`, written as it does.

  Uses numpy's global RNG like the notebook; the caller's global state is
  restored afterwards.
  """
  state = np.random.get_state()
  try:
    forget_losses = np.array(forget_losses)
    np.random.seed(42)
    np.random.shuffle(forget_losses)
    forget_losses = forget_losses[: len(unseen_losses)]
    samples_mia = np.concatenate((unseen_losses, forget_losses)).reshape((-1, 1))
    labels_mia = [0] * len(unseen_losses) + [1] * len(forget_losses)
    cv = model_selection.StratifiedShuffleSplit(n_splits=10, random_state=0)
    return model_selection.cross_val_score(
        linear_model.LogisticRegression(), samples_mia, labels_mia, cv=cv,
        scoring='accuracy').mean()
  finally:
    np.random.set_state(state)


class NomusTest(parameterized.TestCase):

  @parameterized.named_parameters(*PUBLISHED_ROWS)
  def test_published_row(self, row):
    acc, forgetting = row['accuracy'], row['forgetting_score']
    # Recomputing from 4-digit acc and forgetting is off by up to 7.5e-5, and
    # the published NoMUS is itself rounded (5e-5); every row lands within
    # 1e-4. Four MUFAC rows (retrain, cf3, neggrad, scrub) differ by exactly
    # 1e-4 in decimal, which binary floats can put a hair above 1e-4 (scrub:
    # 0.6577 vs 0.6576), hence comparing the difference rounded to 10 digits.
    got = metrics.nomus(acc, 0.5 + forgetting)
    self.assertLessEqual(round(abs(got - row['nomus']), 10), 1e-4)
    # The forgetting score is symmetric in M, so M below 0.5 gives the same.
    self.assertAlmostEqual(metrics.nomus(acc, 0.5 - forgetting), got, places=12)

  def test_first_row_exact(self):
    self.assertAlmostEqual(metrics.nomus(0.5951, 0.5 + 0.2136), 0.58395,
                           places=12)

  def test_published_rows_are_not_vacuous(self):
    # A wrong formula (e.g. 1 − |M − 0.5| instead of 1 − 2|M − 0.5|) must fail.
    row = published.published(datasets.task_of('mufac/paper'), 'original')
    acc, f, n = row['accuracy'], row['forgetting_score'], row['nomus']
    self.assertGreater(abs(0.5 * acc + 0.5 * (1 - f) - n), 0.05)

  @parameterized.parameters(0.0, 0.3, 0.5, 0.9, 1.0)
  def test_lambda_extremes(self, mia):
    self.assertAlmostEqual(metrics.nomus(0.7, mia, lam=1.0), 0.7, places=12)
    self.assertAlmostEqual(metrics.nomus(0.7, mia, lam=0.0),
                           1 - 2 * abs(mia - 0.5), places=12)

  @parameterized.parameters(-0.1, 1.1, float('nan'), float('inf'))
  def test_rejects_bad_lambda(self, lam):
    with self.assertRaisesRegex(ValueError, 'lambda'):
      metrics.nomus(0.5, 0.5, lam=lam)

  @parameterized.parameters((-0.01, 0.5, 'accuracy'), (1.01, 0.5, 'accuracy'),
                            (0.5, 1.2, 'mia'), (0.5, float('nan'), 'mia'))
  def test_rejects_out_of_range(self, acc, mia, name):
    with self.assertRaisesRegex(ValueError, name):
      metrics.nomus(acc, mia)


class ForgettingScoreTest(parameterized.TestCase):

  @parameterized.parameters(0.0, 0.1, 0.2864, 0.5, 0.77)
  def test_symmetric(self, mia):
    self.assertAlmostEqual(metrics.forgetting_score(mia),
                           metrics.forgetting_score(1 - mia), places=12)
    self.assertAlmostEqual(metrics.forgetting_score(mia), abs(mia - 0.5),
                           places=12)

  def test_values(self):
    self.assertEqual(metrics.forgetting_score(0.5), 0.0)
    self.assertAlmostEqual(metrics.forgetting_score(0.7136), 0.2136, places=12)
    self.assertEqual(metrics.forgetting_score(1.0), 0.5)


class MembershipInferenceTest(absltest.TestCase):

  def test_same_distribution_is_chance(self):
    rng = np.random.default_rng(0)
    forget = rng.exponential(1.0, 1200)
    unseen = rng.exponential(1.0, 1000)
    self.assertAlmostEqual(metrics.membership_inference(forget, unseen), 0.5,
                           delta=0.1)

  def test_separated_is_near_one(self):
    rng = np.random.default_rng(1)
    forget = 0.01 + 0.005 * rng.random(600)
    unseen = 2.0 + 0.5 * rng.random(500)
    self.assertGreater(metrics.membership_inference(forget, unseen), 0.95)

  def test_matches_reference_exactly(self):
    rng = np.random.default_rng(2)
    # Overlapping distributions, so the score depends on which forget losses
    # survive the shuffle and on the sample order; float32 like torch losses.
    forget = rng.gamma(2.0, 0.4, 700).astype(np.float32)
    unseen = rng.gamma(2.0, 0.5, 300).astype(np.float32)
    got = metrics.membership_inference(forget, unseen)
    self.assertEqual(got, reference_mia(forget, unseen))
    self.assertNotAlmostEqual(got, 0.5, places=2)  # not a degenerate case

  def test_float32_fits_as_float64(self):
    # The reference's scikit-learn fitted float32 losses in float64; this one
    # fits float32 in float32, which gives another M on these losses.
    rng = np.random.default_rng(25)
    forget = rng.gamma(2.0, 0.07, 400).astype(np.float32)
    unseen = rng.gamma(2.0, 0.07, 200).astype(np.float32)
    forget64, unseen64 = forget.astype(np.float64), unseen.astype(np.float64)
    got = metrics.membership_inference(forget, unseen)
    self.assertEqual(got, metrics.membership_inference(forget64, unseen64))
    self.assertEqual(got, reference_mia(forget64, unseen64))
    self.assertNotEqual(got, reference_mia(forget, unseen))

  def test_order_and_shuffle_matter(self):
    # The exact-match test above would be weak if the score ignored which
    # forget losses are kept or the order within a class (StratifiedShuffleSplit
    # permutes each class's samples by position). Putting the whole forget
    # block first does not change the splits, as those are drawn per class,
    # but the within-class order does.
    rng = np.random.default_rng(2)
    forget = rng.gamma(2.0, 0.4, 700)
    unseen = rng.gamma(2.0, 0.5, 300)
    ref = metrics.membership_inference(forget, unseen)
    self.assertNotEqual(metrics.membership_inference(forget, unseen, seed=0),
                        ref)
    self.assertNotEqual(metrics.membership_inference(forget, unseen[::-1]),
                        ref)

  def test_random_state_shuffle_is_global_seed_shuffle(self):
    a = np.arange(1000, dtype=np.float64)
    b = a.copy()
    state = np.random.get_state()
    try:
      np.random.seed(42)
      np.random.shuffle(a)
    finally:
      np.random.set_state(state)
    np.random.RandomState(42).shuffle(b)
    np.testing.assert_array_equal(a, b)
    self.assertFalse(np.array_equal(a, np.arange(1000)))

  def test_deterministic_no_mutation_no_global_state(self):
    rng = np.random.default_rng(3)
    forget = rng.random(400)
    unseen = rng.random(200) + 0.1
    forget_copy, unseen_copy = forget.copy(), unseen.copy()
    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    first = metrics.membership_inference(forget, unseen)
    self.assertEqual(np.random.random(), expected_next)
    self.assertEqual(metrics.membership_inference(forget, unseen), first)
    np.testing.assert_array_equal(forget, forget_copy)
    np.testing.assert_array_equal(unseen, unseen_copy)

  def test_fewer_forget_than_unseen_losses_as_the_reference(self):
    # MUFAC has 1,500 forget and 1,504 unseen images: all forget losses are
    # kept and the attack set is unbalanced, as in the reference.
    rng = np.random.default_rng(5)
    forget, unseen = rng.random(150) * 0.5, rng.random(154)
    score = metrics.membership_inference(forget, unseen)
    self.assertEqual(score, reference_mia(forget, unseen))
    self.assertGreater(score, 0.6)

  def test_accepts_lists(self):
    forget = [0.1, 0.2, 0.3] * 10
    unseen = [1.1, 1.2, 1.3] * 10
    self.assertEqual(metrics.membership_inference(forget, unseen), 1.0)

  def test_bad_inputs(self):
    good = np.linspace(0.0, 1.0, 50)
    cases = [
        (np.array([0.1, np.nan] * 30), good, 'forget_losses.*non-finite'),
        (good, np.array([0.1, np.inf] * 20), 'unseen_losses.*non-finite'),
        (np.array([]), good, 'forget_losses is empty'),
        (good, np.array([]), 'unseen_losses is empty'),
        (good.reshape(5, 10), good, 'forget_losses must be 1-D'),
        (good, np.array(['a'] * 10), 'unseen_losses must be real'),
    ]
    for forget, unseen, message in cases:
      with self.subTest(message):
        with self.assertRaisesRegex(ValueError, message):
          metrics.membership_inference(forget, unseen)


class AccuracyTest(parameterized.TestCase):

  LOGITS = np.array([
      [0.1, 0.9, 0.0],   # order 1, 0, 2
      [2.0, 1.0, 3.0],   # order 2, 0, 1
      [0.5, 0.5, 0.1],   # tie: 0 before 1
      [-1.0, -3.0, -2.0],  # order 0, 2, 1
  ])

  @parameterized.parameters(
      ([1, 2, 0, 0], 1, 1.0),
      ([0, 0, 1, 2], 1, 0.0),
      ([0, 0, 1, 2], 2, 1.0),
      ([2, 1, 2, 1], 2, 0.0),
      ([2, 1, 2, 1], 3, 1.0),
      ([1, 0, 1, 1], 1, 0.25),
      ([1, 0, 1, 1], 2, 0.75),
  )
  def test_top_k(self, labels, k, expected):
    self.assertEqual(metrics.top_k_accuracy(self.LOGITS, labels, k=k), expected)

  def test_top_1_is_argmax(self):
    rng = np.random.default_rng(4)
    logits = rng.integers(0, 3, (200, 8)).astype(np.float32)  # many ties
    labels = rng.integers(0, 8, 200)
    self.assertEqual(metrics.top_k_accuracy(logits, labels),
                     np.mean(np.argmax(logits, axis=1) == labels))

  def test_top_k_bad_inputs(self):
    with self.assertRaisesRegex(ValueError, 'k must be'):
      metrics.top_k_accuracy(self.LOGITS, [0, 0, 0, 0], k=4)
    with self.assertRaisesRegex(ValueError, 'labels must be'):
      metrics.top_k_accuracy(self.LOGITS, [0, 0, 3, 0])
    with self.assertRaisesRegex(ValueError, r'logits \[N, C\]'):
      metrics.top_k_accuracy(self.LOGITS, [0, 0, 0])

  def test_multilabel(self):
    logits = np.array([[2.0, -1.0, 0.0],
                       [-0.5, 0.3, 4.0],
                       [1.0, 1.0, -2.0],
                       [-3.0, -0.1, 0.2]])
    labels = np.array([[1, 0, 0],
                       [0, 0, 1],
                       [1, 1, 0],
                       [0, 1, 0]])
    # Column 0: all right. Column 1: rows 0, 2 right. Column 2: logit 0 is
    # sigmoid 0.5, not > 0.5, so row 0 (label 0) is right; rows 1, 2 right,
    # row 3 wrong.
    np.testing.assert_allclose(metrics.multilabel_accuracies(logits, labels),
                               [1.0, 0.5, 0.75])
    np.testing.assert_allclose(
        metrics.multilabel_accuracies(logits, labels.astype(bool)),
        [1.0, 0.5, 0.75])

  def test_multilabel_bad_inputs(self):
    with self.assertRaisesRegex(ValueError, 'same'):
      metrics.multilabel_accuracies(np.zeros((4, 3)), np.zeros((4, 2)))
    with self.assertRaisesRegex(ValueError, '0 or 1'):
      metrics.multilabel_accuracies(np.zeros((2, 3)), np.full((2, 3), 2))


class LossAucTest(absltest.TestCase):

  def test_extremes(self):
    low = np.array([0.01, 0.02, 0.03, 0.04, 0.05])
    high = np.array([1.0, 2.0, 3.0])
    self.assertEqual(metrics.loss_auc(low, high), 1.0)
    self.assertEqual(metrics.loss_auc(high, low), 0.0)
    self.assertEqual(metrics.loss_auc(np.full(7, 0.3), np.full(4, 0.3)), 0.5)

  def test_partial_overlap_uses_all_forget_losses(self):
    # Pairs (forget < unseen) out of 3 x 2: 0.1 beats both, 0.5 beats 0.6,
    # 0.9 beats none: 3 of 6. Truncating forget to 2 would give another value.
    self.assertAlmostEqual(metrics.loss_auc([0.1, 0.5, 0.9], [0.4, 0.6]), 0.5)
    self.assertAlmostEqual(metrics.loss_auc([0.1, 0.5, 0.05], [0.4, 0.6]),
                           5 / 6)

  def test_bad_inputs(self):
    with self.assertRaisesRegex(ValueError, 'unseen_losses.*non-finite'):
      metrics.loss_auc([0.1, 0.2], [0.3, np.nan])
    with self.assertRaisesRegex(ValueError, 'forget_losses is empty'):
      metrics.loss_auc([], [0.3])


class ParameterChangeTest(absltest.TestCase):

  def test_hand_computed(self):
    original = [np.array([[3.0, 0.0], [0.0, 0.0]]), np.array([4.0])]
    model = [np.array([[3.0, 1.0], [0.0, 0.0]]), np.array([4.0 + 2.0])]
    moved = metrics.parameter_change(original, model)
    # 2 of 5 elements differ; |(0, 1, 0, 0, 2)| / |(3, 0, 0, 0, 4)|.
    self.assertEqual(moved['changed_fraction'], 2 / 5)
    self.assertAlmostEqual(moved['relative_l2'], 5 ** 0.5 / 5)

  def test_a_model_left_alone_scores_zero(self):
    original = [np.arange(6.0).reshape(2, 3), np.ones(4, np.float32)]
    self.assertEqual(metrics.parameter_change(original, original),
                     {'changed_fraction': 0.0, 'relative_l2': 0.0})

  def test_other_architectures_are_refused(self):
    with self.assertRaisesRegex(ValueError, 'shapes'):
      metrics.parameter_change([np.zeros(3)], [np.zeros(4)])
    with self.assertRaises(ValueError):
      metrics.parameter_change([np.zeros(3)], [np.zeros(3), np.zeros(1)])


if __name__ == '__main__':
  absltest.main()
