"""Random labels (RL), the relabelling baseline of SalUn (Fan, Liu, Zhang,
Wong, Wei & Liu, ICLR 2024) and of Jia et al. (NeurIPS 2023).

Reference: github.com/OPTML-Group/Unlearn-Saliency, Classification/unlearn/
RL.py without a mask, its CIFAR-10 branch: each epoch a pass over forget,
every image trained on with a random label, then a pass over retain with the
true labels; SGD with momentum, BatchNorm in train mode, short last batches
kept. The row is `random_labels`.

Random labels: the paper relabels each forget image with a label other than
its own, drawn afresh for every batch (`random_other_labels`, from the
step's `inputs.rng`); the reference's code draws from all classes, the true
one included. On multi-label MUCAC a random label is an attribute vector
other than the true one, drawn uniformly.

Departures: mufax has no weight decay (the reference used 5e-4); the
reference's MultiStepLR milestones (91, 136) never fall within its 10
epochs, so its learning rate was constant, as here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mufax import engine
from mufax.unlearning import core
from mufax.unlearning import finetune
from mufax.unlearning import loops

_ARGS = ('Fan et al. 2024 (SalUn), github.com/OPTML-Group/Unlearn-Saliency, '
         'Classification/arg_parser.py default')
_RUN = ('Jia et al. 2023, github.com/OPTML-Group/Unlearn-Sparse, run.py '
        '(commit ffdb6ed) params["RL"], ResNet-18 CIFAR-10')


def random_other_labels(rng: jax.Array, labels: jax.Array, num_outputs: int,
                        loss_kind: str) -> jax.Array:
  """A random label different from each true one, drawn uniformly.

  softmax: `labels` int [B]; each becomes one of the other `num_outputs - 1`
  classes, uniformly (true + U{1..K-1} mod K).
  sigmoid: `labels` 0/1 [B, A] (A = `num_outputs` attributes); each row
  becomes one of the other 2**A - 1 attribute vectors, uniformly (the true
  vector XOR a flip pattern drawn uniformly from the non-zero A-bit
  patterns), so at least one attribute differs and any subset may flip.
  Returns the same shape and dtype as `labels`; works under jit.
  """
  labels = jnp.asarray(labels)
  if loss_kind == 'softmax':
    if num_outputs < 2:
      raise ValueError('Random other labels need at least 2 classes.')
    shift = jax.random.randint(rng, labels.shape, 1, num_outputs,
                               dtype=jnp.int32)
    return ((labels.astype(jnp.int32) + shift) % num_outputs).astype(
        labels.dtype)
  if loss_kind == 'sigmoid':
    attributes = labels.shape[-1]
    if attributes != num_outputs:
      raise ValueError(f'Labels have {attributes} attributes, the head '
                       f'{num_outputs}.')
    if not 1 <= attributes <= 30:
      raise ValueError(f'Cannot draw flip patterns over {attributes} '
                       'attributes.')
    pattern = jax.random.randint(rng, labels.shape[:-1], 1, 2 ** attributes,
                                 dtype=jnp.int32)
    bits = (pattern[..., None] >> jnp.arange(attributes, dtype=jnp.int32)) & 1
    flipped = jnp.where(bits == 1, 1 - (labels > 0).astype(jnp.int32),
                        (labels > 0).astype(jnp.int32))
    return flipped.astype(labels.dtype)
  raise ValueError(f'Unknown loss {loss_kind!r}; expected softmax or '
                   'sigmoid.')



@dataclasses.dataclass(frozen=True)
class RandomLabelForgetLoss:
  """The task loss on the forget batch with `random_other_labels` in place
  of its labels (hashable: one compiled step serves every run)."""
  num_outputs: int

  def __call__(self, forward, inputs, prepared):
    del prepared
    labels = random_other_labels(inputs.rng, inputs.labels('forget'),
                                       self.num_outputs, inputs.loss_kind)
    return inputs.loss(forward(inputs.images('forget')), labels), {}


@dataclasses.dataclass(frozen=True)
class RandomLabelsHparams(core.SGDHparams):
  batch_size: int = core.hparam(256, source=_ARGS + ' (--batch_size)',
                                minimum=1)
  lr: float = core.hparam(
      0.01, source=_RUN + ' (--unlearn_lr 0.01); also ' + _ARGS
      + ' (--unlearn_lr)', positive=True)
  epochs: int = core.hparam(
      10, source=_RUN + ' (--unlearn_epochs 10); also ' + _ARGS
      + ' (--unlearn_epochs) and Classification/README.md', minimum=1)
  momentum: float = core.hparam(0.9, source=_ARGS + ' (--momentum)',
                                minimum=0.0, maximum=0.999)


def relabel_stage(ctx: core.Context, row: str, hp: RandomLabelsHparams,
                  **stage) -> core.Stage:
  """Each epoch a pass over forget with random other labels, then a pass
  over retain with the true ones; `stage` sets other `core.Stage` fields
  (SalUn's mask)."""
  plan = []
  for epoch in range(hp.epochs):
    for name in ('forget', 'retain'):
      plan += core.step_plan(name, loops.passes(
          name, ctx.size(name), hp.batch_size, epochs=1, seed=ctx.seed,
          first_epoch=epoch))
  return core.Stage(
      row=row, plan=plan,
      objectives={'forget': engine.Objective(
          RandomLabelForgetLoss(ctx.num_outputs)),
                  'retain': finetune.RETAIN_LOSS},
      learning_rate=hp.lr, bn_train=ctx.bn_train(), epochs=hp.epochs,
      momentum=hp.momentum, **stage)


@core.register('random_labels')
class RandomLabels(core.SGDMethod):
  Hparams = RandomLabelsHparams

  def stages(self, ctx):
    return [relabel_stage(ctx, 'random_labels', self.hparams(ctx))]
