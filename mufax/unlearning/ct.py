"""Convolution Transpose (CT): transpose every convolution kernel's spatial
axes, then fine-tune on retain.

The NeurIPS 2023 Machine Unlearning challenge's 5th-placed Kaggle entry, as
DeepUnlearn re-implemented it (Cadet, Gayet et al., "Deep Unlearn:
Benchmarking Machine Unlearning for Image Classification", arXiv 2410.01276,
2024; github.com/xcadet/deepunlearn, munl/unlearning/kgltop5.py, `KGLTop5`,
'CT' in munl/settings.py). As the reference: every convolution's weight (the
stem's, the blocks' and the shortcuts') is swapped on its two spatial axes
(`rotate_weight`: torch's [out, in, H, W] `.swapaxes(2, 3)`; Flax's
[H, W, in, out] becomes [W, H, in, out]), then SGD with momentum on retain
in train mode, the learning rate following `CosineAnnealingLR(T_max=epochs)`
stepped per epoch (lr x [1, 0.75, 0.25] for 3 epochs). The forget set is
not used. The retain batches are the images as stored, without the training
transforms (`Stage.augment`), as the reference's `KGLTop5` reads
DeepUnlearn's un-augmented `default_loaders` (test-time transforms;
munl/settings.py).

Where mufax departs from the reference: no weight decay (it used 5e-4); each
epoch is a stage of its own, at its learning rate, so the momentum buffer
restarts at each epoch; the task loss is the task's (sigmoid cross-entropy on
multi-label MUCAC; the reference knew only softmax).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from mufax import plans
from mufax import search_spaces
from mufax.unlearning import core
from mufax.unlearning import hparams
from mufax.unlearning import finetune

_SOURCE = ('Cadet, Gayet et al. 2024 (DeepUnlearn), github.com/xcadet/'
           'deepunlearn, munl/unlearning/kgltop5.py')


def transpose_kernels(variables, measurements=None, rngs=None, values=None):
  """`edit`: a population's variables ([members, H, W, in, out] kernels)
  with every convolution kernel's H and W swapped; the rest as given."""
  del measurements, rngs, values

  def swap(path, x):
    if getattr(path[-1], 'key', None) == 'kernel' and np.ndim(x) == 5:
      return jnp.swapaxes(x, 1, 2)
    return x

  return {**variables, 'params': jax.tree_util.tree_map_with_path(
      swap, variables['params'])}


def cosine_annealing(lr: float, epochs: int) -> list[float]:
  """`CosineAnnealingLR(T_max=epochs)` (eta_min 0) stepped after each epoch:
  epoch e runs at lr (1 + cos(pi e / epochs)) / 2."""
  return [lr * (1 + math.cos(math.pi * e / epochs)) / 2
          for e in range(epochs)]


@dataclasses.dataclass(frozen=True)
class CTHparams(hparams.SGDHparams):
  batch_size: int = hparams.hparam(
      64, source=_SOURCE + ', KGLTop5.ORIGINAL_BATCH_SIZE', minimum=1)
  lr: float = hparams.hparam(
      0.001, source=_SOURCE + ', KGLTop5.ORIGINAL_LR', positive=True,
      **search_spaces.LEARNING_RATES)
  epochs: int = hparams.hparam(
      3, source=_SOURCE + ', KGLTop5.ORIGINAL_NUM_EPOCHS', minimum=1,
      **search_spaces.EPOCHS)
  momentum: float = hparams.hparam(
      0.9, source=_SOURCE + ', KGLTop5.ORIGINAL_MOMENTUM', minimum=0.0,
      maximum=1.0)


@core.register('ct')
class CT(core.SGDMethod):
  Hparams = CTHparams

  def stages(self, ctx):
    hp = self.hparams(ctx)
    stages = []
    for epoch, lr in enumerate(cosine_annealing(hp.lr, hp.epochs)):
      stages.append(core.Stage(
          row='ct' if epoch == hp.epochs - 1 else None,
          name=f'ct epoch {epoch + 1}/{hp.epochs}',
          plan=plans.step_plan('retain', plans.passes(
              'retain', ctx.size('retain'), hp.batch_size, epochs=1,
              seed=ctx.seed, first_epoch=epoch)),
          objectives={'retain': finetune.RETAIN_LOSS}, learning_rate=lr,
          bn_train=ctx.bn_train(), epochs=1, momentum=hp.momentum,
          edit=transpose_kernels if epoch == 0 else None, augment=False))
    return stages
