"""The engine: populations of models trained at once on device-resident data.

Training from scratch and every unlearning stage run through the same pieces:

- **Data on the device.** Every split a run needs is placed on the devices
  once, as uint8 images and labels (`Engine`). A batch is gathered on the
  device from an index array; the host never touches an image again.
- **Plans** (`plans.Plan`): per update step, which objective and which
  example indices of which splits, for every member, uploaded as int arrays
  before the run starts.
- **Executors** (`executors`): on accelerators a compiled loop over the
  plan's steps, on CPU the steps queued by the host one by one. The same
  platform decides the model's convolutions and max pool
  (`models.for_platform`) and the CPU-only compiler options.
- **Populations.** Parameters, batch statistics and optimizer state carry a
  leading model axis; the single-model step (`programs`) is `jax.vmap`ped
  over it, and the members spread over a device mesh (`sharding`). Each
  member has its own initialisation key, data order and augmentation draws.

Methods and recipes describe one model's objective (`objectives`); the engine
vectorises it. Results equal, member by member, the single models trained with
each member's seed, within float32 rounding.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mufax import compilation
from mufax import executors
from mufax import input_pipeline
from mufax import models
from mufax import objectives
from mufax import plans
from mufax import programs
from mufax import sharding
from mufax import tasks

# Images per member in one evaluation batch, shrunk as the population grows so
# that the activations of every member fit together.
EVAL_IMAGES = 256


@flax.struct.dataclass
class TrainState:
  """A model's (or, with a leading model axis, a population's) state."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  @property
  def variables(self):
    return {'params': self.params, 'batch_stats': self.batch_stats}


class Diverged(RuntimeError):
  """Training from scratch whose loss stopped being finite."""


def divergence(loss: np.ndarray, seeds: Sequence[int]) -> dict | None:
  """Where a run's losses [steps, members] first stop being finite: the
  step (1-based), the seeds of the members it happened to and the mean of
  their last finite losses; None if they never do."""
  bad = ~np.isfinite(loss)
  if not bad.any():
    return None
  step = int(np.argmax(bad.any(axis=1)))
  members = np.flatnonzero(bad[step])
  return {'step': step + 1, 'seeds': [int(seeds[m]) for m in members],
          'last_finite_loss': (float(loss[step - 1, members].mean())
                               if step else None)}


@dataclasses.dataclass
class RunResult:
  """What a run of a plan reports besides the new state."""
  # {measurement: float array [steps, members]}, steps in plan order.
  measured: dict[str, np.ndarray]
  seconds: float
  compile_seconds: float
  # XLA-counted flops of one update step of the whole population, summed
  # over the steps run.
  flops: float


class Engine:
  """Runs plans and evaluations of populations of one model on one task.

  Holds the splits in device memory (once per mesh shape) and the compiled
  programs, so that every run of a benchmark table shares them.
  """

  def __init__(self, model: nn.Module, *, loss_kind: str,
               splits: Mapping[str, Mapping[str, np.ndarray]],
               log_every_s: float, image_size: int | None = None,
               memory_limit: int | None = None, devices=None,
               members_per_call: int | None = None, executor: str = 'auto'):
    if loss_kind not in tasks.LOSS_KINDS:
      raise ValueError(f'Unknown loss kind {loss_kind!r}; expected one of '
                       f'{tasks.LOSS_KINDS}.')
    self.loss_kind, self.image_size = loss_kind, image_size
    self.splits = splits
    # Every split in one pool, so that programs take the same data whatever
    # split a step reads: original and retrained models, and every split's
    # evaluation, share their compiled programs.
    names = list(splits)
    sizes = [len(splits[n]['label']) for n in names]
    self.offsets = dict(zip(names, np.cumsum([0] + sizes[:-1]).tolist()))
    self.pool = {key: np.concatenate([np.asarray(splits[n][key])
                                      for n in names])
                 for key in ('image', 'label')}
    self.compiler = compilation.Compiler(memory_limit, self.data_bytes())
    self.log_every_s = log_every_s
    self.devices = list(jax.devices() if devices is None else devices)
    self.platform = self.devices[0].platform
    # XLA's CPU backend runs convolutions inside a compiled loop several
    # times slower than outside one (BENCHMARKS.md §4), so there the host
    # dispatches the steps one by one; each step still gathers its batch on
    # the device from the uploaded plan.
    self.executor = executors.choose_executor(executor, self.platform)
    self.model = models.for_platform(model, self.platform)
    # XLA's CPU backend runs a convolution vmapped over members 2-3x slower
    # than the same members one after another (BENCHMARKS.md §2), so on one
    # CPU device a population is run member by member through the
    # one-member program. None: all at once.
    if (members_per_call is None and self.platform == 'cpu'
        and self.executor == executors.HOST and len(self.devices) == 1):
      members_per_call = 1
    self.members_per_call = members_per_call
    self.programs = programs.Programs(self.model, loss_kind=loss_kind,
                                      image_size=image_size,
                                      platform=self.platform)
    self._resident: dict[tuple, dict] = {}
    # Seconds per step of each program, to size spans for progress lines.
    self._step_seconds: dict[tuple, float] = {}

  @property
  def stored_size(self) -> int:
    return int(self.pool['image'].shape[1])

  @property
  def input_size(self) -> int:
    return self.image_size or self.stored_size

  def mesh(self, population: int) -> Mesh:
    return sharding.make_mesh(population, self.devices)

  def resident(self, mesh: Mesh) -> dict[str, jax.Array]:
    """The pool of every split in device memory, replicated over `mesh`."""
    key = mesh.devices.shape
    if key not in self._resident:
      self._resident[key] = input_pipeline.device_put_split(self.pool, mesh)
    return self._resident[key]

  def data_bytes(self) -> int:
    return sum(v.nbytes for v in self.pool.values())

  # -------------------------------------------------------------- states

  def init(self, tx: optax.GradientTransformation,
           seeds: Sequence[int]) -> TrainState:
    """Fresh models, member k initialised from `jax.random.key(seeds[k])`."""
    fresh = jax.vmap(lambda seed: self._fresh(tx, seed))
    seeds = jnp.asarray(seeds, jnp.int32)
    self.check_state_memory(jax.eval_shape(fresh, seeds), len(seeds))
    # A program that runs once: XLA's CPU backend compiles its random draws
    # 3-4x faster at optimisation level 1, to the same bits.
    options = ({'xla_backend_optimization_level': 1}
               if self.platform == 'cpu' else None)
    return jax.jit(fresh, out_shardings=sharding.member_sharding(
        self.mesh(len(seeds)))).lower(seeds).compile(
            compiler_options=options)(seeds)

  def abstract_state(self, tx, population: int):
    """Shapes, dtypes and shardings of a population's state (for restores)."""
    shapes = jax.eval_shape(jax.vmap(lambda seed: self._fresh(tx, seed)),
                            jnp.zeros((population,), jnp.int32))
    layout = sharding.member_sharding(self.mesh(population))
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=layout),
        shapes)

  def _fresh(self, tx, seed) -> TrainState:
    init_rng, _ = jax.random.split(jax.random.key(seed))
    variables = models.init_variables(self.model, init_rng, self.input_size)
    return TrainState(step=jnp.zeros((), jnp.int32),
                      params=variables['params'],
                      batch_stats=variables['batch_stats'],
                      opt_state=tx.init(variables['params']))

  def state_from(self, variables, tx: optax.GradientTransformation, *,
                 trainable: frozenset[str] | None = None,
                 population: int | None = None) -> TrainState:
    """A state holding copies of a population's `variables`, so donating it
    never frees them; a population of 1 is repeated to `population`."""
    have = sharding.members(variables)
    population = population or have
    if have not in (1, population):
      raise ValueError(f'Cannot make {population} members from {have}.')
    mesh = self.mesh(population)

    def build(variables):
      variables = jax.tree.map(
          lambda x: jnp.broadcast_to(x, (population,) + x.shape[1:]),
          variables)
      params = jax.tree.map(jnp.copy, variables['params'])
      return TrainState(
          step=jnp.zeros((population,), jnp.int32), params=params,
          batch_stats=jax.tree.map(jnp.copy, variables['batch_stats']),
          opt_state=jax.vmap(tx.init)(
              objectives.split_params(params, trainable)[0]))

    return jax.jit(build,
                   out_shardings=sharding.member_sharding(mesh))(variables)

  def put_members(self, tree, population: int):
    """`tree` (a population, or one model repeated) laid out for its mesh."""
    mesh = self.mesh(population)
    if sharding.members(tree) != population:
      tree = jax.tree.map(
          lambda x: np.broadcast_to(np.asarray(x),
                                    (population,) + np.shape(x)[1:]), tree)
    return jax.device_put(tree, sharding.member_sharding(mesh))

  def check_state_memory(self, abstract_state, population: int) -> None:
    """Refuses, before anything runs, a population whose state and data
    alone exceed the device (the step's temporaries are checked once its
    program is compiled)."""
    spread = self.mesh(population).shape[sharding.MODEL_AXIS]
    data = self.data_bytes()
    # Optimizer state, parameters being updated and the copy a step writes.
    needed = data + 2 * compilation.tree_bytes(abstract_state) // spread
    compilation.check_memory(needed, population, self.compiler.memory_limit,
                             fixed=data)

  def memory_summary(self, population: int, abstract_state) -> str:
    """One line: what a population will hold per device."""
    spread = self.mesh(population).shape[sharding.MODEL_AXIS]
    limit = (self.compiler.memory_limit
             or compilation.device_memory(self.devices[0]))
    state = compilation.tree_bytes(abstract_state) / spread
    return (f'population {population} on a {spread}x'
            f'{len(self.devices) // spread} (model x data) mesh: state '
            f'{state / 2**20:.1f} MiB and data '
            f'{self.data_bytes() / 2**20:.1f} MiB per device, of '
            f'{limit / 2**30:.1f} GiB')

  # --------------------------------------------------------------- runs

  def member_groups(self, population: int) -> list[tuple[int, int]]:
    """(first, stop) of the groups of members that one program call
    updates: the whole population, or `members_per_call` at a time."""
    size = min(self.members_per_call or population, population)
    if population % size:
      size = math.gcd(population, size)
    return [(k, k + size) for k in range(0, population, size)]

  def run(self, plan: plans.Plan, updates: Mapping[str, objectives.Update],
          state: TrainState, rngs: jax.Array, *,
          sources: Mapping[str, str] | None = None, teachers=None,
          values: Mapping[str, np.ndarray] | None = None,
          label: str = '') -> tuple[TrainState, RunResult]:
    """Runs every step of `plan` on the population `state`.

    The plan's batches name splits, or roles that `sources` maps to splits
    (e.g. {'train': 'retain'} to train from scratch on retain). `rngs` holds
    one key per member; step s of member m draws from
    `fold_in(rngs[m], state.step[m])`, so a resumed run draws as an
    uninterrupted one. `teachers` ({name: a population's variables}, or None)
    are passed to objectives, in eval mode; `values` ({name: one float per
    member}, or None) too, each member's as scalars (`Inputs.value`).

    Members are independent: a population run in groups (`member_groups`)
    gives what it gives run at once, within float32 rounding.
    """
    population = sharding.members(state)
    groups = self.member_groups(population)
    if len(groups) == 1:
      return self._run(plan, updates, state, rngs, sources=sources,
                       teachers=teachers, values=values, label=label)
    states, results = [], []
    for first, stop in groups:
      # A one-member tree (a shared original) serves every group whole.
      part = lambda tree: tree if sharding.members(tree) == 1 else jax.tree.map(
          lambda x: x[first:stop], tree)
      name = label and (f'{label} members {first + 1}-{stop}/{population}'
                        if stop - first > 1 else
                        f'{label} member {stop}/{population}')
      # The other members' state (and teachers) stay in memory meanwhile.
      others = (compilation.tree_bytes(state)
                + compilation.tree_bytes(teachers or {})) * (
                    population - stop + first) // population
      state_part, result = self._run(
          plan.members(first, stop), updates, part(state), part(rngs),
          sources=sources,
          teachers=teachers and {n: part(t) for n, t in teachers.items()},
          values=values and {n: v[first:stop] for n, v in values.items()},
          label=name, members_in_all=population, resident_bytes=others)
      states.append(state_part)
      results.append(result)
    mesh = self.mesh(population)
    state = jax.device_put(
        jax.tree.map(lambda *xs: jnp.concatenate(xs), *states),
        sharding.member_sharding(mesh))
    return state, RunResult(
        measured={k: np.concatenate([r.measured[k] for r in results], axis=1)
                  for k in results[0].measured},
        seconds=sum(r.seconds for r in results),
        compile_seconds=sum(r.compile_seconds for r in results),
        flops=sum(r.flops for r in results))

  def _run(self, plan: plans.Plan, updates: Mapping[str, objectives.Update],
           state: TrainState, rngs: jax.Array, *,
           sources: Mapping[str, str] | None = None, teachers=None,
           values=None, label: str = '', members_in_all: int | None = None,
           resident_bytes: int = 0) -> tuple[TrainState, RunResult]:
    population = sharding.members(state)
    mesh = self.mesh(population)
    data = self.resident(mesh)
    arrays, segments = executors.upload_plan(
        plan, updates, mesh,
        lambda role: self.offsets[(sources or {}).get(role, role)],
        host=self.executor == executors.HOST)
    rngs = sharding.put(rngs, sharding.member_sharding(mesh))
    values = sharding.put({name: np.asarray(v, np.float32)
                           for name, v in (values or {}).items()},
                          sharding.member_sharding(mesh))
    if teachers is not None:
      teachers = {name: self.put_members(t, population)
                  for name, t in teachers.items()}
    memory = {'members': members_in_all or population,
              'resident_bytes': resident_bytes}
    progress = executors.Progress(label, plan, population, self.log_every_s,
                                  host=self.executor == executors.HOST)
    # Per group: the measurement buffers of a compiled loop, or each step's
    # measurements.
    outputs: dict[tuple, Any] = {}
    compile_before = self.compiler.seconds
    flops = 0.0
    start = time.perf_counter()
    for group, first, stop in segments:
      update = updates[group[0]]
      if group not in outputs:
        outputs[group] = [] if self.executor == executors.HOST else (
            self._measurement_buffers(update, mesh, state, data,
                                      arrays[group], rngs, teachers, values))
      i = first
      while i < stop:
        count = self._span(group, stop - i)
        state, outputs[group], step_flops, began = self._run_steps(
            update, mesh, i, count, state, data, arrays[group], rngs,
            teachers, values, outputs[group], memory)
        jax.block_until_ready(state.step)
        seconds = time.perf_counter() - began
        self._step_seconds[group] = seconds / count
        flops += step_flops * count
        i += count
        progress.advance(count, seconds, outputs[group], i)
    compile_seconds = self.compiler.seconds - compile_before
    return state, RunResult(
        measured=executors.measured(outputs, segments, len(plan),
                                    host=self.executor == executors.HOST),
        seconds=time.perf_counter() - start - compile_seconds,
        compile_seconds=compile_seconds, flops=flops)

  def _measurement_buffers(self, update, mesh, state, data, arrays, rngs,
                           teachers, values):
    """Zeros [steps, members, ...] for each measurement that the compiled
    loop over a group's steps writes."""
    shapes = jax.eval_shape(
        self.programs.population_step(update, mesh), state, data,
        {n: a[0] for n, a in arrays.items()}, rngs, teachers, values)[1]
    length = next(iter(arrays.values())).shape[0]
    return jax.device_put(
        jax.tree.map(lambda s: np.zeros((length,) + s.shape, s.dtype),
                     shapes),
        NamedSharding(mesh, P(None, sharding.MODEL_AXIS)))

  def _run_steps(self, update, mesh, first, count, state, data, arrays, rngs,
                 teachers, values, outputs, memory):
    """Runs steps first..first+count-1 of a group. Returns (state, outputs,
    flops of one step, when the steps began running after compiling)."""
    if self.executor == executors.HOST:
      state, began, step_flops = executors.dispatch_steps(
          self.compiler, self.programs.batch(mesh, update.augment),
          self.programs.host_update(update, mesh), mesh,
          range(first, first + count), state, data, arrays, rngs, teachers,
          values, outputs, **memory)
      return state, outputs, step_flops, began
    bounds = (np.int32(first), np.int32(first + count))
    compiled = self.compiler(self.programs.update_loop(update, mesh), state,
                             outputs, data, arrays, rngs, teachers, values,
                             *bounds, **memory)
    began = time.perf_counter()
    state, outputs = compiled.call(state, outputs, data, arrays, rngs,
                                   teachers, values, *bounds)
    return state, outputs, compiled.flops, began

  def _span(self, group, remaining: int) -> int:
    """Steps to run before the host looks again: about `log_every_s` worth,
    one step while the step time is still unknown."""
    seconds = self._step_seconds.get(group)
    count = 1 if seconds is None else max(
        1, min(remaining, int(self.log_every_s / max(seconds, 1e-6))))
    if jax.process_count() > 1:
      # Every process must run the same programs; the spans follow process
      # 0's timing.
      count = int(multihost_utils.broadcast_one_to_all(np.int32(count)))
    return count

  # ---------------------------------------------------------- evaluation

  def predict(self, variables, split: str) -> dict[str, np.ndarray]:
    """Eval-mode logits [members, n, outputs] and per-sample losses
    [members, n] of a population on a whole split, without augmentation.

    Eval mode has no batch dependence, so batches are padded to a size that
    shards evenly, and the padding is dropped afterwards.
    """
    population = sharding.members(variables)
    groups = self.member_groups(population)
    if len(groups) > 1:
      parts = [self.predict(jax.tree.map(lambda x: x[a:b], variables), split)
               for a, b in groups]
      return {key: np.concatenate([p[key] for p in parts])
              for key in parts[0]}
    mesh = self.mesh(population)
    data = self.resident(mesh)
    n = len(self.splits[split]['label'])
    ways = mesh.shape[sharding.DATA_AXIS]
    batch = max(ways, EVAL_IMAGES // population // ways * ways)
    # One batch per call: one compiled program for every split size, and at
    # most one batch of padding.
    padded = -(-n // batch) * batch
    order = (np.minimum(np.arange(padded), max(n - 1, 0))
             + self.offsets[split]).astype(np.int32)
    order = order.reshape(-1, batch)
    program = self.programs.predict(mesh, batch)
    variables = self.put_members(variables, population)
    logits, per_sample = [], []
    for indices in order:
      indices = jax.device_put(indices, sharding.replicated(mesh))
      compiled = self.compiler(program, variables, data, indices,
                               members=population)
      z, l = compiled.call(variables, data, indices)
      logits.append(z)
      per_sample.append(l)
    # [calls][members, batch, ...] -> [members, n, ...]
    logits = np.concatenate(sharding.to_host(logits), axis=1)[:, :n]
    per_sample = np.concatenate(sharding.to_host(per_sample), axis=1)[:, :n]
    return {'logits': logits, 'loss': per_sample}

