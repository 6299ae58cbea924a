"""Bad teaching: unlearning with an incompetent teacher (Chundawat, Tarun,
Mandal & Kankanhalli, "Can Bad Teaching Induce Forgetting? Unlearning in
Deep Networks Using an Incompetent Teacher", AAAI 2023).

A student, a copy of the original, distils from two teachers in eval mode:
the original (the competent teacher) on retain examples and a randomly
initialised model of the same architecture (the incompetent teacher) on
forget examples. Each example's loss is KL(teacher ‖ student) of the
softmax at temperature T (the teacher's distribution first, as the
reference's `F.kl_div(log_softmax(student / T), softmax(teacher / T))`),
averaged over the batch; Adam, BatchNorm in train mode.

Reference: github.com/vikram2000b/bad-teaching-unlearning, unlearn.py
(`UnlearnerLoss`, `blindspot_unlearner`) and the ResNet-18 run of
CIFARSuper20_Rocket_Unlearn.ipynb: Adam at lr 1e-4, one epoch, batches of
256, T = 1, over forget and a random 30% of retain (`random.sample`, drawn
once) mixed in one shuffled loader.

mufax's batches: one shuffled loader over forget and the retain subset
would give each batch a random number of forget examples, and each number
its own compiled step. mufax keeps the reference's batch sizes (full
batches, then one short one) and gives every batch the forget share of the
whole, rounded (the same counts for every member): forget and retain are
each shuffled every epoch and dealt out in those counts. The student sees
each step's forget and retain images in one forward pass, so train-mode
BatchNorm normalises by the mixed batch as in the reference.

The student and both teachers see the images as stored, without the
training transforms (`Stage.augment`), as in the reference, whose
`transform_train` (dataset.py) only resizes and normalises; DeepUnlearn's
re-implementation (github.com/xcadet/deepunlearn, munl/unlearning/
bad_teacher.py) also reads its un-augmented `default_loaders`
(munl/settings.py).

The incompetent teacher of each member is initialised, like a fresh model
(`models.init_variables`), from that member's seed folded with a constant,
so it differs from the original's initialisation (`Engine.init` splits the
seed's key). On multi-label MUCAC the KL is that of each attribute's
Bernoulli distribution, averaged over the attributes (`scrub.bernoulli_kl`).

Departures: the reference's `F.kl_div` with its default 'mean' reduction
divided the summed KL by batch × classes; under Adam a constant factor of
the loss changes nothing but the weight of ε, so mufax takes the mean over
the batch of each example's KL. The reference's teacher was a pretrained
ResNet fine-tuned on CIFAR-100 super-classes; here it is the original.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mufax import models
from mufax import objectives
from mufax import plans
from mufax import search_spaces
from mufax.unlearning import core
from mufax.unlearning import hparams
from mufax.unlearning import scrub

_NOTEBOOK = ('Chundawat et al. 2023, github.com/vikram2000b/'
             'bad-teaching-unlearning, CIFARSuper20_Rocket_Unlearn.ipynb '
             'ResNet-18 blindspot_unlearner call')
# The teacher of each split's examples.
TEACHERS = {'forget': 'incompetent', 'retain': 'original'}
# Folded into a member's seed to initialise its incompetent teacher.
INCOMPETENT_STREAM = 0x0BAD7EAC
# Numpy streams: (seed, stream[, epoch]), as `plans` seeds its loaders.
_STREAMS = {'retain': 1, 'forget': 2, 'subset': 3}


def init_population(model, keys: jax.Array, image_size: int):
  """A freshly initialised model per key, as one population."""
  return jax.vmap(lambda key: models.init_variables(model, key, image_size))(
      keys)


def incompetent_teachers(model, seeds, image_size: int):
  """Each member's incompetent teacher: a fresh model from its seed's key
  folded with `INCOMPETENT_STREAM`."""
  keys = jax.vmap(lambda s: jax.random.fold_in(
      jax.random.key(s), INCOMPETENT_STREAM))(np.asarray(seeds, np.int32))
  return init_population(model, keys, image_size)


def mixed_counts(n_forget: int, n_retain: int,
                 batch_size: int) -> list[tuple[int, int]]:
  """(forget, retain) examples per step: batches of `batch_size` over both
  (the last one short), each holding the forget share of the whole up to
  rounding."""
  total = n_forget + n_retain
  bounds = list(range(0, total, batch_size)) + [total]
  forget_upto = [(b * n_forget + total // 2) // total for b in bounds]
  return [(f1 - f0, (b1 - b0) - (f1 - f0)) for b0, b1, f0, f1 in
          zip(bounds, bounds[1:], forget_upto, forget_upto[1:])]


def retain_subset(n_retain: int, fraction: float, *, seed: int) -> np.ndarray:
  """The retain examples the method sees: int(fraction * n) drawn once
  without replacement (the reference's `random.sample`)."""
  return np.random.default_rng([seed, _STREAMS['subset']]).choice(
      n_retain, int(fraction * n_retain), replace=False)


def mixed_plan(n_forget: int, subset: np.ndarray, batch_size: int, *,
               epochs: int, seed: int) -> list[dict[str, np.ndarray]]:
  """Epochs of steps over forget and the retain `subset`, each split
  reshuffled every epoch and dealt out in `mixed_counts`; a split with no
  example in a step is left out of it."""
  counts = mixed_counts(n_forget, len(subset), batch_size)
  plan = []
  for epoch in range(epochs):
    orders = {
        'forget': np.random.default_rng(
            [seed, _STREAMS['forget'], epoch]).permutation(n_forget),
        'retain': subset[np.random.default_rng(
            [seed, _STREAMS['retain'], epoch]).permutation(len(subset))]}
    start = {'forget': 0, 'retain': 0}
    for step_counts in counts:
      step = {}
      for name, count in zip(('forget', 'retain'), step_counts):
        if count:
          step[name] = orders[name][start[name]:start[name] + count]
          start[name] += count
      plan.append(step)
  return plan


@dataclasses.dataclass(frozen=True)
class BadTeaching:
  """The student's objective: per example, KL(teacher ‖ student) at the
  member's value 'temperature' (`Inputs.value`) against the teacher of the
  example's split (`TEACHERS`), averaged over the step's examples."""
  bernoulli: bool = False

  def prepare(self, forward, inputs):
    del forward
    return {name: jax.lax.stop_gradient(
        inputs.teacher(inputs.images(name), TEACHERS[name]))
            for name in sorted(inputs.batches)}

  def per_example_kl(self, teacher_logits, student_logits, t):
    kl_fn = scrub.bernoulli_kl if self.bernoulli else scrub.softmax_kl
    return kl_fn(teacher_logits / t, student_logits / t)

  def loss(self, forward, inputs, teacher_logits):
    names = sorted(inputs.batches)
    # One forward pass: train-mode BatchNorm sees the mixed batch.
    logits = forward(jnp.concatenate([inputs.images(n) for n in names]))
    kl = self.per_example_kl(
        jnp.concatenate([teacher_logits[n] for n in names]), logits,
        inputs.value('temperature'))
    # Each split's mean KL (NaN where the step has none of it), so that
    # every step reports the same measurements.
    measured = {f'{name}_kl': jnp.float32(jnp.nan) for name in TEACHERS}
    start = 0
    for name in names:
      size = teacher_logits[name].shape[0]
      measured[f'{name}_kl'] = kl[start:start + size].mean()
      start += size
    loss = kl.mean()
    return loss, {'kl': loss, **measured}

  def objective(self) -> objectives.Objective:
    return objectives.Objective(self.loss, prepare=self.prepare)


@dataclasses.dataclass(frozen=True)
class BadTeachingHparams(hparams.SGDHparams):
  batch_size: int = hparams.hparam(256, source=_NOTEBOOK + ' (batch_size)',
                                minimum=1)
  # Adam: DeepUnlearn's SGD range shifted down two decades around the
  # notebook's 1e-4.
  lr: float = hparams.hparam(
      1e-4, source=_NOTEBOOK + ' (Adam, lr)', positive=True,
      search=search_spaces.LogUniform(1e-6, 1e-2),
      search_source='DeepUnlearn, munl/settings.py (log-uniform), two '
      'decades lower for Adam', per_member=True)
  epochs: int = hparams.hparam(
      1, source=_NOTEBOOK + ' (epochs)', minimum=1, **search_spaces.EPOCHS)
  temperature: float = hparams.hparam(
      1.0, source=_NOTEBOOK + ' (KL_temperature)', positive=True,
      search=search_spaces.Uniform(0.5, 5.0),
      search_source='DeepUnlearn, munl/settings.py (temperature: uniform '
      '0..5), from 0.5: 0 is degenerate', per_member=True)
  # Fraction of retain the student sees (drawn once per member).
  retain_fraction: float = hparams.hparam(
      0.3, source=_NOTEBOOK.replace(' blindspot_unlearner call', '')
      + ' (retain_train_subset: random.sample of 0.3 of retain)',
      positive=True, maximum=1.0, search=search_spaces.Uniform(0.1, 1.0),
      search_source='mufax: none published; around the notebook\'s 0.3 up '
      'to all of retain')


@core.register('bad_teaching')
class BadTeachingMethod(core.SGDMethod):
  Hparams = BadTeachingHparams

  def stages(self, ctx):
    hp = self.hparams(ctx)
    subset = retain_subset(ctx.size('retain'), hp.retain_fraction,
                           seed=ctx.seed)
    plan = mixed_plan(ctx.size('forget'), subset, hp.batch_size,
                      epochs=hp.epochs, seed=ctx.seed)
    objective = BadTeaching(
        bernoulli=ctx.task.loss_kind == 'sigmoid').objective()
    return [core.Stage(
        row='bad_teaching', plan=plans.step_plan('distil', plan),
        objectives={'distil': objective}, learning_rate=hp.lr,
        bn_train=ctx.bn_train(), epochs=hp.epochs,
        teachers=('original', 'incompetent'), optimizer='adam',
        augment=False, values={'temperature': hp.temperature})]

  def teachers(self, ctx, original):
    return {'original': original,
            'incompetent': incompetent_teachers(
                ctx.engine.model, ctx.seeds, ctx.engine.input_size)}
