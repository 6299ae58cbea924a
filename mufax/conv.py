"""The 2-D convolution of the ResNet: torch semantics, square kernels.

Padding is symmetric, kernel_size // 2 on every side, as torchvision's
ResNet pads; Flax's 'SAME' pads a strided convolution asymmetrically instead.

XLA's CPU convolution is fast for some shapes and very slow for others: a 3x3
convolution on a 2x2 map runs 50-100x slower than the same products as one
matrix multiplication, the input gradient of a strided 3x3 on a 4x4 map 30x,
and even where it is not pathological a 3x3 convolution reaches half of what
the CPU's matrix multiplication does (BENCHMARKS.md has the figures). So on
CPU the forward pass, the input gradient and the kernel gradient of each
convolution are each computed by a formulation picked for its static shape
(`Formulations`):

- native: `lax.conv_general_dilated` and its transposes.
- patches: the k*k shifted (strided) views of the padded input, concatenated
  along channels, times the kernel as a [k*k*in, out] matrix; views that lie
  wholly in the padding are left out (on a 1x1 map a 3x3 kernel is one
  matmul).
- winograd: Winograd's F(2x2, 3x3) for stride-1 3x3 kernels: 16 batched
  matrix products on transformed 4x4 tiles, 2.25x fewer multiplications.
- dense: for outputs of at most 2x2 pixels, one matmul per output pixel over
  its receptive field, with no padding multiplied.

All compute the same linear maps, up to float rounding. The gradients come
from a `custom_vjp`: reverse-mode derivatives of any order work, forward-mode
(`jax.jvp`, `jax.jacfwd`) does not. Under `jax.vmap` over a model axis (a
population of models), each product runs member by member rather than as
XLA's grouped convolution (see "populations" below). On GPU and TPU, where
XLA's convolutions are fast, none of this runs: the model is built with
`Conv` (native) and `max_pool` there, and with `CpuConv` (formulations by
`cpu_formulations`) and `cpu_max_pool` on CPU (`models.for_platform`), so
that traced code never asks which backend it runs on.

`cpu_max_pool` is torch's max pool with a gradient that XLA's CPU runs fast.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')
NATIVE, PATCHES, WINOGRAD, DENSE = 'native', 'patches', 'winograd', 'dense'


class Formulations(NamedTuple):
  """The formulation of each of a convolution's three products."""
  forward: str
  input_grad: str
  kernel_grad: str


ALL_NATIVE = Formulations(NATIVE, NATIVE, NATIVE)


def output_size(size: int, kernel_size: int, stride: int) -> int:
  """torch's output size with padding kernel_size // 2."""
  return (size + 2 * (kernel_size // 2) - kernel_size) // stride + 1


# ------------------------------------------------------------------ native


def _native(x, kernel, stride: int):
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


def _patches(x, kernel, stride: int):
  k = kernel.shape[0]
  taps = _taps(x.shape, k, stride)
  matrix = jnp.concatenate([kernel[i, j] for i, j in taps], axis=0)
  return _map_chunks(lambda x: _patch_matrix(x, k, stride, taps) @ matrix,
                     _patch_chunk(x, k, stride, taps), x)


def _patches_kernel_grad(x, g, stride, kernel_shape):
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


def _dense(x, kernel, stride: int):
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


def _winograd(x, kernel, stride: int):
  del stride  # 1
  return _winograd_conv(x, _winograd_kernel(kernel), kernel.shape[-1],
                        transpose_u=False)


def _winograd_input_grad(g, kernel, stride, x_shape):
  del stride, x_shape  # 1, that of g
  # Stride 1, symmetric padding: the transpose is the convolution with the
  # kernel flipped in space and its channel axes swapped.
  u = _winograd_kernel(jnp.flip(kernel, (0, 1)))
  return _winograd_conv(g, u, kernel.shape[2], transpose_u=True)


def _winograd_kernel_grad(x, g, stride, kernel_shape):
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


# ---------------------------------------------------------- formulated conv


def _transposed_input(forward):
  """The input gradient of a formulation, by JAX's transposition."""

  def input_grad(g, kernel, stride, x_shape):
    x = jax.ShapeDtypeStruct(x_shape, g.dtype)
    return jax.linear_transpose(lambda x: forward(x, kernel, stride), x)(g)[0]

  return input_grad


def _transposed_kernel(forward):
  """The kernel gradient of a formulation, by JAX's transposition."""

  def kernel_grad(x, g, stride, kernel_shape):
    kernel = jax.ShapeDtypeStruct(kernel_shape, g.dtype)
    return jax.linear_transpose(lambda k: forward(x, k, stride), kernel)(g)[0]

  return kernel_grad


_FORWARD = {NATIVE: _native, PATCHES: _patches, WINOGRAD: _winograd,
            DENSE: _dense}
_INPUT_GRAD = {NATIVE: _transposed_input(_native),
               PATCHES: _transposed_input(_patches),
               WINOGRAD: _winograd_input_grad,
               DENSE: _transposed_input(_dense)}
_KERNEL_GRAD = {NATIVE: _transposed_kernel(_native),
                PATCHES: _patches_kernel_grad,
                WINOGRAD: _winograd_kernel_grad,
                DENSE: _transposed_kernel(_dense)}


# ------------------------------------------------------------- populations
# A population of models trains as one program: the single-model step is
# `jax.vmap`ped over a leading model axis of parameters and batches. vmap
# turns a native convolution whose kernel has that axis into a grouped
# convolution, which XLA's CPU ran 6-10x slower than the members' convolutions
# one after another (the stem of 8 members at 32x32), and the matmul
# formulations into batched matmuls over operands N times the size their
# batch chunks were tuned for. So, batched over members, every product runs a
# member at a time (`custom_vmap`), each exactly as in a single model, while
# the rest of the step (normalisation, activations, the optimizer) batches.
# custom_vmap has no transpose rule, so each product is also a custom_vjp
# whose cotangents are the other two products: the three are bilinear and
# transposes of one another, and derivatives of any order still work.


def _product(formulation: str, product: str, a, b, stride: int, x_shape,
             kernel_shape):
  if product == 'forward':  # a: input, b: kernel
    return _FORWARD[formulation](a, b, stride)
  if product == 'input_grad':  # a: output cotangent, b: kernel
    return _INPUT_GRAD[formulation](a, b, stride, x_shape)
  return _KERNEL_GRAD[formulation](a, b, stride, kernel_shape)  # input, g


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 4, 5, 6))
def _member_product(formulation, product, a, b, stride, x_shape,
                    kernel_shape):

  @jax.custom_batching.custom_vmap
  def call(a, b):
    return _product(formulation, product, a, b, stride, x_shape, kernel_shape)

  # Unrolled: in a loop (`lax.map`) XLA's CPU ran the stem's native
  # convolutions 5x slower than outside one.
  @call.def_vmap
  def member_by_member(axis_size, in_batched, a, b):
    return jnp.stack([
        call(*[arg[m] if batched else arg
               for arg, batched in zip((a, b), in_batched)])
        for m in range(axis_size)]), True

  return call(a, b)


def _member_product_fwd(formulation, product, a, b, stride, x_shape,
                        kernel_shape):
  return _member_product(formulation, product, a, b, stride, x_shape,
                         kernel_shape), (a, b)


def _member_product_bwd(formulation, product, stride, x_shape, kernel_shape,
                        residuals, ct):
  a, b = residuals

  def other(product, a, b):
    return _member_product(formulation, product, a, b, stride, x_shape,
                           kernel_shape)

  if product == 'forward':
    return other('input_grad', ct, b), other('kernel_grad', a, ct)
  if product == 'input_grad':
    return other('forward', ct, b), other('kernel_grad', ct, a)
  return other('input_grad', b, ct), other('forward', a, ct)


_member_product.defvjp(_member_product_fwd, _member_product_bwd)


def _products(formulation: str):
  """(forward, input_grad, kernel_grad) of a formulation, as used."""

  def forward(x, kernel, stride):
    return _member_product(formulation, 'forward', x, kernel, stride,
                           x.shape, kernel.shape)

  def input_grad(g, kernel, stride, x_shape):
    return _member_product(formulation, 'input_grad', g, kernel, stride,
                           tuple(x_shape), kernel.shape)

  def kernel_grad(x, g, stride, kernel_shape):
    return _member_product(formulation, 'kernel_grad', x, g, stride, x.shape,
                           tuple(kernel_shape))

  return forward, input_grad, kernel_grad


FORWARD, INPUT_GRAD, KERNEL_GRAD = (
    dict(zip(_FORWARD, products))
    for products in zip(*(_products(f) for f in _FORWARD)))


# Small spatial convolutions (multiply-adds per image) run natively: for the
# quick start's width-16 ResNet-18 at 32x32, all of whose are under this, the
# native step was as fast as the formulations' (114 vs 141 ms at batch 64)
# and compiled in 60% of the time (5x less for a population of 8, whose
# formulations run member by member, unrolled). Width 64's, where the
# formulations run 2.6x (32x32) to 6.8x (64x64) faster, are all above it.
# 1x1 convolutions are matrix products in any formulation.
NATIVE_BELOW_MACS = 1_000_000

# On maps of at most 8x8 pixels, a 3x3 stride-1 convolution of moderate size
# runs natively as fast as Winograd or faster (which XLA's CPU hands to
# YNNPACK), while Winograd's tile transforms, a pass over memory each, cost
# as much as its products. Measured per layer in one run (ms at batch 64,
# native vs Winograd, forward / input gradient / kernel gradient):
# 8x8x128: 4.8/5.2/6.9 vs 6.4/6.1/5.6; 4x4x256: 4.9/5.9/6.5 vs 7.1/6.0/4.6;
# 4x4x128: 2.3/1.8/1.9 vs 1.8/2.2/3.4; but 8x8x256: 19.1/20.3/24.8 vs
# 13.7/14.7/16.9 and 16x16x64: 9.3/9.4/34.9 vs 6.5/6.1/10.3. So the forward
# and input gradient run natively on such maps below NATIVE_SMALL_MAP_MACS,
# and the kernel gradient too below NATIVE_KERNEL_GRAD_MACS.
SMALL_MAP_PIXELS = 64
NATIVE_SMALL_MAP_MACS = 20_000_000
NATIVE_KERNEL_GRAD_MACS = 5_000_000


def cpu_formulations(x_shape, kernel_shape, stride: int) -> Formulations:
  """The fastest formulations on XLA's CPU for this shape (measured; see
  BENCHMARKS.md)."""
  _, h, w, _ = x_shape
  k, _, cin, cout = kernel_shape
  oh, ow = output_size(h, k, stride), output_size(w, k, stride)
  macs = oh * ow * k * k * cin * cout
  if k > 1 and macs < NATIVE_BELOW_MACS:
    return ALL_NATIVE
  if k > 1 and oh * ow <= 4:
    return Formulations(DENSE, DENSE, DENSE)
  if (k, stride) == (3, 1):
    if oh * ow <= SMALL_MAP_PIXELS and macs < NATIVE_SMALL_MAP_MACS:
      return Formulations(NATIVE, NATIVE,
                          NATIVE if macs < NATIVE_KERNEL_GRAD_MACS
                          else WINOGRAD)
    return Formulations(WINOGRAD, WINOGRAD, WINOGRAD)
  if k == 7:
    # The stem's 3-channel taps make a patch matrix XLA builds slowly; its
    # native forward is as fast, and so is its kernel gradient up to 32x32
    # images, but from 64x64 on that takes 10x the patches'.
    return Formulations(NATIVE, PATCHES,
                        NATIVE if h * w <= 32 * 32 else PATCHES)
  return Formulations(PATCHES, PATCHES, PATCHES)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _formulated_conv(x, kernel, stride: int, formulations: Formulations):
  return FORWARD[formulations.forward](x, kernel, stride)


def _formulated_conv_fwd(x, kernel, stride, formulations):
  return _formulated_conv(x, kernel, stride, formulations), (x, kernel)


def _formulated_conv_bwd(stride, formulations, residuals, g):
  x, kernel = residuals
  return (INPUT_GRAD[formulations.input_grad](g, kernel, stride, x.shape),
          KERNEL_GRAD[formulations.kernel_grad](x, g, stride, kernel.shape))


_formulated_conv.defvjp(_formulated_conv_fwd, _formulated_conv_bwd)


# Compiled as a whole even when called outside jit: op by op, every small
# primitive of a formulation would be compiled on its own, taking seconds.
_jitted_formulated_conv = jax.jit(_formulated_conv, static_argnums=(2, 3))


def conv2d(x, kernel, stride: int, formulations: Formulations = ALL_NATIVE):
  """Convolution of NHWC `x` with an HWIO `kernel`, torch padding, each
  product by the formulation `formulations` names."""
  if formulations == ALL_NATIVE:
    return _native(x, kernel, stride)
  return _jitted_formulated_conv(x, kernel, stride, formulations)


class Conv(nn.Module):
  """Bias-free square convolution; parameter `kernel` [k, k, in, out].

  `formulations(x_shape, kernel_shape, stride)` gives the `Formulations` of
  its three products; None: XLA's native convolution.
  """
  features: int
  kernel_size: int
  strides: int = 1
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  formulations: Callable[..., Formulations] | None = None

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', self.kernel_init,
                        (self.kernel_size, self.kernel_size, x.shape[-1],
                         self.features))
    # Initialisation needs only shapes; the native convolution gets them
    # without compiling a formulation.
    chosen = (ALL_NATIVE if self.formulations is None or self.is_initializing()
              else self.formulations(x.shape, kernel.shape, self.strides))
    return conv2d(x.astype(self.dtype), kernel.astype(self.dtype),
                  self.strides, chosen)


# XLA's CPU backend: each product by the formulation `cpu_formulations`
# measured fastest for its shape.
CpuConv = functools.partial(Conv, formulations=cpu_formulations)


# ------------------------------------------------------------- max pooling


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
