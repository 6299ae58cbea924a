"""How each formulation of a convolution computes its three products (the
forward pass, the input gradient and the kernel gradient), with torch's
padding, kernel_size // 2 on every side:

- native: `lax.conv_general_dilated` and its transposes.
- patches: the k*k shifted (strided) views of the padded input, concatenated
  along channels, times the kernel as a [k*k*in, out] matrix; views that lie
  wholly in the padding are left out (on a 1x1 map a 3x3 kernel is one
  matmul).
- winograd: Winograd's F(2x2, 3x3) for stride-1 3x3 kernels: 16 batched
  matrix products on transformed 4x4 tiles, 2.25x fewer multiplications.
- dense: for outputs of at most 2x2 pixels, one matmul per output pixel over
  its receptive field, with no padding multiplied.

All compute the same linear maps, up to float rounding; a product a
formulation has no function of its own for is the transpose of its forward
pass (`transposed_input`, `transposed_kernel`). `mufax/conv.py` names them
and picks one per product and shape.
"""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')


def output_size(size: int, kernel_size: int, stride: int) -> int:
  """torch's output size with padding kernel_size // 2."""
  return (size + 2 * (kernel_size // 2) - kernel_size) // stride + 1


# ------------------------------------------------------------------ native


def native(x, kernel, stride: int):
  pad = kernel.shape[0] // 2
  return lax.conv_general_dilated(x, kernel, (stride, stride),
                                  [(pad, pad), (pad, pad)],
                                  dimension_numbers=DIMENSION_NUMBERS)


# ------------------------------------------------------------ batch chunks
# The matmul formulations build operands larger than their input (a patch
# matrix is k*k/stride^2 times the input, Winograd tiles 4x). For a whole
# batch these overflow the caches and a pass over memory costs more than the
# products, so they run a few images at a time, in a loop. Chunks whose
# operands take ~8 MiB ran fastest here (4 and 16 MiB were slower).
_CHUNK_BYTES = 8 << 20


def _batch_chunk(batch: int, bytes_per_image: int, most: int) -> int:
  """The largest divisor of `batch` up to `most` within `_CHUNK_BYTES`."""
  fits = [n for n in range(1, most + 1)
          if batch % n == 0 and n * bytes_per_image <= _CHUNK_BYTES]
  return max(fits, default=1)


def _map_chunks(fn, chunk: int, *xs):
  """fn over batch chunks of `xs`, outputs concatenated along the batch."""
  b = xs[0].shape[0]
  if chunk == b:
    return fn(*xs)
  split = [x.reshape((b // chunk, chunk) + x.shape[1:]) for x in xs]
  y = lax.map(lambda args: fn(*args), split)
  return y.reshape((b,) + y.shape[2:])


def _sum_chunks(fn, chunk: int, *xs):
  """The sum of fn over batch chunks of `xs`."""
  b = xs[0].shape[0]
  if chunk == b:
    return fn(*xs)
  split = [x.reshape((b // chunk, chunk) + x.shape[1:]) for x in xs]
  zero = jnp.zeros_like(jax.eval_shape(fn, *(s[0] for s in split)))

  def add(total, args):
    return total + fn(*args), None

  return lax.scan(add, zero, split)[0]


# ----------------------------------------------------------------- patches


def _real_offsets(size: int, kernel_size: int, stride: int) -> list[int]:
  """Kernel offsets along one axis that read at least one unpadded pixel."""
  pad = kernel_size // 2
  out = output_size(size, kernel_size, stride)
  return [i for i in range(kernel_size)
          if any(pad <= i + stride * o < pad + size for o in range(out))]


def _taps(x_shape, kernel_size: int, stride: int) -> list[tuple[int, int]]:
  _, h, w, _ = x_shape
  return [(i, j) for i in _real_offsets(h, kernel_size, stride)
          for j in _real_offsets(w, kernel_size, stride)]


def _patch_matrix(x, kernel_size: int, stride: int, taps):
  """[b, ho, wo, len(taps) * c]: the input under each tap, side by side."""
  pad = kernel_size // 2
  b, h, w, c = x.shape
  ho = output_size(h, kernel_size, stride)
  wo = output_size(w, kernel_size, stride)
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  return jnp.concatenate(
      [lax.slice(xp, (0, i, j, 0),
                 (b, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c),
                 (1, stride, stride, 1)) for i, j in taps], axis=-1)


def _patch_chunk(x, kernel_size: int, stride: int, taps) -> int:
  """Images per chunk whose patch matrix fits `_CHUNK_BYTES`."""
  b, h, w, c = x.shape
  patch_bytes = (output_size(h, kernel_size, stride)
                 * output_size(w, kernel_size, stride) * len(taps) * c
                 * x.dtype.itemsize)
  return _batch_chunk(b, patch_bytes, most=b)


def patches(x, kernel, stride: int):
  k = kernel.shape[0]
  taps = _taps(x.shape, k, stride)
  matrix = jnp.concatenate([kernel[i, j] for i, j in taps], axis=0)
  return _map_chunks(lambda x: _patch_matrix(x, k, stride, taps) @ matrix,
                     _patch_chunk(x, k, stride, taps), x)


def patches_kernel_grad(x, g, stride, kernel_shape):
  k = kernel_shape[0]
  taps = _taps(x.shape, k, stride)

  def chunk_grad(x, g):
    return lax.dot_general(_patch_matrix(x, k, stride, taps), g,
                           (((0, 1, 2), (0, 1, 2)), ((), ())),
                           preferred_element_type=jnp.float32)

  grads = _sum_chunks(chunk_grad, _patch_chunk(x, k, stride, taps), x, g)
  rows, cols = np.array(taps).T
  return jnp.zeros(kernel_shape, g.dtype).at[rows, cols].set(
      grads.reshape(len(taps), *kernel_shape[2:]).astype(g.dtype))


# ------------------------------------------------------------------- dense
# On a tiny map, each output pixel is one matmul: the input rectangle its
# receptive field covers (the map clipped, no padding) times the kernel taps
# that reach it, a contiguous block of the kernel. Nothing is multiplied by
# padding: on a 2x2 map a 3x3 kernel's patch matrix is 5/9 zeros, and
# Winograd's 16 small matmuls of one tile each run far below the CPU's speed.


def _receptive_field(size: int, kernel_size: int, stride: int, o: int):
  """(first, stop) input index and first kernel offset of output `o`."""
  pad = kernel_size // 2
  first = max(o * stride - pad, 0)
  stop = min(o * stride - pad + kernel_size, size)
  return first, stop, first + pad - o * stride


def dense(x, kernel, stride: int):
  b, h, w, _ = x.shape
  k = kernel.shape[0]
  ho, wo = output_size(h, k, stride), output_size(w, k, stride)
  outs = []
  for oy in range(ho):
    y0, y1, i = _receptive_field(h, k, stride, oy)
    for ox in range(wo):
      x0, x1, j = _receptive_field(w, k, stride, ox)
      taps = kernel[i:i + y1 - y0, j:j + x1 - x0]
      outs.append(x[:, y0:y1, x0:x1].reshape(b, -1)
                  @ taps.reshape(-1, kernel.shape[-1]))
  return jnp.stack(outs, axis=1).reshape(b, ho, wo, -1)


# ---------------------------------------------------------------- winograd
# F(2x2, 3x3): y = A^T [(G w G^T) * (B^T d B)] A for each 4x4 input tile d
# (stride 2) and 2x2 output tile y. Each transform is applied as adds along
# one axis at a time, which XLA fuses into one pass over memory; a dot with
# the small matrices, or the transposes JAX derives, run 10x slower.


def _input_transform(d0, d1, d2, d3):  # B^T
  return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def _kernel_transform(g0, g1, g2):  # G
  return g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2


def _kernel_transform_t(u0, u1, u2, u3):  # G^T
  return u0 + (u1 + u2) / 2, (u1 - u2) / 2, (u1 + u2) / 2 + u3


def _output_transform(m0, m1, m2, m3):  # A^T
  return m0 + m1 + m2, m1 - m2 - m3


def _output_transform_t(y0, y1):  # A
  return y0, y0 + y1, y0 - y1, -y1


def _along(transform, x, axis: int):
  """`transform` of the slices of `x` along `axis`, stacked on a new axis 0."""
  parts = (lax.index_in_dim(x, i, axis, keepdims=False)
           for i in range(x.shape[axis]))
  return jnp.stack(transform(*parts))


def _tiles_along(x, axis: int):
  """The 4 elements of each stride-2 window of `axis` (length 2n + 2).

  Read as two overlapping halves of a pairs reshape: XLA fuses these far
  better than strided slices.
  """
  n = x.shape[axis] // 2 - 1
  pairs = x.reshape(x.shape[:axis] + (n + 1, 2) + x.shape[axis + 1:])
  halves = (lax.slice_in_dim(pairs, 0, n, axis=axis),
            lax.slice_in_dim(pairs, 1, n + 1, axis=axis))
  return [lax.index_in_dim(half, parity, axis + 1, keepdims=False)
          for half in halves for parity in (0, 1)]


def _winograd_tiles(x):
  """B^T d B of every tile: [16, b * nh * nw, c] for NHWC `x`."""
  b, h, w, c = x.shape
  nh, nw = -(-h // 2), -(-w // 2)
  # One pixel of padding, and one more where the size is odd.
  xp = jnp.pad(x, ((0, 0), (1, 1 + 2 * nh - h), (1, 1 + 2 * nw - w), (0, 0)))
  cols = jnp.stack(_input_transform(*_tiles_along(xp, 2)))
  v = jnp.stack(_input_transform(*_tiles_along(cols, 2)))  # [4, 4, b, ...]
  return v.reshape(16, b * nh * nw, c)


def _winograd_untile(m, shape):
  """A^T m A of every tile, as NHWC of `shape` (b, h, w, out)."""
  b, h, w, out = shape
  nh, nw = -(-h // 2), -(-w // 2)
  m = m.reshape(4, 4, b, nh, nw, out)
  y = _along(_output_transform, _along(_output_transform, m, 0), 1)
  # [s, r, b, nh, nw, out] -> [b, nh, r, nw, s, out]: out stays innermost.
  y = y.transpose(2, 3, 1, 4, 0, 5).reshape(b, 2 * nh, 2 * nw, out)
  return y[:, :h, :w]


def _winograd_untile_t(g):
  """The transpose of `_winograd_untile`: [16, b * nh * nw, out]."""
  b, h, w, out = g.shape
  nh, nw = -(-h // 2), -(-w // 2)
  g = jnp.pad(g, ((0, 0), (0, 2 * nh - h), (0, 2 * nw - w), (0, 0)))
  g = g.reshape(b, nh, 2, nw, 2, out)
  cols = _along(_output_transform_t, g, 4)       # [4, b, nh, 2, nw, out]
  m = _along(_output_transform_t, cols, 3)       # [4, 4, b, nh, nw, out]
  return m.reshape(16, b * nh * nw, out)


def _winograd_kernel(kernel):
  """G w G^T: [16, in, out]."""
  u = _along(_kernel_transform, _along(_kernel_transform, kernel, 1), 1)
  return u.reshape(16, *kernel.shape[2:])


def _batched_matmul(a, b, contract: tuple[int, int], dtype=None):
  return lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((0,), (0,))),
                         preferred_element_type=dtype)


def _tile_bytes(x_shape, channels: int, itemsize: int) -> int:
  """Bytes of one image's transformed tiles with `channels` channels."""
  _, h, w, _ = x_shape
  return 16 * -(-h // 2) * -(-w // 2) * channels * itemsize


def _winograd_conv(x, u, out: int, transpose_u: bool):
  """The F(2x2, 3x3) convolution of `x` with transformed kernel `u`.

  With `transpose_u`, u [16, out, in] is contracted along its last axis.
  """

  def chunk_conv(x):
    m = _batched_matmul(_winograd_tiles(x), u, (2, 2 if transpose_u else 1))
    return _winograd_untile(m, x.shape[:3] + (out,))

  b = x.shape[0]
  chunk = _batch_chunk(b, _tile_bytes(x.shape, x.shape[-1], x.dtype.itemsize),
                       most=max(b // 2, 1))
  return _map_chunks(chunk_conv, chunk, x)


def winograd(x, kernel, stride: int):
  del stride  # 1
  return _winograd_conv(x, _winograd_kernel(kernel), kernel.shape[-1],
                        transpose_u=False)


def winograd_input_grad(g, kernel, stride, x_shape):
  del stride, x_shape  # 1, that of g
  # Stride 1, symmetric padding: the transpose is the convolution with the
  # kernel flipped in space and its channel axes swapped.
  u = _winograd_kernel(jnp.flip(kernel, (0, 1)))
  return _winograd_conv(g, u, kernel.shape[2], transpose_u=True)


def winograd_kernel_grad(x, g, stride, kernel_shape):
  del stride, kernel_shape  # 1, [3, 3, in, out]

  def chunk_grad(x, g):
    return _batched_matmul(_winograd_tiles(x), _winograd_untile_t(g), (1, 1),
                           jnp.float32)

  b, c, out = x.shape[0], x.shape[-1], g.shape[-1]
  chunk = _batch_chunk(b, _tile_bytes(x.shape, c + out, x.dtype.itemsize),
                       most=b)
  # Each chunk adds to the [16, in, out] float32 sum: not worth it where that
  # is big.
  if 16 * c * out * x.dtype.itemsize > _CHUNK_BYTES // 2:
    chunk = b
  du = _sum_chunks(chunk_grad, chunk, x, g)  # [16, in, out]
  du = du.reshape(4, 4, *du.shape[1:])
  return _along(_kernel_transform_t,
                jnp.moveaxis(_along(_kernel_transform_t, du, 1), 0, 1),
                0).astype(g.dtype)


# ----------------------------------------------------------- transposition


def transposed_input(forward):
  """The input gradient of a formulation, by JAX's transposition."""

  def input_grad(g, kernel, stride, x_shape):
    x = jax.ShapeDtypeStruct(x_shape, g.dtype)
    return jax.linear_transpose(lambda x: forward(x, kernel, stride), x)(g)[0]

  return input_grad


def transposed_kernel(forward):
  """The kernel gradient of a formulation, by JAX's transposition."""

  def kernel_grad(x, g, stride, kernel_shape):
    kernel = jax.ShapeDtypeStruct(kernel_shape, g.dtype)
    return jax.linear_transpose(lambda k: forward(x, k, stride), kernel)(g)[0]

  return kernel_grad
