"""Random labels (RL), the relabelling baseline of SalUn (Fan, Liu, Zhang,
Wong, Wei & Liu, ICLR 2024) and of Jia et al. (NeurIPS 2023).

Reference: github.com/OPTML-Group/Unlearn-Saliency, Classification/unlearn/
RL.py without a mask, its CIFAR-10 branch: each epoch a pass over forget,
every image trained on with a random label, then a pass over retain with the
true labels; SGD with momentum, BatchNorm in train mode, short last batches
kept. The row is `random_labels`.

Random labels (`labels`): by default each forget image's label is drawn
uniformly from all classes, its own included, afresh for every batch
(`draw_labels`, from the step's `inputs.rng`), as the reference's code does
(`torch.randint(0, args.num_classes, target.shape)` in RL.py;
Unlearn-Sparse's unlearn/RL.py likewise draws `np.random.randint(0,
args.num_classes, ...)`). On multi-label MUCAC, which the reference never
met, mufax's analogue draws each attribute vector uniformly from all 2**A of
them (every attribute a fair coin). `labels='other'` draws from the labels
other than the true one instead, as the SalUn paper writes its relabelling
(y' ≠ y): another class, or another attribute vector.

Departures: mufax has no weight decay (the reference used 5e-4); the
reference's MultiStepLR milestones (91, 136) never fall within its 10
epochs, so its learning rate was constant, as here.
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
from mufax.unlearning import finetune

_ARGS = ('Fan et al. 2024 (SalUn), github.com/OPTML-Group/Unlearn-Saliency, '
         'Classification/arg_parser.py default')
_RUN = ('Jia et al. 2023, github.com/OPTML-Group/Unlearn-Sparse, run.py '
        'params["RL"], ResNet-18 CIFAR-10')
_DRAW = ('Fan et al. 2024 (SalUn), github.com/OPTML-Group/Unlearn-Saliency, '
         'Classification/unlearn/RL.py (torch.randint(0, args.num_classes, '
         'target.shape)); also Jia et al. 2023, github.com/OPTML-Group/'
         'Unlearn-Sparse, unlearn/RL.py (np.random.randint('
         '0, args.num_classes, ...))')
# Values of `labels`: every label may be drawn, or every label but the true
# one.
DRAWS = ('all', 'other')


def draw_labels(rng: jax.Array, labels: jax.Array, num_outputs: int,
                loss_kind: str, draw: str) -> jax.Array:
  """A random label for each true one, drawn uniformly and independently.

  draw='all': from every label, the true one included; 'other': from every
  label but the true one.
  softmax: `labels` int [B]; each becomes (true + shift) mod K (K =
  `num_outputs`), the shift uniform over {0..K-1} ('all': every class alike,
  whatever the true one) or {1..K-1} ('other': the other K-1 classes).
  sigmoid: `labels` 0/1 [B, A] (A = `num_outputs` attributes); each row
  becomes the true vector XOR a flip pattern drawn uniformly from all 2**A
  A-bit patterns ('all': every attribute vector alike, each attribute a fair
  coin) or from the non-zero ones ('other': one of the other 2**A - 1
  vectors, at least one attribute flipped and any subset may be).
  Returns the same shape and dtype as `labels`; works under jit.
  """
  if draw not in DRAWS:
    raise ValueError(f'draw={draw!r}: choose one of {", ".join(DRAWS)}.')
  # A shift or flip pattern of 0 keeps the true label.
  lowest = 1 if draw == 'other' else 0
  labels = jnp.asarray(labels)
  if loss_kind == 'softmax':
    if num_outputs < 2:
      raise ValueError('Random labels need at least 2 classes.')
    shift = jax.random.randint(rng, labels.shape, lowest, num_outputs,
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
    pattern = jax.random.randint(rng, labels.shape[:-1], lowest,
                                 2 ** attributes, dtype=jnp.int32)
    bits = (pattern[..., None] >> jnp.arange(attributes, dtype=jnp.int32)) & 1
    flipped = jnp.where(bits == 1, 1 - (labels > 0).astype(jnp.int32),
                        (labels > 0).astype(jnp.int32))
    return flipped.astype(labels.dtype)
  raise ValueError(f'Unknown loss {loss_kind!r}; expected softmax or '
                   'sigmoid.')


@dataclasses.dataclass(frozen=True)
class RandomLabelForgetLoss:
  """The task loss on the forget batch with `draw_labels` in place of its
  labels (hashable: one compiled step serves every run)."""
  num_outputs: int
  # A value of `DRAWS`.
  draw: str

  def __call__(self, forward, inputs, prepared):
    del prepared
    labels = draw_labels(inputs.rng, inputs.labels('forget'),
                         self.num_outputs, inputs.loss_kind, self.draw)
    return inputs.loss(forward(inputs.images('forget')), labels), {}


@dataclasses.dataclass(frozen=True)
class RandomLabelsHparams(hparams.SGDHparams):
  batch_size: int = hparams.hparam(256, source=_ARGS + ' (--batch_size)',
                                minimum=1)
  lr: float = hparams.hparam(
      0.01, source=_RUN + ' (--unlearn_lr 0.01); also ' + _ARGS
      + ' (--unlearn_lr)', positive=True, **search_spaces.LEARNING_RATES)
  epochs: int = hparams.hparam(
      10, source=_RUN + ' (--unlearn_epochs 10); also ' + _ARGS
      + ' (--unlearn_epochs) and Classification/README.md', minimum=1,
      **search_spaces.EPOCHS)
  momentum: float = hparams.hparam(0.9, source=_ARGS + ' (--momentum)',
                                minimum=0.0, maximum=0.999)
  # Which labels a forget image's random label is drawn from (`DRAWS`):
  # 'all' as the reference's code, 'other' as the SalUn paper.
  labels: str = hparams.hparam('all', source=_DRAW, choices=DRAWS)


def relabel_stage(ctx: core.Context, row: str, hp: RandomLabelsHparams,
                  **stage) -> core.Stage:
  """Each epoch a pass over forget with random labels (`hp.labels`), then a
  pass over retain with the true ones; `stage` sets other `core.Stage` fields
  (SalUn's mask)."""
  plan = []
  for epoch in range(hp.epochs):
    for name in ('forget', 'retain'):
      plan += plans.step_plan(name, plans.passes(
          name, ctx.size(name), hp.batch_size, epochs=1, seed=ctx.seed,
          first_epoch=epoch))
  return core.Stage(
      row=row, plan=plan,
      objectives={'forget': objectives.Objective(
          RandomLabelForgetLoss(ctx.task.num_outputs, hp.labels)),
                  'retain': finetune.RETAIN_LOSS},
      learning_rate=hp.lr, bn_train=ctx.bn_train(), epochs=hp.epochs,
      momentum=hp.momentum, **stage)


@core.register('random_labels')
class RandomLabels(core.SGDMethod):
  Hparams = RandomLabelsHparams

  def stages(self, ctx):
    return [relabel_stage(ctx, 'random_labels', self.hparams(ctx))]
