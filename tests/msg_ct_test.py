"""MSG and CT (DeepUnlearn's re-implementations of two NeurIPS 2023 challenge
entries): what their edits and steps do, on batches as stored."""

import dataclasses

import jax
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import trees_testing
import unlearning_test as ut

from mufax import models
from mufax import sharding
from mufax import unlearning
from mufax.unlearning import core
from mufax.unlearning import ct
from mufax.unlearning import msg

FRACTION = 0.3


def conv_kernels(params):
  """{path: leaf} of the convolution kernels of one model's params tree."""
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in
          jax.tree_util.tree_flatten_with_path(params)[0]
          if msg.is_conv_kernel(path, leaf)}


def other_leaves(params):
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in
          jax.tree_util.tree_flatten_with_path(params)[0]
          if not msg.is_conv_kernel(path, leaf)}


def tiny_population(count, seed):
  """`count` tiny models' variables, drawn in numpy (no compiled init):
  N(0, 0.1) everywhere."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: models.init_variables(
      models.ResNetTiny(num_outputs=8), jax.random.key(0), ut.IMAGE_SIZE))
  return jax.tree.map(lambda s: 0.1 * rng.standard_normal(
      (count,) + s.shape).astype(np.float32), shapes)


def fake_measurements(params, seed):
  """Independent N(0, 1) gradient sums on retain and forget, shaped like a
  population's params."""
  rng = np.random.default_rng(seed)
  draw = lambda p: rng.standard_normal(p.shape).astype(np.float32)
  return {'retain_gradients': jax.tree.map(draw, params),
          'forget_gradients': jax.tree.map(draw, params)}


def msg_values(members):
  """MSG's `Stage.values` for a population of `members` (the hooks')."""
  return {'init_rate': np.full(members, FRACTION),
          'kept_gradient_scale': np.full(members, 0.1)}


def smallest(values, fraction):
  """Mask of the round(fraction * size) smallest entries."""
  flat = values.reshape(-1)
  mask = np.zeros(flat.size, bool)
  mask[np.argsort(flat, kind='stable')[:round(fraction * flat.size)]] = True
  return mask.reshape(values.shape)


class _Stages(core.SGDMethod):
  """Given stages, run as a method's (not registered)."""

  def __init__(self, stages):
    super().__init__('test')
    self._stages = stages

  def stages(self, ctx):
    return self._stages


def member0(tree):
  return sharding.member(tree, 0)


def first_steps(ctx, original, stages, **fields):
  """The variables of the last row when each of `stages` runs only its
  first step, with `fields` replacing the stages' own (e.g. augment=True)."""
  cut = [dataclasses.replace(s, plan=s.plan[:1], **fields) for s in stages]
  *_, row = _Stages(cut).run(ctx, original)
  return ut.host(row.variables)


class MSGTest(parameterized.TestCase):

  def test_mask_keeps_the_smallest_retain_minus_forget_gradients(self):
    population = tiny_population(2, seed=0)
    fake = fake_measurements(population['params'], seed=0)
    scales = member0(msg.gradient_scales(None, fake, None, msg_values(2)))
    retain = conv_kernels(member0(fake['retain_gradients']))
    forget = conv_kernels(member0(fake['forget_gradients']))
    kernels = conv_kernels(scales)
    # The stem, 2 per block, and the 3 shortcuts.
    self.assertLen(kernels, 1 + 2 * 4 + 3)
    for name, scale in kernels.items():
      expected = smallest(np.abs(retain[name] - forget[name]), FRACTION)
      self.assertEqual(int(expected.sum()), round(FRACTION * scale.size))
      np.testing.assert_array_equal(scale == 1.0, expected, name)
      np.testing.assert_array_equal(scale[~expected],
                                    np.float32(0.1), name)
      # Another direction or ratio would have picked other elements.
      for wrong in (np.abs(retain[name] + forget[name]),
                    np.abs(forget[name]) / np.abs(retain[name]),
                    np.abs(retain[name] / forget[name])):
        self.assertFalse(np.array_equal(expected,
                                        smallest(wrong, FRACTION)), name)
    for name, scale in other_leaves(scales).items():
      np.testing.assert_array_equal(scale, 1.0, name)

  def test_edit_redraws_exactly_the_masked_elements(self):
    ctx = ut.sized_context('mufac/paper', 20, 46)
    edit = unlearning.METHODS['msg'].stages(ctx)[2].edit
    population = tiny_population(2, seed=1)
    fake = fake_measurements(population['params'], seed=1)
    # Both members' gradients alike: they re-draw the same elements.
    fake = jax.tree.map(lambda x: np.stack([x[0], x[0]]), fake)
    rngs = jax.vmap(jax.random.key)(np.arange(2))
    edited = ut.host(edit(population, fake, rngs, msg_values(2)))
    again = ut.host(edit(population, fake, rngs, msg_values(2)))
    jax.tree.map(np.testing.assert_array_equal, edited, again)
    start = ut.host(population)
    scales = msg.gradient_scales(None, fake, None, msg_values(2))
    for k in range(2):
      new = conv_kernels(sharding.member(edited['params'], k))
      old = conv_kernels(sharding.member(start['params'], k))
      masked = {name: scale == 1.0 for name, scale in
                conv_kernels(sharding.member(scales, k)).items()}
      for name in new:
        changed = new[name] != old[name]
        self.assertEqual(int(changed.sum()),
                         round(FRACTION * changed.size), name)
        np.testing.assert_array_equal(changed, masked[name], name)
      # The largest kernel's re-drawn elements follow kaiming_normal_
      # (fan_out): std sqrt(2 / (3 * 3 * 32)).
      name = "['layer4_0']['conv2']['kernel']"
      fresh = new[name][masked[name]]
      self.assertGreater(fresh.size, 2000)
      self.assertAlmostEqual(fresh.std() / np.sqrt(2 / (3 * 3 * 32)), 1.0,
                             delta=0.1)
      self.assertLess(abs(fresh.mean()), 0.01)
    # Each member draws from its own key.
    name = "['layer4_0']['conv2']['kernel']"
    self.assertFalse(np.array_equal(edited['params']['layer4_0']['conv2'][
        'kernel'][0][masked[name]], edited['params']['layer4_0']['conv2'][
            'kernel'][1][masked[name]]))
    # Nothing but the convolutions' kernels is touched.
    for k in range(2):
      jax.tree.map(np.testing.assert_array_equal,
                   other_leaves(sharding.member(edited['params'], k)),
                   other_leaves(sharding.member(start['params'], k)))
    jax.tree.map(np.testing.assert_array_equal, edited['batch_stats'],
                 start['batch_stats'])

  @parameterized.parameters('paper', 'clean')
  def test_stages_follow_the_reference(self, protocol):
    ctx = ut.sized_context('mucac/multilabel', 150, 1000, protocol=protocol)
    stages = unlearning.METHODS['msg'].stages(ctx)
    self.assertEqual([s.name for s in stages[:2]],
                     ['retain_gradients', 'forget_gradients'])
    for stage in stages[:2]:
      self.assertEqual(stage.optimizer, 'gradient_sum')
      self.assertTrue(stage.bn_train)  # the reference's model in train mode
    retain = np.concatenate([b['retain'] for _, b in stages[0].plan])
    forget = np.concatenate([b['forget'] for _, b in stages[1].plan])
    # A subset of retain as large as forget; forget once, whole.
    self.assertLen(set(retain.tolist()), 150)
    self.assertLess(retain.max(), 1000)
    np.testing.assert_array_equal(np.sort(forget), np.arange(150))
    train = stages[2:]
    np.testing.assert_allclose([s.learning_rate for s in train],
                               [0.001 / 3, 0.002 / 3, 0.001, 0.002 / 3,
                                0.001 / 3])
    self.assertEqual([s.row for s in train], [None] * 4 + ['msg'])
    self.assertEqual([s.edit is not None for s in train],
                     [True] + [False] * 4)
    for stage in train:
      self.assertEqual((stage.optimizer, stage.momentum, stage.bn_train),
                       ('scaled_sgd', 0.9, True))
      self.assertIsNotNone(stage.gradient_scale)
      self.assertEqual(len(stage.plan), -(-1000 // 64))
    # Each epoch is its own shuffle of retain.
    self.assertFalse(np.array_equal(train[0].plan[0][1]['retain'],
                                    train[1].plan[0][1]['retain']))

    stages = unlearning.METHODS['ct'].stages(ctx)
    np.testing.assert_allclose([s.learning_rate for s in stages],
                               [0.001, 0.00075, 0.00025])
    self.assertEqual([s.row for s in stages], [None, None, 'ct'])
    self.assertEqual([s.edit is not None for s in stages],
                     [True, False, False])
    for stage in stages:
      self.assertEqual((stage.optimizer, stage.momentum, stage.bn_train),
                       ('sgd', 0.9, True))
      self.assertEqual(set(stage.plan[0][1]), {'retain'})

  def test_kept_weights_step_at_a_tenth_of_fine_tuning(self):
    """The first step from the edited model, against a plain SGD step on
    the same batch (multi-label, sigmoid loss)."""
    ctx, original = ut.tiny_context(dataset='mucac/multilabel', lr=0.1)
    first = unlearning.METHODS['msg'].stages(ctx)[2]
    fake = fake_measurements(original['params'], seed=2)
    edited = first.edit(original, fake, jax.vmap(jax.random.key)(
        np.arange(1)), msg_values(1))
    step = dict(plan=first.plan[:1], edit=None)
    scaled = dataclasses.replace(
        first, row='scaled', **step,
        gradient_scale=lambda v, m, r, values: first.gradient_scale(
            v, fake, r, values))
    plain = dataclasses.replace(first, row='plain', optimizer='sgd',
                                gradient_scale=None, **step)
    after = {s.row: member0(ut.host(next(_Stages([s]).run(ctx, edited))
                                    .variables)) for s in (scaled, plain)}
    start, edited = member0(ut.host(original)), member0(ut.host(edited))
    moved = lambda row, part: jax.tree.map(
        np.subtract, part(after[row]['params']), part(edited['params']))
    for part in (conv_kernels, other_leaves):
      ours, theirs = moved('scaled', part), moved('plain', part)
      for name in ours:
        if part is conv_kernels:
          redrawn = (conv_kernels(edited['params'])[name]
                     != conv_kernels(start['params'])[name])
          self.assertEqual(int(redrawn.sum()),
                           round(FRACTION * redrawn.size), name)
          expected = np.where(redrawn, theirs[name], 0.1 * theirs[name])
        else:
          expected = theirs[name]
        change = np.abs(theirs[name]).max()
        self.assertGreater(change, 1e-6, name)
        self.assertLessEqual(np.abs(ours[name] - expected).max(),
                             1e-3 * change, name)
    # The same forward pass: the same batch statistics.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                 after['scaled']['batch_stats'], after['plain']['batch_stats'])


class CTTest(absltest.TestCase):

  def test_edit_swaps_the_spatial_axes_of_every_conv_kernel(self):
    population = tiny_population(2, seed=2)
    start = ut.host(population)
    edited = ut.host(ct.transpose_kernels(population))
    kernels = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(
        edited['params'])[0]:
      old = start['params']
      for key in path:
        old = old[key.key]
      if path[-1].key == 'kernel' and leaf.ndim == 5:
        kernels += 1
        np.testing.assert_array_equal(leaf, np.swapaxes(old, 1, 2))
        if leaf.shape[1] > 1:
          self.assertGreater(np.abs(leaf - old).max(), 1e-2)
      else:
        np.testing.assert_array_equal(leaf, old)
    self.assertEqual(kernels, 1 + 2 * 4 + 3)
    jax.tree.map(np.testing.assert_array_equal, edited['batch_stats'],
                 start['batch_stats'])

  def test_training_starts_from_the_transposed_kernels(self):
    """At a vanishing learning rate, two epochs leave the transposed
    kernels (transposed once, not once per epoch) and the other
    parameters as they were; multi-label."""
    ctx, original = ut.tiny_context(dataset='mucac/multilabel', lr=1e-12,
                                    epochs=2)
    start = ut.host(original)
    row = ut.rows_of(ctx, 'ct', original)['ct']
    self.assertEqual(row.update_steps, 12)
    result = ut.host(row.variables)
    transposed = ut.host(ct.transpose_kernels(original))
    moved = 0.0
    for path, leaf in jax.tree_util.tree_flatten_with_path(
        result['params'])[0]:
      old, new = start['params'], transposed['params']
      for key in path:
        old, new = old[key.key], new[key.key]
      np.testing.assert_allclose(leaf, new, rtol=0, atol=1e-9)
      moved = max(moved, float(np.abs(new - old).max()))
    self.assertGreater(moved, 1e-2)
    self.assertTrue(jax.tree.all(jax.tree.map(
        lambda p: bool(np.isfinite(p).all()), result)))


class AugmentationTest(parameterized.TestCase):

  @parameterized.parameters('msg', 'ct')
  def test_every_stage_sees_batches_as_stored(self, method):
    """The first step of every stage (MSG's gradient passes included) gives,
    bit for bit, what it gives with augmentation off, and not what it gives
    with augmentation on: DeepUnlearn's loaders never augmented."""
    ctx, original = ut.tiny_context(jax.devices()[:1], epochs=1)
    stages = unlearning.METHODS[method].stages(ctx)
    self.assertEqual([s.name for s in stages if s.augment], [])
    declared = first_steps(ctx, original, stages)
    jax.tree.map(np.testing.assert_array_equal, declared,
                 first_steps(ctx, original, stages, augment=False))
    self.assertGreater(trees_testing.largest_difference(
        declared['params'],
        first_steps(ctx, original, stages, augment=True)['params']), 1e-6)


if __name__ == '__main__':
  absltest.main()
