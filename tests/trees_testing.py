"""Comparing two results of the same training steps, up to float rounding."""

import jax
import numpy as np


def largest_difference(a, b) -> float:
  return max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def assert_equal_up_to_rounding(test, start, a, b, rel: float) -> None:
  """`a` and `b`, two results of the same steps from `start`, differ by at
  most `rel` of what the steps changed, collection by collection (params,
  batch_stats).

  Float32 rounding differs between layouts (members batched or alone, one
  device or four), and each step carries it on. So the bound is relative to
  the largest change of the collection, not leaf by leaf (a leaf that barely
  moved shows rounding as a large fraction of its move). A real difference
  (another seed's data, statistics of part of a batch, a step missing) is of
  the order of the change itself. A collection the steps left alone (eval-mode
  BatchNorm statistics) must be left alone in both.
  """
  test.assertEqual(jax.tree.structure(a), jax.tree.structure(b))
  for name in a:
    change = largest_difference(start[name], a[name])
    difference = largest_difference(a[name], b[name])
    test.assertLessEqual(difference, rel * change,
                         f'{name}: results differ by {difference:.3g}, '
                         f'{rel:.2%} of the change {change:.3g} allowed')
