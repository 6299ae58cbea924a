"""SSD: Selective Synaptic Dampening (Foster, Schoepf & Brintrup, AAAI 2024).

Training-free. Two gradient passes measure each parameter element's
diagonal Fisher importance, the squared gradient of the batch-mean task
loss averaged over batches (`ParameterPerturber.calc_importance` of
github.com/if-loops/selective-synaptic-dampening, src/ssd.py): once over
forget (I_f) and once over the whole training split (I_D, forget and
retain together). An element is selected where I_f > alpha * I_D, and its
weight multiplied by min(1, (lambda * I_D / I_f) ** exponent), with
exponent and lower bound 1 as in the reference's `ssd_tuning`
(src/forget_random_strategies.py); every other element, and every BatchNorm
statistic, is left exactly as it was. The dampening is an `edit` stage with
no steps; the row is `ssd`.

As the reference: BatchNorm in eval mode for both passes; batches of 128;
forget in one pass, and the training split as its DataLoader over
ConcatDataset(retain, forget) without shuffling, so one batch straddles the
two splits (in mufax that step holds both splits' indices and its loss is
the mean over all of its examples). The reference's splits came from
`random_split`, in random order; mufax orders each split by a permutation
of the member's seed. Both passes see the images as stored, without the
training transforms, as the reference's loaders did. Departure: on
multi-label MUCAC the task loss (BCE) replaces the reference's
cross-entropy.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mufax import losses
from mufax import objectives
from mufax import plans
from mufax import search_spaces
from mufax.unlearning import core
from mufax.unlearning import hparams

_SOURCE = ('Foster et al. 2024 (SSD), github.com/if-loops/'
           'selective-synaptic-dampening, src/forget_random_main.py')
# Measurement names (`Stage.name`), where the edit finds the sums.
FORGET = 'ssd_forget_importance'
TRAIN = 'ssd_train_importance'


def batch_mean_loss(forward, inputs, prepared):
  """The task loss averaged over every example of the step's batch, which
  may hold forget examples, retain examples, or both."""
  del prepared
  total, count = 0.0, 0
  for name in sorted(inputs.batches):
    logits = forward(inputs.images(name))
    total = total + losses.per_sample_loss(
        logits, inputs.labels(name), inputs.loss_kind).sum()
    count += logits.shape[0]
  loss = total / count
  return loss, {}


IMPORTANCE = objectives.Objective(batch_mean_loss)


def plan_batches(splits: list[tuple[str, np.ndarray]],
                 batch_size: int) -> list[dict[str, np.ndarray]]:
  """One unshuffled pass over the concatenation of `splits` ((name, indices
  in loader order) each), in batches of `batch_size`, the last one short; a
  batch that straddles two splits holds indices of both."""
  names = np.concatenate([np.full(len(idx), i) for i, (_, idx)
                          in enumerate(splits)]).astype(np.int64)
  order = np.concatenate([idx for _, idx in splits]).astype(np.int64)
  plan = []
  for start in range(0, len(order), batch_size):
    part, idx = names[start:start + batch_size], order[start:start + batch_size]
    plan.append({splits[i][0]: idx[part == i] for i in np.unique(part)})
  return plan


def dampen(params, forget_importance, train_importance, *, alpha, dampening):
  """SSD's edit of one tree (any leading axes): where forget importance
  exceeds alpha times train importance, the weight times min(1, lambda *
  train / forget); elsewhere the weight itself, bit for bit. `alpha` and
  `dampening` (lambda) are scalars, or one per member along the leading
  axis."""

  def one(p, f, t):
    # A member's value against each of its elements.
    spread = lambda v: jnp.reshape(v, jnp.shape(v) + (1,) * (
        p.ndim - jnp.ndim(v)))
    selected = f > spread(alpha) * t
    # Off the selection the ratio may be 0/0; `where` drops it.
    factor = jnp.minimum(
        (spread(dampening) * t) / jnp.where(selected, f, 1.0), 1.0)
    return jnp.where(selected, p * factor.astype(p.dtype), p)

  return jax.tree.map(one, params, forget_importance, train_importance)


@dataclasses.dataclass(frozen=True)
class SSDHparams(hparams.SGDHparams):
  batch_size: int = hparams.hparam(
      128, source=_SOURCE + ' (-b default 128; forget DataLoader 128)',
      minimum=1)
  # Selection weighting alpha.
  # No sweep is published; the paper's values (5 to 50) were tuned on forget
  # sets of 1/50 to 1/600 of train. A forget set of a fraction f of train
  # caps I_f at about I_D / f (MUFAC: 6.6 I_D), so the range reaches well
  # below that cap.
  alpha: float = hparams.hparam(
      10.0, source=_SOURCE + ' (selection_weighting 10, ResNet-18)',
      positive=True, search=search_spaces.LogUniform(0.3, 30.0),
      search_source='mufax: around the paper\'s 5..50, down past MUFAC\'s '
      '|D|/|f| = 6.6', per_member=True)
  # Dampening constant lambda.
  dampening: float = hparams.hparam(
      1.0, source=_SOURCE + ' (dampening_constant 1, ResNet-18)',
      positive=True, search=search_spaces.LogUniform(0.1, 10.0),
      search_source='mufax: around the paper\'s 1 and 0.1 (its face set)',
      per_member=True)


@core.register('ssd')
class SSD(core.SGDMethod):
  Hparams = SSDHparams

  def stages(self, ctx):
    hp = self.hparams(ctx)
    rng = np.random.default_rng([ctx.seed, 7])
    retain = rng.permutation(ctx.size('retain'))
    forget = rng.permutation(ctx.size('forget'))
    forget_plan = plan_batches([('forget', forget)], hp.batch_size)
    train_plan = plan_batches([('retain', retain), ('forget', forget)],
                              hp.batch_size)
    counts = {FORGET: len(forget_plan), TRAIN: len(train_plan)}

    def edit(variables, measurements, rngs, values):
      del rngs
      params = jax.jit(dampen)(
          variables['params'],
          jax.tree.map(lambda s: s / counts[FORGET], measurements[FORGET]),
          jax.tree.map(lambda s: s / counts[TRAIN], measurements[TRAIN]),
          alpha=values['alpha'], dampening=values['dampening'])
      return {**variables, 'params': params}

    def measure(name, plan):
      return core.Stage(
          row=None, name=name, plan=plans.step_plan('importance', plan),
          objectives={'importance': IMPORTANCE}, learning_rate=0.0,
          bn_train=False, epochs=1, optimizer='squared_gradient_sum',
          augment=False)

    return [measure(FORGET, forget_plan), measure(TRAIN, train_plan),
            core.Stage(row='ssd', plan=[], objectives={}, learning_rate=0.0,
                       bn_train=False, epochs=0, name='ssd_dampening',
                       edit=edit, values={'alpha': hp.alpha,
                                          'dampening': hp.dampening})]
