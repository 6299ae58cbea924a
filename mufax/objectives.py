"""The method API: what one model's objective is made of.

An unlearning method or a training recipe describes a single model's update
step as an `Objective` (a loss of the model, called as a `Forward`, and the
step's `Inputs`) and an `Update` (the objective with its optimizer, BatchNorm
mode and trainable parameters); the engine vectorises it over a population.
`TASK_OBJECTIVE` is training from scratch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mufax import input_pipeline
from mufax import losses
from mufax import models


def preprocess(images: jax.Array, image_size: int | None) -> jax.Array:
  """uint8 or [0, 1] images -> float32 [0, 1] at `image_size` (if given).

  Resizing here lets reduced runs use smaller images than are stored.
  """
  images = input_pipeline.to_float(images)
  if image_size and images.shape[1:3] != (image_size, image_size):
    images = jax.image.resize(
        images, (images.shape[0], image_size, image_size, images.shape[3]),
        'linear', antialias=True)
  return images


def apply_model(model: nn.Module, params, batch_stats, images: jax.Array, *,
                train: bool, mask: jax.Array | None = None):
  """Logits, and the updated batch statistics when `train`; in train mode
  BatchNorm's statistics are taken over the images where `mask` (if given)
  is True."""
  variables = {'params': params, 'batch_stats': batch_stats}
  if not train:
    return model.apply(variables, images, train=False), batch_stats
  logits, updates = model.apply(
      variables, images, train=True, mutable=['batch_stats'],
      **({} if mask is None else {'mask': mask}))
  return logits, updates['batch_stats']


def split_params(params, trainable: frozenset[str] | None):
  """(trainable, frozen) top-level parameter dicts (`models.param_group`)."""
  if trainable is None:
    return params, {}
  train_part = {k: v for k, v in params.items()
                if models.param_group(k) in trainable}
  frozen = {k: v for k, v in params.items()
            if models.param_group(k) not in trainable}
  return train_part, frozen


class Forward:
  """The model as a function of images that threads BatchNorm statistics.

  In train mode each call normalises by the batch and updates the running
  statistics, in call order, as a PyTorch module in train mode does; in eval
  mode it uses and keeps them.
  """

  def __init__(self, model: nn.Module, params, batch_stats, *, train: bool):
    self.model, self.params, self.train = model, params, train
    self.batch_stats = batch_stats

  def apply(self, batch_stats, images, mask=None):
    """Pure form: (logits, updated statistics)."""
    return apply_model(self.model, self.params, batch_stats, images,
                       train=self.train, mask=mask)

  def __call__(self, images: jax.Array,
               mask: jax.Array | None = None) -> jax.Array:
    """Logits of `images`; `mask` marks the real ones of a padded batch,
    which alone make BatchNorm's statistics in train mode."""
    logits, self.batch_stats = self.apply(self.batch_stats, images, mask)
    return logits.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Inputs:
  """The step's augmented batches and what objectives need besides the model.

  `teachers` are models in eval mode, by name ('original': the model being
  unlearnt), that the run passes; `loss(logits, labels)` is the task's mean
  loss. `masks` mark each batch's real examples: all of them, unless the
  objective `pads` and the batch is a short one padded to full size.
  """
  batches: Mapping[str, tuple[jax.Array, jax.Array]]
  rng: jax.Array
  loss_kind: str
  teachers: Mapping[str, Callable[[jax.Array], jax.Array]] = (
      dataclasses.field(default_factory=dict))
  # The member's update steps so far in this run of a stage (0 first), for
  # objectives that change over a stage (an ℓ1 weight that decays).
  step: jax.Array | int = 0
  masks: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)
  # The member's values of its stage (`Stage.values`), each a scalar: members
  # of one program may differ in them.
  values: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)

  def value(self, name: str) -> jax.Array:
    """The member's value `name` of its stage (`Stage.values`)."""
    if name not in self.values:
      raise KeyError(f'Inputs.value({name!r}): the stage gives no such value '
                     f'(it gives {", ".join(sorted(self.values)) or "none"}).')
    return self.values[name]

  def teacher(self, images: jax.Array, name: str = 'original') -> jax.Array:
    """The logits of teacher `name` on `images`."""
    return self.teachers[name](images)

  def images(self, name: str) -> jax.Array:
    return self.batches[name][0]

  def labels(self, name: str) -> jax.Array:
    return self.batches[name][1]

  def loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    return losses.per_sample_loss(logits, labels, self.loss_kind).mean()

  def mask(self, name: str) -> jax.Array:
    """bool [batch]: which rows of batch `name` are real examples."""
    if name in self.masks:
      return self.masks[name]
    return jnp.ones(self.images(name).shape[:1], bool)

  def mean(self, values: jax.Array, name: str) -> jax.Array:
    """The mean of per-example `values` [batch, ...] over batch `name`'s
    real examples."""
    weight = self.mask(name).astype(values.dtype)
    weight = weight.reshape(weight.shape + (1,) * (values.ndim - 1))
    count = weight.sum() * math.prod(values.shape[1:])
    return (values * weight).sum() / count

  def logits(self, forward: Forward, name: str) -> jax.Array:
    """`forward` on batch `name`, its padding kept out of BatchNorm."""
    return forward(self.images(name), self.masks.get(name))

  def task_loss(self, logits: jax.Array, name: str) -> jax.Array:
    """The task's loss of `logits` against batch `name`'s labels, mean over
    its real examples."""
    return self.mean(losses.per_sample_loss(logits, self.labels(name),
                                            self.loss_kind), name)


# loss(forward, inputs, prepared) -> (scalar to minimise, measurements).
LossFn = Callable[[Forward, Inputs, Any], tuple[jax.Array, dict]]
# prepare(forward, inputs) -> anything the loss needs that is not
# differentiated (teacher logits, UNSIR's noise); may run the model.
PrepareFn = Callable[[Forward, Inputs], Any]


@dataclasses.dataclass(frozen=True)
class Objective:
  loss: LossFn
  prepare: PrepareFn | None = None
  # True when the loss weighs examples by their masks (it runs the model
  # with `inputs.logits` and averages with `inputs.mean` / `inputs.task_loss`).
  # The engine then pads a short batch (an epoch's last) to the full batch
  # size, and one compiled program serves both.
  pads: bool = False


@dataclasses.dataclass(frozen=True)
class Update:
  """One kind of update step: objective, optimizer, BatchNorm mode, which
  parameter groups train (None: all), and whether batches are augmented
  (the protocol's training transforms) or seen as stored."""
  objective: Objective
  tx: optax.GradientTransformation
  bn_train: bool = True
  trainable: frozenset[str] | None = None
  augment: bool = True


def _task_loss(forward, inputs, prepared):
  del prepared
  logits = inputs.logits(forward, 'train')
  correct = losses.correct(logits, inputs.labels('train'), inputs.loss_kind)
  return inputs.task_loss(logits, 'train'), {
      'accuracy': inputs.mean(correct, 'train')}


# Training from scratch: the task's loss on the batch named 'train' (which
# split that is, the run's `sources` say), measuring accuracy.
TASK_OBJECTIVE = Objective(_task_loss, pads=True)
