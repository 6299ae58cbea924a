"""torch's max pool, and the one whose gradient XLA's CPU runs fast, against
flax's."""

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mufax import pooling


class MaxPoolTest(parameterized.TestCase):

  @parameterized.product(size=((1, 1), (2, 3), (7, 9), (8, 8)),
                         pool=('max_pool', 'cpu_max_pool'))
  def test_matches_flax(self, size, pool):
    h, w = size
    # After a ReLU many windows tie at 0: the gradient must go to the first
    # maximum, as flax's (and torch's) does.
    x = np.maximum(np.random.default_rng(0).standard_normal((2, h, w, 3)), 0)
    x[0, :, :2] = 1
    x = jnp.asarray(x, jnp.float32)

    def flax_pool(x):
      return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    y, vjp = jax.vjp(jax.jit(getattr(pooling, pool)), x)
    y_flax, vjp_flax = jax.vjp(flax_pool, x)
    g = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape),
                    jnp.float32)
    np.testing.assert_array_equal(y, y_flax)
    np.testing.assert_allclose(vjp(g)[0], vjp_flax(g)[0], rtol=1e-6,
                               atol=1e-6)

  def test_bfloat16(self):
    x = jnp.ones((2, 5, 5, 3), jnp.bfloat16)
    y, grad = jax.jit(lambda x: (lambda y, vjp: (y, vjp(y)[0]))(
        *jax.vjp(pooling.cpu_max_pool, x)))(x)
    self.assertEqual(y.dtype, jnp.bfloat16)
    self.assertEqual(grad.dtype, jnp.bfloat16)


if __name__ == '__main__':
  absltest.main()
