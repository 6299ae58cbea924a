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
(`Formulations`): native, patches, winograd or dense
(`mufax/conv_formulations.py` computes them).

All compute the same linear maps, up to float rounding. The gradients come
from a `custom_vjp`: reverse-mode derivatives of any order work, forward-mode
(`jax.jvp`, `jax.jacfwd`) does not. Under `jax.vmap` over a model axis (a
population of models), each product runs member by member rather than as
XLA's grouped convolution (see "populations" below). On GPU and TPU, where
XLA's convolutions are fast, none of this runs: the model is built with
`Conv` (native) there, and with `CpuConv` (formulations by
`cpu_formulations`) on CPU (`models.for_platform`), so that traced code
never asks which backend it runs on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mufax import conv_formulations

NATIVE, PATCHES, WINOGRAD, DENSE = 'native', 'patches', 'winograd', 'dense'


class Formulations(NamedTuple):
  """The formulation of each of a convolution's three products."""
  forward: str
  input_grad: str
  kernel_grad: str


ALL_NATIVE = Formulations(NATIVE, NATIVE, NATIVE)


# ---------------------------------------------------- formulations by name


_FORWARD = {NATIVE: conv_formulations.native,
            PATCHES: conv_formulations.patches,
            WINOGRAD: conv_formulations.winograd,
            DENSE: conv_formulations.dense}
_INPUT_GRAD = {
    NATIVE: conv_formulations.transposed_input(conv_formulations.native),
    PATCHES: conv_formulations.transposed_input(conv_formulations.patches),
    WINOGRAD: conv_formulations.winograd_input_grad,
    DENSE: conv_formulations.transposed_input(conv_formulations.dense)}
_KERNEL_GRAD = {
    NATIVE: conv_formulations.transposed_kernel(conv_formulations.native),
    PATCHES: conv_formulations.patches_kernel_grad,
    WINOGRAD: conv_formulations.winograd_kernel_grad,
    DENSE: conv_formulations.transposed_kernel(conv_formulations.dense)}


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


# Small spatial convolutions (multiply-adds per image) run natively: the
# quick start's width-16 ResNet-18 at 32x32, all of whose are under this,
# steps as fast with native convolutions as with the formulations and
# compiles faster, most of all for a population, whose formulations run
# member by member, unrolled (`python -m benchmarks.engine_step
# --convolutions=plan,native`, BENCHMARKS.md §5). Width 64's, where the
# formulations are several times faster (`python -m benchmarks.throughput
# --layers`, §1), are all above it. 1x1 convolutions are matrix products in
# any formulation.
NATIVE_BELOW_MACS = 1_000_000

# On maps of at most 8x8 pixels, a 3x3 stride-1 convolution of moderate size
# runs natively as fast as Winograd or faster (which XLA's CPU hands to
# YNNPACK), while Winograd's tile transforms, a pass over memory each, cost
# as much as its products; on larger maps or more channels (8x8x256,
# 16x16x64) Winograd wins, the kernel gradient first. Measured per layer by
# `python -m benchmarks.throughput --layers` (BENCHMARKS.md §1). So the
# forward and input gradient run natively on such maps below
# NATIVE_SMALL_MAP_MACS, and the kernel gradient too below
# NATIVE_KERNEL_GRAD_MACS.
SMALL_MAP_PIXELS = 64
NATIVE_SMALL_MAP_MACS = 20_000_000
NATIVE_KERNEL_GRAD_MACS = 5_000_000


def cpu_formulations(x_shape, kernel_shape, stride: int) -> Formulations:
  """The fastest formulations on XLA's CPU for this shape (measured; see
  BENCHMARKS.md)."""
  _, h, w, _ = x_shape
  k, _, cin, cout = kernel_shape
  oh = conv_formulations.output_size(h, k, stride)
  ow = conv_formulations.output_size(w, k, stride)
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
    return conv_formulations.native(x, kernel, stride)
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
