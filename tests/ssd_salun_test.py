"""SSD and SalUn: what each edits, and what it leaves bit-identical."""

import dataclasses

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

import unlearning_test as ut
from mufax.unlearning import random_labels
from mufax.unlearning import salun
from mufax.unlearning import ssd

# A batch larger than either tiny split: one step per pass, so few programs
# to compile.
WHOLE = 128


class RecordingSSD(ssd.SSD):
  """SSD that keeps what its dampening saw: the importance sums and the
  number of batches of each pass."""
  seen = None

  def stages(self, ctx):
    stages = super().stages(ctx)
    *measures, dampening = stages

    def edit(variables, measurements, rngs, values):
      self.seen = ({s.name: len(s.plan) for s in measures},
                   ut.host(measurements))
      return dampening.edit(variables, measurements, rngs, values)

    return measures + [dataclasses.replace(dampening, edit=edit)]


class RecordingSalUn(salun.SalUn):
  """SalUn that keeps its forget gradient sums and the mask it used."""
  seen = None

  def stages(self, ctx):
    saliency, unlearn = super().stages(ctx)

    def gradient_scale(variables, measurements, rngs, values):
      mask = unlearn.gradient_scale(variables, measurements, rngs, values)
      self.seen = (ut.host(measurements[salun.SALIENCY]), ut.host(mask))
      return mask

    return [saliency,
            dataclasses.replace(unlearn, gradient_scale=gradient_scale)]


def leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


class SSDTest(parameterized.TestCase):

  def test_plan_covers_each_split_once_and_straddles_the_boundary(self):
    retain, forget = np.arange(10)[::-1], np.arange(7)
    plan = ssd.plan_batches([('retain', retain), ('forget', forget)], 4)
    self.assertEqual([{k: len(v) for k, v in step.items()} for step in plan],
                     [{'retain': 4}, {'retain': 4},
                      {'retain': 2, 'forget': 2}, {'forget': 4},
                      {'forget': 1}])
    for name, order in (('retain', retain), ('forget', forget)):
      np.testing.assert_array_equal(
          np.concatenate([s[name] for s in plan if name in s]), order)

  def test_dampen_follows_the_rule(self):
    p = jnp.array([1.0, -2.0, 3.0, 4.0, 5.0])
    forget = jnp.array([10.0, 30.0, 1.0, 0.0, 50.0])
    train = jnp.array([2.0, 2.0, 1.0, 0.0, 1.0])
    out = ssd.dampen({'w': p}, {'w': forget}, {'w': train}, alpha=10.0,
                     dampening=1.0)['w']
    # Selected where forget > 10 * train: elements 1 and 4, scaled by
    # train / forget; 10 > 20 is not selected, nor 0 > 0.
    np.testing.assert_allclose(out, [1.0, -2.0 * 2 / 30, 3.0, 4.0,
                                     5.0 / 50], rtol=1e-6)
    # The bound: lambda * train / forget above 1 leaves the weight as is.
    out = ssd.dampen({'w': p}, {'w': forget}, {'w': train}, alpha=1.0,
                     dampening=100.0)['w']
    np.testing.assert_array_equal(out, p)

  def test_dampens_only_the_selected_elements(self):
    method = RecordingSSD('ssd')
    ctx, original = ut.tiny_context(batch_size=WHOLE)
    start = ut.host(original)
    row, = method.run(ctx, original)
    end = ut.host(row.variables)
    counts, sums = method.seen
    self.assertEqual(counts, {ssd.FORGET: 1, ssd.TRAIN: 1})
    hp = method.hparams(ctx)
    changed = 0
    for p0, p1, f, t in zip(leaves(start['params']), leaves(end['params']),
                            leaves(sums[ssd.FORGET]),
                            leaves(sums[ssd.TRAIN])):
      f, t = f / counts[ssd.FORGET], t / counts[ssd.TRAIN]
      selected = f > hp.alpha * t
      # Everything off the selection is bit-identical.
      np.testing.assert_array_equal(p1[~selected], p0[~selected])
      factor = np.minimum(hp.dampening * t[selected] / f[selected], 1.0)
      np.testing.assert_allclose(p1[selected], p0[selected] * factor,
                                 rtol=1e-6, atol=0)
      changed += int((p1 != p0).sum())
    self.assertGreater(changed, 0)
    jax.tree.map(np.testing.assert_array_equal, start['batch_stats'],
                 end['batch_stats'])

  def test_huge_alpha_changes_only_what_train_never_moved(self):
    """No element is selected, except where the train importance is exactly
    0 (f > alpha * 0 for any alpha, in the reference too): those, if any,
    are zeroed. Augmented views make such elements common in the tiny,
    mostly-dead random model."""
    method = RecordingSSD('ssd')
    ctx, original = ut.tiny_context(batch_size=WHOLE, alpha=1e20)
    start = ut.host(original)
    row, = method.run(ctx, original)
    end = ut.host(row.variables)
    _, sums = method.seen
    for p0, p1, f, t in zip(leaves(start['params']), leaves(end['params']),
                            leaves(sums[ssd.FORGET]),
                            leaves(sums[ssd.TRAIN])):
      zeroed = (t == 0) & (f > 0)
      np.testing.assert_array_equal(p1[~zeroed], p0[~zeroed])
      np.testing.assert_array_equal(p1[zeroed], 0.0)
    jax.tree.map(np.testing.assert_array_equal, start['batch_stats'],
                 end['batch_stats'])


class SalUnTest(parameterized.TestCase):

  @parameterized.parameters(0.1, 0.5, 0.73, 1.0)
  def test_mask_keeps_the_largest_fraction_globally(self, ratio):
    rng = np.random.default_rng(0)
    grads = {'a': rng.normal(size=(7, 5)).astype(np.float32),
             'b': {'c': rng.normal(size=(13,)).astype(np.float32)}}
    mask = salun.saliency_mask(grads, salun.mask_size(7 * 5 + 13, ratio))
    flat_mask = np.concatenate([m.ravel() for m in leaves(mask)])
    flat = np.abs(np.concatenate([g.ravel() for g in leaves(grads)]))
    self.assertEqual(flat_mask.sum(), int(flat.size * ratio))
    self.assertTrue(set(np.unique(flat_mask)) <= {0.0, 1.0})
    if 0 < ratio < 1:
      self.assertGreater(flat[flat_mask == 1].min(),
                         flat[flat_mask == 0].max())

  def test_mask_density_is_exact_under_ties(self):
    mask = salun.saliency_mask({'a': np.ones((10, 3), np.float32),
                                'b': np.zeros((5,), np.float32)},
                               salun.mask_size(35, 0.5))
    self.assertEqual(sum(m.sum() for m in leaves(mask)), 17)
    # The 17 largest: all 30 ones tie, the zeros never win.
    self.assertEqual(np.asarray(mask['b']).sum(), 0)

  def test_only_masked_weights_move(self):
    method = RecordingSalUn('salun')
    ctx, original = ut.tiny_context(dataset='mucac/multilabel',
                                    batch_size=WHOLE, lr=0.05, epochs=2)
    start = ut.host(original)
    row, = method.run(ctx, original)
    end = ut.host(row.variables)
    sums, mask = method.seen
    total = sum(m.size for m in leaves(mask))
    masked = sum(int(m.sum()) for m in leaves(mask))
    self.assertEqual(masked, int(total * 0.5))
    # The mask is the top half of |forget gradient| over all parameters.
    g = np.abs(np.concatenate([x.ravel() for x in leaves(sums)]))
    m = np.concatenate([x.ravel() for x in leaves(mask)])
    self.assertGreaterEqual(g[m == 1].min(), g[m == 0].max())
    moved = 0
    for p0, p1, keep in zip(leaves(start['params']), leaves(end['params']),
                            leaves(mask)):
      keep = keep == 1
      np.testing.assert_array_equal(p1[~keep], p0[~keep])
      moved += int((p1[keep] != p0[keep]).sum())
    self.assertGreater(moved, masked // 10)
    self.assertTrue(all(np.isfinite(p).all()
                        for p in leaves(end['params'])))

  @parameterized.parameters('all', 'other')
  def test_relabels_as_random_labels(self, labels):
    """SalUn's random labels are those of `random_labels`, its `labels`
    setting included."""
    objectives = {}
    for method in (salun.SalUn('salun'),
                   random_labels.RandomLabels('random_labels')):
      ctx = ut.sized_context('mufac/paper', 20, 46, labels=labels)
      objectives[method.name] = method.stages(ctx)[-1].objectives[
          'forget'].loss
    self.assertEqual(objectives['salun'],
                     random_labels.RandomLabelForgetLoss(8, labels))
    self.assertEqual(objectives['salun'], objectives['random_labels'])


class DrawLabelsTest(parameterized.TestCase):

  @parameterized.parameters((8, np.int64), (2, np.int32))
  def test_softmax_all(self, classes, dtype):
    """The reference's draw: every class alike, the true one included."""
    labels = np.tile(np.arange(classes), 1000).astype(dtype)
    out = np.asarray(random_labels.draw_labels(
        jax.random.key(0), labels, classes, 'softmax', 'all'))
    self.assertEqual(out.shape, labels.shape)
    self.assertEqual(out.dtype, jnp.asarray(labels).dtype)
    self.assertTrue(((out >= 0) & (out < classes)).all())
    # Each true class is followed by every class, itself included, each
    # about 1000 / classes times.
    for true in range(classes):
      counts = np.bincount(out[labels == true], minlength=classes)
      self.assertGreater(counts.min(), 0.7 * 1000 / classes, true)
      self.assertLess(counts.max(), 1.3 * 1000 / classes, true)
    self.assertAlmostEqual(float((out == labels).mean()), 1 / classes,
                           delta=0.2 / classes)

  @parameterized.parameters((8, np.int64), (2, np.int32))
  def test_softmax_other(self, classes, dtype):
    labels = np.tile(np.arange(classes), 500).astype(dtype)
    out = np.asarray(random_labels.draw_labels(
        jax.random.key(0), labels, classes, 'softmax', 'other'))
    self.assertEqual(out.shape, labels.shape)
    self.assertEqual(out.dtype, jnp.asarray(labels).dtype)
    self.assertFalse((out == labels).any())
    self.assertTrue(((out >= 0) & (out < classes)).all())
    # Every other class is drawn, about equally often.
    counts = np.bincount(out[labels == 0], minlength=classes)
    self.assertEqual(counts[0], 0)
    self.assertGreater(counts[1:].min(), 0.5 * 500 / (classes - 1))

  def test_sigmoid_all(self):
    """Every one of the 8 attribute vectors alike, the true one included:
    each of the 8 flip patterns (none flipped among them) about 1/8 of the
    time, whatever the true vector."""
    labels = np.random.default_rng(0).integers(0, 2, (8000, 3))
    out = np.asarray(random_labels.draw_labels(
        jax.random.key(1), labels, 3, 'sigmoid', 'all'))
    self.assertEqual(out.shape, labels.shape)
    self.assertEqual(out.dtype, jnp.asarray(labels).dtype)
    self.assertTrue(np.isin(out, (0, 1)).all())
    flips = ((out != labels) * (1 << np.arange(3))).sum(-1)
    counts = np.bincount(flips, minlength=8)
    self.assertGreater(counts.min(), 0.85 * 1000)
    self.assertLess(counts.max(), 1.15 * 1000)
    # The vector drawn does not depend on the true one.
    vectors = (out * (1 << np.arange(3))).sum(-1)
    for true in range(8):
      drawn = vectors[(labels * (1 << np.arange(3))).sum(-1) == true]
      self.assertEqual(set(np.unique(drawn)), set(range(8)), true)

  def test_sigmoid_other(self):
    labels = np.random.default_rng(0).integers(0, 2, (4000, 3))
    out = np.asarray(random_labels.draw_labels(
        jax.random.key(1), labels, 3, 'sigmoid', 'other'))
    self.assertEqual(out.shape, labels.shape)
    self.assertEqual(out.dtype, jnp.asarray(labels).dtype)
    self.assertTrue(np.isin(out, (0, 1)).all())
    self.assertTrue((out != labels).any(axis=-1).all())
    # All 7 other vectors are drawn: any subset of attributes may flip.
    flips = ((out != labels) * (1 << np.arange(3))).sum(-1)
    self.assertEqual(set(np.unique(flips)), set(range(1, 8)))

  def test_unknown_draw_is_refused(self):
    with self.assertRaisesRegex(ValueError, "draw='any'"):
      random_labels.draw_labels(jax.random.key(0), np.arange(4), 8,
                                'softmax', 'any')


if __name__ == '__main__':
  absltest.main()
