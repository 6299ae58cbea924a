"""SalUn: saliency unlearning (Fan, Liu, Zhang, Wei, Wong & Liu, ICLR 2024).

Reference: github.com/OPTML-Group/Unlearn-Saliency, Classification/
(generate_mask.py, unlearn/RL.py, README's ResNet-18 CIFAR-10 command).

1. Saliency mask (`save_gradient_ratio` of generate_mask.py): the gradient of
   the forget loss summed over one pass of forget batches (BatchNorm in eval
   mode), taken in absolute value; the `mask_ratio` fraction of all parameter
   elements with the largest values, ranked globally across every parameter
   tensor (convolutions, BatchNorm scales and biases, the head), is 1, the
   rest 0: exactly int(N * mask_ratio) ones, ties broken by position.
2. Random-label unlearning (unlearn/RL.py, the CIFAR-10 branch): each epoch a
   pass over forget with random labels, then a pass over retain with the
   true ones, BatchNorm in train mode, SGD with momentum whose gradients are
   multiplied by the mask, so that elements outside it stay bit-identical
   (their momentum stays zero). The row is `salun`.

The random labels, plan and optimizer are those of `random_labels` (the
same reference, unmasked), at SalUn's learning rate; its `labels` setting
too: by default each forget label is drawn from all classes, the true one
included, as RL.py does (`labels='other'`: from the others only, as the
paper writes it).

Departures: mufax has no weight decay (the reference used 5e-4; its
restoring of unmasked weights after each step, which only undid that decay,
is then a no-op); the reference's MultiStepLR milestones (91, 136) never
fall within its 10 epochs, so the learning rate is constant, as here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mufax import plans
from mufax import search_spaces
from mufax.unlearning import core
from mufax.unlearning import hparams
from mufax.unlearning import finetune
from mufax.unlearning import random_labels

_SOURCE = ('Fan et al. 2024 (SalUn), github.com/OPTML-Group/'
           'Unlearn-Saliency, Classification/README.md ResNet-18 CIFAR-10 '
           'command')
_ARGS = ('Fan et al. 2024 (SalUn), github.com/OPTML-Group/'
         'Unlearn-Saliency, Classification/arg_parser.py default')
# Measurement name (`Stage.name`) of the forget gradient sums.
SALIENCY = 'salun_forget_gradient'


# The saliency is the magnitude of the forget loss's gradient (the reference
# negated the loss, which `abs` undoes).
SALIENCY_OBJECTIVE = finetune.FORGET_LOSS


def mask_size(elements: int, mask_ratio: float) -> int:
  """How many of a model's `elements` the mask keeps: int(N * mask_ratio),
  in float64 as the reference."""
  return int(elements * float(mask_ratio))


def saliency_mask(gradient_sums, keep):
  """1 on the `keep` (`mask_size`; it may be traced) elements of largest
  |gradient| over the whole tree (one model, no member axis), 0 elsewhere;
  same tree and dtypes."""
  leaves, treedef = jax.tree.flatten(gradient_sums)
  flat = jnp.concatenate([jnp.abs(x).ravel().astype(jnp.float32)
                          for x in leaves])
  order = jnp.argsort(-flat, stable=True)
  chosen = jnp.zeros(flat.shape, jnp.bool_).at[order].set(
      jnp.arange(flat.size) < keep)
  masks, start = [], 0
  for x in leaves:
    masks.append(chosen[start:start + x.size].reshape(x.shape).astype(
        x.dtype))
    start += x.size
  return jax.tree.unflatten(treedef, masks)


@dataclasses.dataclass(frozen=True)
class SalUnHparams(random_labels.RandomLabelsHparams):
  # Batch size, epochs, momentum and labels as random labels (the same
  # reference).
  lr: float = hparams.hparam(
      0.013, source=_SOURCE + ' (--unlearn_lr)', positive=True,
      **search_spaces.LEARNING_RATES)
  # Fraction of parameter elements the mask keeps.
  mask_ratio: float = hparams.hparam(
      0.5, source=_SOURCE + ' (--mask_path mask/with_0.5.pt)', positive=True,
      maximum=1.0, search=search_spaces.Uniform(0.1, 1.0),
      search_source='github.com/OPTML-Group/Unlearn-Saliency, '
      'Classification/generate_mask.py (threshold_list 0.1..1.0)',
      per_member=True)


@core.register('salun')
class SalUn(core.SGDMethod):
  Hparams = SalUnHparams

  def stages(self, ctx):
    hp = self.hparams(ctx)
    saliency_plan = plans.passes('forget', ctx.size('forget'),
                                 hp.batch_size, epochs=1, seed=ctx.seed)

    def gradient_scale(variables, measurements, rngs, values):
      del variables, rngs
      sums = measurements[SALIENCY]
      elements = sum(x.size // len(x) for x in jax.tree.leaves(sums))
      keep = np.asarray([mask_size(elements, r)
                         for r in values['mask_ratio']], np.int32)
      # One member at a time: a ResNet-18's sort is 11M elements each.
      return jax.jit(lambda sums, keep: jax.lax.map(
          lambda member: saliency_mask(*member), (sums, keep)))(sums, keep)

    return [
        core.Stage(row=None, name=SALIENCY,
                   plan=plans.step_plan('saliency', saliency_plan),
                   objectives={'saliency': SALIENCY_OBJECTIVE},
                   learning_rate=0.0, bn_train=False, epochs=1,
                   optimizer='gradient_sum'),
        random_labels.relabel_stage(
            ctx, 'salun', hp, optimizer='scaled_sgd',
            name='salun_random_labels', gradient_scale=gradient_scale,
            values={'mask_ratio': hp.mask_ratio}),
    ]
