"""The jitted programs that the engine runs, built once per shape and kept.

Every program is a single model's computation `jax.vmap`ped over a
population's leading model axis, its batch laid on the mesh's `data` axis
(`sharding`). A program's shapes depend neither on the length of a plan nor
on which method runs it, so that every run of a benchmark table shares them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mufax import input_pipeline
from mufax import losses
from mufax import objectives
from mufax import sharding

class Programs:
  """The programs of one model on one task, each built at its first use."""

  def __init__(self, model: nn.Module, *, loss_kind: str,
               image_size: int | None, platform: str):
    self.model, self.loss_kind = model, loss_kind
    self.image_size = image_size
    self.platform = platform
    self._built: dict[tuple, Callable] = {}

  def _cached(self, key: tuple, build: Callable[[], Callable]) -> Callable:
    if key not in self._built:
      self._built[key] = build()
    return self._built[key]

  def member_batch(self, mesh: Mesh, augment: bool) -> Callable:
    """`(data, indices, step key, position) -> (images, labels, mask)`: one
    member's batch, gathered on the device and preprocessed, augmented with
    the draw at `position` of the step's key."""
    image_size, ops_in_loop = self.image_size, self.platform == 'cpu'

    def member_batch(data, indices, rng, position):
      # Index -1 pads a short batch (`Plan.groups`); augmentation draws are
      # made per row, so the real rows draw what they would unpadded.
      batch = input_pipeline.gather_batch(data, jnp.maximum(indices, 0))
      images = jax.lax.with_sharding_constraint(
          objectives.preprocess(batch['image'], image_size),
          NamedSharding(mesh, sharding.batch_spec(mesh, indices.shape[0])))
      if augment:
        images = input_pipeline.augment(
            images, jax.random.fold_in(rng, position), ops_in_loop=ops_in_loop)
      return images, batch['label'], indices >= 0

    return member_batch

  def batch(self, mesh: Mesh, augment: bool) -> Callable:
    """The jitted `(steps, data, indices, rngs, position) -> batch` of a
    population (`member_batch`), which every update of the same batch size
    and augmentation shares on CPU."""

    def build():
      member_batch = self.member_batch(mesh, augment)
      return jax.jit(jax.vmap(
          lambda step, data, indices, rng, position: member_batch(
              data, indices, jax.random.fold_in(rng, step), position),
          in_axes=(0, None, 0, 0, None), spmd_axis_name=sharding.MODEL_AXIS))

    return self._cached(('batch', mesh.devices.shape, augment), build)

  def member_update(self, update: objectives.Update) -> Callable:
    """`(state, batches, step key, teachers, values) -> (state,
    measurements)`: one member's update on {name: (images, labels, mask)},
    its objective reading the member's `values` ({name: scalar})."""
    model, loss_kind = self.model, self.loss_kind

    def member_update(state, batches, rng, teachers, values):
      inputs = objectives.Inputs(
          {name: b[:2] for name, b in batches.items()},
          jax.random.fold_in(rng, len(batches)), loss_kind,
          {name: objectives.Forward(model, v['params'], v['batch_stats'],
                                    train=False)
           for name, v in (teachers or {}).items()},
          step=state.step, masks={name: b[2] for name, b in batches.items()},
          values=values or {})
      forward = objectives.Forward(model, state.params, state.batch_stats,
                                   train=update.bn_train)
      objective = update.objective
      prepared = (objective.prepare(forward, inputs)
                  if objective.prepare is not None else None)
      trained, frozen = objectives.split_params(state.params, update.trainable)

      # Frozen parameters stay outside the differentiated function: they are
      # bit-identical afterwards and cost no gradient.
      def objective_fn(trained):
        f = objectives.Forward(model, {**frozen, **trained},
                               forward.batch_stats, train=update.bn_train)
        value, measured = objective.loss(f, inputs, prepared)
        return value, (f.batch_stats, measured)

      (value, (batch_stats, measured)), grads = jax.value_and_grad(
          objective_fn, has_aux=True)(trained)
      updates, opt_state = update.tx.update(grads, state.opt_state, trained)
      trained = optax.apply_updates(trained, updates)
      return state.replace(step=state.step + 1, params={**frozen, **trained},
                           batch_stats=batch_stats, opt_state=opt_state), {
                               'loss': value, **measured}

    return member_update

  def population_step(self, update: objectives.Update, mesh: Mesh) -> Callable:
    """The jitted step of a population, batches gathered inside: `(state,
    data, indices, rngs, teachers, values) -> (state, measurements)`.
    Jitted so that its trace is cached: a run traces it for the shapes of
    the measurements, and the compiled loop then reuses that trace."""

    def build():
      member_batch = self.member_batch(mesh, update.augment)
      member_update = self.member_update(update)

      def member_step(state, data, indices, rng, teachers, values):
        rng = jax.random.fold_in(rng, state.step)
        batches = {name: member_batch(data, indices[name], rng, i)
                   for i, name in enumerate(sorted(indices))}
        return member_update(state, batches, rng, teachers, values)

      return jax.jit(jax.vmap(
          member_step, in_axes=(0, None, 0, 0, 0, 0),
          spmd_axis_name=sharding.MODEL_AXIS))

    return self._cached(('population step', update, mesh.devices.shape),
                        build)

  def host_update(self, update: objectives.Update, mesh: Mesh) -> Callable:
    """The `host` executor's update, `(state, batches, rngs, teachers,
    values) -> (state, measurements)` with the state donated, on batches
    that `batch` made: XLA's CPU backend takes about a second to compile
    the augmentation into each program, so updates that differ only in
    augmentation share one."""
    return self._cached(
        ('update', dataclasses.replace(update, augment=False),
         mesh.devices.shape),
        lambda: self._host_update(update, mesh))

  def update_loop(self, update: objectives.Update, mesh: Mesh) -> Callable:
    """The `loop` executor's jitted loop `(state, measured, data, group
    arrays, rngs, teachers, values, start, stop) -> (state, measured)` over
    steps start..stop of a group, batches gathered inside."""
    return self._cached(('loop', update, mesh.devices.shape),
                        lambda: self._update_loop(update, mesh))

  def _host_update(self, update: objectives.Update, mesh: Mesh) -> Callable:
    member_update = self.member_update(update)
    return jax.jit(
        jax.vmap(lambda state, batches, rng, teachers, values: member_update(
            state, batches, jax.random.fold_in(rng, state.step), teachers,
            values),
                 spmd_axis_name=sharding.MODEL_AXIS),
        donate_argnums=(0,),
        out_shardings=(sharding.member_sharding(mesh),
                       NamedSharding(mesh, P(sharding.MODEL_AXIS))))

  def _update_loop(self, update: objectives.Update, mesh: Mesh) -> Callable:
    population_step = self.population_step(update, mesh)

    def body(i, carry, data, arrays, rngs, teachers, values):
      state, measured = carry
      indices = {name: a[i] for name, a in arrays.items()}
      state, step_measured = population_step(state, data, indices, rngs,
                                             teachers, values)
      return state, jax.tree.map(lambda buf, v: buf.at[i].set(v),
                                 measured, step_measured)

    def run(state, measured, data, arrays, rngs, teachers, values, start,
            stop):
      return jax.lax.fori_loop(
          start, stop,
          lambda i, carry: body(i, carry, data, arrays, rngs, teachers,
                                values),
          (state, measured))

    return jax.jit(run, donate_argnums=(0, 1),
                   out_shardings=(sharding.member_sharding(mesh),
                                  NamedSharding(
                                      mesh, P(None, sharding.MODEL_AXIS))))

  def predict(self, mesh: Mesh, batch: int) -> Callable:
    """The jitted `(variables, data, indices) -> (logits, per-sample
    losses)` of a population in eval mode on one batch of `batch` images."""
    model, loss_kind = self.model, self.loss_kind
    image_size = self.image_size
    spec = NamedSharding(mesh, sharding.batch_spec(mesh, batch))

    def run(variables, pool, indices):
      b = input_pipeline.gather_batch(pool, indices)
      images = jax.lax.with_sharding_constraint(
          objectives.preprocess(b['image'], image_size), spec)
      logits = jax.vmap(
          lambda v: model.apply(v, images, train=False),
          spmd_axis_name=sharding.MODEL_AXIS)(variables).astype(jnp.float32)
      per_sample = jax.vmap(
          lambda z: losses.per_sample_loss(z, b['label'], loss_kind))(logits)
      return logits, per_sample

    return self._cached(('eval', mesh.devices.shape, batch),
                        lambda: jax.jit(run))
