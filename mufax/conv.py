"""The 2-D convolution of the ResNet: torch semantics, square kernels.

Padding is symmetric, kernel_size // 2 on every side, as torchvision's
ResNet pads; Flax's 'SAME' pads a strided convolution asymmetrically instead.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')


def conv2d(x, kernel, stride: int):
  """Convolution of NHWC `x` with an HWIO `kernel`, torch padding."""
  pad = kernel.shape[0] // 2
  return lax.conv_general_dilated(x, kernel, (stride, stride),
                                  [(pad, pad), (pad, pad)],
                                  dimension_numbers=DIMENSION_NUMBERS)


class Conv(nn.Module):
  """Bias-free square convolution; parameter `kernel` [k, k, in, out]."""
  features: int
  kernel_size: int
  strides: int = 1
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', self.kernel_init,
                        (self.kernel_size, self.kernel_size, x.shape[-1],
                         self.features))
    return conv2d(x.astype(self.dtype), kernel.astype(self.dtype),
                  self.strides)
