"""ResNet-18 exactly as torchvision builds it (protocol §3), in Flax Linen, NHWC.

Module names follow torchvision's `state_dict` keys with `.` written as `_`
(`layer1_0/downsample_0/kernel` is `layer1.0.downsample.0.weight`), so that
reference checkpoints convert one-to-one; see `from_torch_state_dict`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mufax import conv as conv_lib
from mufax import pooling

ModuleDef = Any
# PyTorch's BatchNorm2d defaults: momentum 0.1 (0.9 as Flax counts it), eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# torchvision initialisation: kaiming_normal_(mode='fan_out') for convolutions,
# nn.Linear's default U(±1/sqrt(fan_in)) for the head.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
dense_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


def dense_bias_init(fan_in: int):
  bound = 1 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound)


class BatchNorm(nn.Module):
  """torch.nn.BatchNorm2d: batch statistics in training, running ones in eval.

  Unlike `flax.linen.BatchNorm`, the running variance is updated with the
  unbiased batch variance, as PyTorch does, so that running statistics of the
  two frameworks agree. Statistics are taken in float32 whatever the input
  dtype, over the images where `mask` [batch] is True (all if None). Under a
  data-sharded jit the mean over the batch axis is global.
  """
  use_running_average: bool
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPSILON

  @nn.compact
  def __call__(self, x, mask=None):
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,))
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,))
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      x32 = x.astype(jnp.float32)
      n = np.prod([x.shape[a] for a in axes])
      if mask is None:
        mean = jnp.mean(x32, axes)
        mean_square = jnp.mean(jnp.square(x32), axes)
        unbiased = n / max(n - 1, 1)
      else:
        weight = mask.astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
        n = weight.sum() * (n // x.shape[0])
        mean = (x32 * weight).sum(axes) / n
        mean_square = (jnp.square(x32) * weight).sum(axes) / n
        unbiased = n / jnp.maximum(n - 1, 1)
      var = jnp.maximum(mean_square - jnp.square(mean), 0)
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1 - m) * mean
        ra_var.value = m * ra_var.value + (1 - m) * var * unbiased
    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    return (x * mul.astype(x.dtype) + (bias - mean * mul).astype(x.dtype))


class BasicBlock(nn.Module):
  """torchvision's BasicBlock: two 3x3 convolutions and a shortcut."""
  filters: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x, mask=None):
    y = self.conv(self.filters, 3, self.strides, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y, mask))
    y = self.conv(self.filters, 3, 1, name='conv2')(y)
    y = self.norm(name='bn2')(y, mask)
    if self.strides != 1 or x.shape[-1] != self.filters:
      x = self.conv(self.filters, 1, self.strides, name='downsample_0')(x)
      x = self.norm(name='downsample_1')(x, mask)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """torchvision's ResNet with BasicBlocks; `num_outputs` logits.

  Input: float images in [0, 1], NHWC (protocol §2.3: no normalisation).
  `dtype` is the compute dtype (e.g. bfloat16 for mixed precision); parameters,
  BatchNorm statistics and the returned logits stay float32. In training,
  `mask` [batch] marks the real images of a padded batch: BatchNorm takes its
  statistics over them alone. `conv` (a module class) and `pool` (torch's
  max pool as a function) are the formulations for the platform the model
  runs on (`for_platform`); None: XLA's native ones.
  """
  stage_sizes: Sequence[int]
  num_outputs: int
  num_filters: int = 64
  dtype: Any = jnp.float32
  conv: Callable[..., nn.Module] | None = None
  pool: Callable[..., jax.Array] | None = None

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    conv = functools.partial(self.conv or conv_lib.Conv, dtype=self.dtype,
                             kernel_init=conv_init)
    pool = self.pool or pooling.max_pool
    norm = functools.partial(BatchNorm, use_running_average=not train)
    x = x.astype(self.dtype)
    x = conv(self.num_filters, 7, 2, name='conv1')(x)
    x = nn.relu(norm(name='bn1')(x, mask))
    x = pool(x, window=3, stride=2, padding=1)
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        block = BasicBlock(self.num_filters * 2**i,
                           strides=2 if i > 0 and j == 0 else 1,
                           conv=conv, norm=norm, name=f'layer{i + 1}_{j}')
        x = block(x, mask)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return nn.Dense(self.num_outputs, kernel_init=dense_init,
                    bias_init=dense_bias_init(x.shape[-1]), name='fc')(x)


def for_platform(model: ResNet, platform: str) -> ResNet:
  """`model` with the convolution and max pool that run fastest on
  `platform` ('cpu', 'gpu', 'tpu'), where the model left them open."""
  cpu = platform == 'cpu'
  return model.clone(
      conv=model.conv or (conv_lib.CpuConv if cpu else conv_lib.Conv),
      pool=model.pool or (pooling.cpu_max_pool if cpu
                          else pooling.max_pool))


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2))
# Same structure and names at a width and depth that compile and run in a
# moment; for tests.
ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), num_filters=4)


# Units a ResNet's parameters fall into, input to output; CF-k trains the
# last k of them.
PARAM_GROUPS = ('stem', 'layer1', 'layer2', 'layer3', 'layer4', 'fc')


def param_group(name: str) -> str:
  """'layer3_1' -> 'layer3'; the stem's conv1/bn1 -> 'stem'."""
  if name in ('conv1', 'bn1'):
    return 'stem'
  return name.split('_')[0]


def init_variables(model: nn.Module, rng: jax.Array, image_size: int):
  """{'params', 'batch_stats'} of a freshly initialised model."""
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  return dict(model.init(rng, x, train=False))


# ------------------------------------------------ torchvision state_dicts
# A flax leaf (collection, last path element) <-> a torch key suffix.
_LEAVES = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
           ('params', 'bias'): 'bias', ('batch_stats', 'mean'): 'running_mean',
           ('batch_stats', 'var'): 'running_var'}
_TORCH_ONLY = 'num_batches_tracked'
# The reference's multi-label model wraps its Linear in a module named `fc`.
HEAD_PREFIXES = ('fc', 'fc.fc')


def _torch_module(path: Sequence[str]) -> str:
  return '.'.join(p.replace('_', '.') for p in path)


def _to_torch_layout(kind: str, value: np.ndarray) -> np.ndarray:
  if kind == 'kernel' and value.ndim == 4:  # HWIO -> OIHW
    return value.transpose(3, 2, 0, 1)
  if kind == 'kernel':  # Dense [in, out] -> Linear [out, in]
    return value.T
  return value


def _from_torch_layout(kind: str, value: np.ndarray) -> np.ndarray:
  if kind == 'kernel' and value.ndim == 4:  # OIHW -> HWIO
    return value.transpose(2, 3, 1, 0)
  if kind == 'kernel':
    return value.T
  return value


def to_torch_state_dict(variables: Mapping[str, Any], *,
                        head_prefix: str = 'fc') -> dict[str, np.ndarray]:
  """torchvision `state_dict` (numpy arrays) of Flax `variables`.

  `head_prefix='fc.fc'` names the head as the reference's multi-label model.
  """
  if head_prefix not in HEAD_PREFIXES:
    raise ValueError(f'head_prefix must be one of {HEAD_PREFIXES}, '
                     f'got {head_prefix!r}')
  out = {}
  for collection in ('params', 'batch_stats'):
    flat = jax.tree_util.tree_flatten_with_path(variables[collection])[0]
    for key_path, value in flat:
      path = [k.key for k in key_path]
      module = _torch_module(path[:-1])
      if module == 'fc':
        module = head_prefix
      value = np.asarray(value)
      out[f'{module}.{_LEAVES[collection, path[-1]]}'] = _to_torch_layout(
          path[-1], value)
      if collection == 'batch_stats' and path[-1] == 'mean':
        out[f'{module}.{_TORCH_ONLY}'] = np.zeros((), np.int64)
  return out


def from_torch_state_dict(state_dict: Mapping[str, Any],
                          template: Mapping[str, Any]) -> dict[str, Any]:
  """Flax variables shaped like `template` from a torchvision `state_dict`.

  `template` is the model's variables (or `jax.eval_shape` of them): it fixes
  which keys must be present. Values may be numpy arrays or torch tensors.
  Raises ValueError naming any missing, unexpected or mis-shaped key.
  """
  given = {}
  for key, value in state_dict.items():
    if key.endswith(_TORCH_ONLY):
      continue
    if key.startswith('module.'):  # saved from DataParallel
      key = key[len('module.'):]
    if key.startswith('fc.fc.'):
      key = key[len('fc.'):]
    if hasattr(value, 'detach'):
      value = value.detach().cpu().numpy()
    given[key] = np.asarray(value)
  used = set()
  out = {}
  for collection in ('params', 'batch_stats'):
    flat, treedef = jax.tree_util.tree_flatten_with_path(template[collection])
    leaves = []
    for key_path, like in flat:
      path = [k.key for k in key_path]
      key = f'{_torch_module(path[:-1])}.{_LEAVES[collection, path[-1]]}'
      if key not in given:
        raise ValueError(f'state_dict has no {key!r} (needed for '
                         f'{collection}/{"/".join(path)})')
      value = _from_torch_layout(path[-1], given[key])
      if value.shape != tuple(like.shape):
        raise ValueError(f'state_dict[{key!r}] has shape {given[key].shape}; '
                         f'the model needs {tuple(like.shape)} in Flax layout '
                         f'(is num_outputs right?)')
      leaves.append(jnp.asarray(value, dtype=like.dtype))
      used.add(key)
    out[collection] = jax.tree_util.tree_unflatten(treedef, leaves)
  unexpected = sorted(set(given) - used)
  if unexpected:
    raise ValueError(f'state_dict has keys the model lacks: {unexpected[:5]}'
                     f'{" ..." if len(unexpected) > 5 else ""}')
  return out
