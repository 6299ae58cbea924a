"""ℓ1-sparse unlearning (Jia, Liu, Ram, Yao, Liu, Liu, Sharma & Liu, "Model
Sparsity Can Simplify Machine Unlearning", NeurIPS 2023).

Fine-tuning on retain with an ℓ1 penalty on every parameter whose weight
decays linearly over the epochs: epoch e (from 0) of E minimises

    task loss + alpha * (1 - e / E) * Σ |w|

over all parameters (convolutions, BatchNorm scales and biases, the head;
not the running statistics), as `FT_iter(..., with_l1=True)` of the
reference, github.com/OPTML-Group/Unlearn-Sparse, unlearn/FT.py (`FT_prune`
with `--no-l1-epochs 0`, its default). SGD with momentum, BatchNorm in train
mode, retain batches reshuffled each epoch, short last batches kept. The
step's epoch, and so its weight, comes from the step count (`inputs.step`),
so one compiled step serves every epoch. The row is `l1_sparse`.

Departures: mufax has no weight decay (the reference used 5e-4); the
reference's MultiStepLR milestones (91, 136) never fall within its 10
epochs, so its learning rate was constant, as here. The reference ran on a
dense model here (no pruning mask).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mufax import objectives
from mufax import plans
from mufax import search_spaces
from mufax.unlearning import core
from mufax.unlearning import hparams

_RUN = ('Jia et al. 2023, github.com/OPTML-Group/Unlearn-Sparse, run.py '
        'params["FT_prune"], ResNet-18 CIFAR-10')
_README = ('Jia et al. 2023, github.com/OPTML-Group/Unlearn-Sparse, '
           'README.MD l1-sparse command')
_ARGS = ('Jia et al. 2023, github.com/OPTML-Group/Unlearn-Sparse, '
         'arg_parser.py default')


def l1_norm(params) -> jax.Array:
  """Σ |w| over every parameter element."""
  return sum(jnp.abs(x.astype(jnp.float32)).sum()
             for x in jax.tree.leaves(params))


@dataclasses.dataclass(frozen=True)
class RetainL1Loss:
  """Task loss on the retain batch + weight · Σ|w| of the model's parameters
  (those that train and those held fixed alike). The weight is alpha, the
  member's value 'alpha' (`Inputs.value`), or with `steps_per_epoch` the
  reference's alpha · (1 − e / epochs) in epoch e (from 0)."""
  epochs: int = 1
  steps_per_epoch: int | None = None

  def __call__(self, forward, inputs, prepared):
    del prepared
    task_loss = inputs.task_loss(inputs.logits(forward, 'retain'), 'retain')
    l1 = l1_norm(forward.params)
    weight = alpha = inputs.value('alpha')
    if self.steps_per_epoch:
      epoch = inputs.step // self.steps_per_epoch
      weight = alpha * (1 - epoch / self.epochs)
    return task_loss + weight * l1, {'task_loss': task_loss, 'l1': l1,
                                     'alpha': jnp.asarray(weight, jnp.float32)}


@dataclasses.dataclass(frozen=True)
class L1SparseHparams(hparams.SGDHparams):
  batch_size: int = hparams.hparam(256, source=_ARGS + ' (--batch_size)',
                                minimum=1)
  lr: float = hparams.hparam(
      0.01, source=_README + ' (--unlearn_lr 0.01)', positive=True,
      **search_spaces.LEARNING_RATES)
  epochs: int = hparams.hparam(
      10, source=_README + ' (--unlearn_epochs 10)', minimum=1,
      **search_spaces.EPOCHS)
  # The penalty weight of the first epoch, decayed linearly to alpha / E.
  # ResNet-18's summed |weights| is of order 1e4: a decade either side of
  # the reference's 1e-4 goes from a negligible penalty to a dominant one.
  alpha: float = hparams.hparam(
      1e-4, source=_RUN + ' (--alpha 0.0001)', minimum=0.0,
      search=search_spaces.LogUniform(1e-5, 1e-3),
      search_source='mufax: a decade either side of the reference\'s 1e-4',
      per_member=True)
  momentum: float = hparams.hparam(0.9, source=_ARGS + ' (--momentum)',
                                minimum=0.0, maximum=0.999)


@core.register('l1_sparse')
class L1Sparse(core.SGDMethod):
  Hparams = L1SparseHparams

  def stages(self, ctx):
    hp = self.hparams(ctx)
    plan = plans.passes('retain', ctx.size('retain'), hp.batch_size,
                        epochs=hp.epochs, seed=ctx.seed)
    loss = RetainL1Loss(hp.epochs, len(plan) // hp.epochs)
    return [core.Stage(row='l1_sparse', plan=plans.step_plan('retain', plan),
                       objectives={'retain': objectives.Objective(
                           loss, pads=True)},
                       learning_rate=hp.lr, bn_train=ctx.bn_train(),
                       epochs=hp.epochs, momentum=hp.momentum,
                       values={'alpha': hp.alpha})]
