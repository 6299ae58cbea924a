"""benchmarks/fidelity.py: its PyTorch loops are mufax's methods where the
protocol leaves no freedom, and its two-sample tests tell a planted
difference from none."""

import functools
import json
import os

import jax
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from scipy import stats
import torch

from benchmarks import fidelity
from mufax import datasets
from mufax import engine as engine_lib
from mufax import models
from mufax import sharding
from mufax import torch_resnet

IMAGE_SIZE = 32
BATCH = 8
SEED = 42
# Moves every method's weights by 5e-3 or more over its few steps here,
# without the chaos of larger steps (SCRUB at 0.05 amplifies float32
# rounding to 0.4 in 18 steps).
LEARNING_RATE = 0.01
# The two frameworks' float32 rounding over a method's steps stayed below
# 2e-6 here; a step taken differently moves the weights by 1e-3 and more.
TOLERANCE = 1e-4


_threads = []


def setUpModule():
  # One thread: beside JAX's, two made the tiny model's steps 6x slower.
  _threads.append(torch.get_num_threads())
  torch.set_num_threads(1)


def tearDownModule():
  torch.set_num_threads(_threads.pop())


def fixture_split(n, seed):
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 3),
                                dtype=np.uint8),
          'label': rng.integers(0, 8, n)}


@functools.cache
def tiny_setup():
  """One engine for every test, so that they share its compiled programs: a
  tiny ResNet (stages 1-1-1-1, width 4) on random 32x32 images, 46 retain (a
  short last batch of 6) and 20 forget (4) as tests/unlearning_test sizes
  them, 512 test images so that accuracy is not too coarse.

  The original is a torch model's, converted (XLA's CPU compiler takes long
  over a Flax init), with non-trivial running statistics, so that eval and
  train mode differ.
  """
  splits = {'forget': fixture_split(20, 1), 'retain': fixture_split(46, 2),
            'test': fixture_split(512, 3), 'unseen': fixture_split(24, 4)}
  model = models.ResNetTiny(num_outputs=8)
  torch.manual_seed(0)
  net = torch_resnet.ResNet((1, 1, 1, 1), num_classes=8, width=4)
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.copy_(0.2 * torch.randn(m.num_features,
                                               generator=generator))
        m.running_var.copy_(0.5 + torch.rand(m.num_features,
                                             generator=generator))
  template = jax.eval_shape(
      lambda: models.init_variables(model, jax.random.key(0), IMAGE_SIZE))
  original = jax.tree.map(np.asarray, models.from_torch_state_dict(
      net.state_dict(), template))
  engine = engine_lib.Engine(model, loss_kind='softmax', splits=splits,
                             log_every_s=1e9, devices=jax.devices()[:1])
  return fidelity.Setup(task=datasets.task_of('mufac/paper'), engine=engine,
                        original=original)


def largest_difference(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


class PlanEquivalenceTest(parameterized.TestCase):
  """The reference loop on mufax's batch plan, without augmentation (and
  UNSIR with mufax's noise), ends with mufax's weights and statistics."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.setup = tiny_setup()

  def reference(self, name, lr=LEARNING_RATE):
    batches = fidelity.PlannedBatches(self.setup.engine.splits, IMAGE_SIZE,
                                      seed=SEED, batch_size=BATCH)
    return fidelity.run_reference(
        self.setup, name, SEED, batches=batches,
        hparams={'lr': lr, 'batch_size': BATCH}, log_every_s=1e9,
        noise=fidelity.mufax_noise(SEED))

  @parameterized.parameters(*fidelity.PAPER_METHODS)
  def test_reference_loop_on_mufax_plan_gives_mufax_variables(self, name):
    ours = fidelity.run_mufax(self.setup, name, (SEED,), augment=False,
                              hparams={'lr': LEARNING_RATE,
                                       'batch_size': BATCH})
    theirs = self.reference(name)
    self.assertEqual(sorted(ours), sorted(theirs))
    for row, mine in ours.items():
      # Same learning rate, epochs, BatchNorm mode, trainable groups and
      # number of update steps.
      self.assertEqual(mine['stages'], theirs[row]['stages'], row)
      self.assertFalse(mine['diverged'] or theirs[row]['diverged'])
      variables = sharding.member(mine['variables'], 0)
      self.assertLess(largest_difference(variables, theirs[row]['variables']),
                      TOLERANCE, row)
      # Not vacuous: the method moved the weights (in train mode the running
      # statistics alone would).
      self.assertGreater(largest_difference(variables['params'],
                                            self.setup.original['params']),
                         5e-3, row)

  def test_a_loop_that_differs_is_caught(self):
    ours = fidelity.run_mufax(self.setup, 'scrub', (SEED,), augment=False,
                              hparams={'lr': LEARNING_RATE,
                                       'batch_size': BATCH})
    theirs = self.reference('scrub', lr=1.1 * LEARNING_RATE)
    self.assertGreater(largest_difference(
        sharding.member(ours['scrub']['variables'], 0),
        theirs['scrub']['variables']), 10 * TOLERANCE)

  def test_stages_follow_the_protocol(self):
    self.assertEqual(fidelity.reference_bn_train('finetune', 'paper'), False)
    self.assertEqual(fidelity.reference_bn_train('unsir', 'paper'), False)
    self.assertEqual(fidelity.reference_bn_train('unsir', 'clean'), True)
    self.assertEqual(fidelity.reference_bn_train('scrub', 'paper'), True)
    self.assertEqual(fidelity.method_names('paper'),
                     list(fidelity.PAPER_METHODS))
    with self.assertRaisesRegex(ValueError, 'no reference loop'):
      fidelity.method_names('scrub,ssd')


class TwoSampleTest(absltest.TestCase):

  def test_exact_permutation_test(self):
    result = fidelity.two_sample([1.0, 2.0, 3.0, 4.0, 5.0],
                                 [11.0, 12.0, 13.0, 14.0, 15.0])
    self.assertEqual(result['permutations'], 'exact')
    # Of the 252 splits only the observed one and its mirror are as extreme.
    self.assertAlmostEqual(result['permutation_p'], 2 / 252)
    self.assertLess(result['welch_p'], 1e-5)
    self.assertAlmostEqual(result['difference'], -10.0)
    self.assertTrue(result['flagged'])
    self.assertAlmostEqual(result['permutation_floor'], 2 / 252)
    same = fidelity.two_sample([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    self.assertEqual(same['permutation_p'], 1.0)
    self.assertFalse(same['flagged'])
    # Three a side: 20 splits, so even complete separation gives p = 0.1.
    apart = fidelity.two_sample([1.0, 2.0, 3.0], [11.0, 12.0, 13.0])
    self.assertAlmostEqual(apart['permutation_p'], 0.1)
    self.assertAlmostEqual(apart['permutation_floor'], 0.1)
    self.assertLess(apart['welch_p'], 0.05)
    self.assertFalse(apart['flagged'])

  def test_sampled_permutation_test_is_seeded(self):
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 16), rng.normal(1.5, 1, 16)
    first = fidelity.two_sample(a, b)
    self.assertEqual(first['permutations'], fidelity.PERMUTATIONS)
    self.assertEqual(first, fidelity.two_sample(a, b))
    self.assertLess(first['permutation_p'], 0.01)
    self.assertGreater(first['permutation_p'], 0.0)
    self.assertAlmostEqual(first['welch_p'], float(
        stats.ttest_ind(a, b, equal_var=False).pvalue))


class PlantedDifferenceTest(absltest.TestCase):
  """Through the harness: a learning rate doubled on one side is flagged;
  two runs of one side, on other seeds, are not. NegGrad ascends the forget
  loss itself, so its learning rate shows there beyond what the order of
  the batches (the seeds, in check mode) does."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.setup = tiny_setup()
    run = lambda side, seeds, lr: fidelity.run_side(
        cls.setup, 'neggrad', side, seeds, augment=False, batches='mufax',
        hparams={'lr': lr, 'batch_size': BATCH}, log_every_s=1e9)
    cls.doubled = run('mufax', range(5), 2 * LEARNING_RATE)
    cls.reference = run('reference', range(5), LEARNING_RATE)
    cls.reference_again = run('reference', range(10, 15), LEARNING_RATE)

  def test_doubled_learning_rate_is_flagged(self):
    comparison = fidelity.compare_rows({'mufax': self.doubled,
                                        'reference': self.reference})
    self.assertFalse(comparison['neggrad']['stages_agree'])
    forget_loss = comparison['neggrad']['metrics']['forget_loss']
    self.assertTrue(forget_loss['flagged'])
    self.assertGreater(forget_loss['difference'], 0)
    # The two sides do not overlap at all: of the 252 splits of 5 + 5 only
    # the observed one and its mirror are as extreme.
    self.assertAlmostEqual(forget_loss['permutation_p'], 2 / 252)

    out = self.create_tempdir().full_path
    fidelity.write_reports(out, {
        'settings': {'dataset': 'fixture', 'image_size': IMAGE_SIZE,
                     'protocol': 'paper', 'arch': self.setup.arch,
                     'lam': 0.5, 'seeds': list(range(5)), 'augment': False,
                     'batches': 'mufax', 'original': 'x'},
        'original': {'source': 'tiny'},
        'methods': {'neggrad': {'mufax': self.doubled,
                                'reference': self.reference}},
        'comparison': {'neggrad': comparison}})
    with open(os.path.join(out, 'fidelity.md')) as f:
      report = f.read()
    self.assertRegex(report, r'\| neggrad \| forget loss \|.*\*\*differs\*\*')
    self.assertIn('the stages differ', report)
    with open(os.path.join(out, 'fidelity.json')) as f:
      saved = json.load(f)
    self.assertLen(saved['methods']['neggrad']['reference']['rows'][
        'neggrad']['members'], 5)

  def test_two_runs_of_one_side_are_not_flagged(self):
    comparison = fidelity.compare_rows({'mufax': self.reference_again,
                                        'reference': self.reference})
    self.assertTrue(comparison['neggrad']['stages_agree'])
    metrics = comparison['neggrad']['metrics']
    # They do differ, seed by seed (the tiny attack's MIA need not).
    self.assertNotEqual(metrics['forget_loss']['mufax']['values'],
                        metrics['forget_loss']['reference']['values'])
    for metric, result in metrics.items():
      self.assertFalse(result['flagged'], metric)


if __name__ == '__main__':
  absltest.main()
