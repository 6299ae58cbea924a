"""torch's max pool of NHWC images: `max_pool` as XLA computes it, for GPU
and TPU, and `cpu_max_pool`, its gradient in a form that XLA's CPU runs fast
(`models.for_platform` picks one).
"""

from __future__ import annotations

import functools

import jax
from jax import lax
import jax.numpy as jnp


def _pool_windows(x, window: int, stride: int, padding: int):
  """(-inf padded x, [((i, j), view)]): the input under each window offset."""
  b, h, w, c = x.shape
  ho = (h + 2 * padding - window) // stride + 1
  wo = (w + 2 * padding - window) // stride + 1
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
               constant_values=-jnp.inf)
  return xp, [((i, j), lax.slice(xp, (0, i, j, 0),
                                 (b, i + stride * (ho - 1) + 1,
                                  j + stride * (wo - 1) + 1, c),
                                 (1, stride, stride, 1)))
              for i in range(window) for j in range(window)]


def _reduce_window_max(x, window: int, stride: int, padding: int):
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1),
                           (1, stride, stride, 1),
                           ((0, 0), (padding, padding), (padding, padding),
                            (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _cpu_max_pool(x, window: int, stride: int, padding: int):
  return _reduce_window_max(x, window, stride, padding)


def _cpu_max_pool_fwd(x, window, stride, padding):
  y = _reduce_window_max(x, window, stride, padding)
  return y, (x, y)


def _cpu_max_pool_bwd(window, stride, padding, residuals, g):
  x, y = residuals
  xp, views = _pool_windows(x, window, stride, padding)
  _, hp, wp, _ = xp.shape
  _, ho, wo, _ = y.shape
  zero = jnp.zeros((), g.dtype)
  taken = jnp.zeros(y.shape, bool)
  grad = jnp.zeros(xp.shape, g.dtype)
  for (i, j), view in views:
    # Each output's gradient goes to the first maximum of its window.
    first = (view == y) & ~taken
    taken = taken | first
    # The transpose of the strided view: g back at the pixels it read.
    grad = grad + lax.pad(
        jnp.where(first, g, zero), zero,
        ((0, 0, 0), (i, hp - i - stride * (ho - 1) - 1, stride - 1),
         (j, wp - j - stride * (wo - 1) - 1, stride - 1), (0, 0, 0)))
  return (grad[:, padding:hp - padding, padding:wp - padding],)


_cpu_max_pool.defvjp(_cpu_max_pool_fwd, _cpu_max_pool_bwd)


def max_pool(x, window: int = 3, stride: int = 2, padding: int = 1):
  """torch's MaxPool2d(window, stride, padding) of NHWC `x`, as
  `flax.linen.max_pool` computes it (the gradient goes to the first maximum
  of each window, as in torch)."""
  return _reduce_window_max(x, window, stride, padding)


def cpu_max_pool(x, window: int = 3, stride: int = 2, padding: int = 1):
  """`max_pool`, its gradient computed as masked strided adds: JAX's own, a
  variadic reduce-window over index arrays, took XLA's CPU 3x as long as this
  at ResNet-18's pool on 128x128 images, more than any convolution
  (BENCHMARKS.md has the step before and after)."""
  return _cpu_max_pool(x, window, stride, padding)
