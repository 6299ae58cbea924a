"""How a run's update steps execute: on the host, or in a compiled loop.

The executor is chosen once from the devices' platform (`choose_executor`,
or forced by `config.engine.executor`):

- `loop` (accelerators): a run of steps executes as one compiled loop over
  the plan, with the state donated; the host only asks for the next span of
  steps, sized so that progress lines appear about every `log_every_s`. The
  loop's bounds are runtime values, so one compiled program serves every
  span: a span's length never triggers a compilation.
- `host` (CPU, where XLA runs convolutions inside a loop slowly): the host
  queues the span's steps one by one (`dispatch_steps`): per step, a shared
  program makes each batch (gather, augmentation) and the update's program
  takes them, so a program's shapes depend neither on the plan's length nor
  on which method runs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mufax import cluster
from mufax import compilation
from mufax import objectives
from mufax import plans
from mufax import sharding

HOST, LOOP = 'host', 'loop'
EXECUTORS = ('auto', HOST, LOOP)


def choose_executor(executor: str, platform: str) -> str:
  """`executor` ('auto', 'host' or 'loop') for devices of `platform`: auto
  is host dispatch on CPU and the compiled loop elsewhere."""
  if executor not in EXECUTORS:
    raise ValueError(f'Unknown executor {executor!r}; expected one of '
                     f'{EXECUTORS}.')
  if executor != 'auto':
    return executor
  return HOST if platform == 'cpu' else LOOP


def upload_plan(plan: plans.Plan, updates: Mapping[str, objectives.Update],
                mesh: Mesh, offset: Callable[[str], int], *, host: bool):
  """`plan.groups()`, their index arrays moved by `offset(role)` into the
  resident pool and laid on the devices."""
  arrays, segments = plan.groups(padded=frozenset(
      key for key, update in updates.items() if update.objective.pads))
  # On CPU each step's indices are uploaded as arrays of their own, so
  # that a program's shapes do not depend on the length of the plan and
  # methods of the same objective share it; a compiled loop takes the
  # group's steps, padded to a power of two for the same reason.
  for group_arrays in arrays.values():
    for role, a in group_arrays.items():
      a = np.where(a < 0, a, a + offset(role)).astype(np.int32)
      spec = (sharding.MODEL_AXIS, *sharding.batch_spec(mesh, a.shape[2]))
      group_arrays[role] = (
          jax.device_put(list(a), NamedSharding(mesh, P(*spec)))
          if host else
          jax.device_put(plans.pad_steps(a),
                         NamedSharding(mesh, P(None, *spec))))
  return arrays, segments


def dispatch_steps(compiler: compilation.Compiler, batch_program, program,
                   mesh, steps, state, data, arrays, rngs, teachers, values,
                   outputs, **memory):
  """Queues `steps` of a group on CPU: per step, a batch program for each
  batch and the update program, whose measurements go to `outputs`.
  Dispatches are asynchronous: the host only queues them. Returns (state,
  when the first step's programs were compiled, flops of one step)."""
  named = sorted(arrays.items())
  positions = [jax.device_put(np.int32(k), sharding.replicated(mesh))
               for k in range(len(named))]
  make_batch = update = None
  for j in steps:
    batch_args = [(state.step, data, a[j], rngs, positions[k])
                  for k, (_, a) in enumerate(named)]
    if make_batch is None:
      make_batch = [compiler(batch_program, *args, **memory)
                    for args in batch_args]
    batches = {name: compiled.call(*args) for (name, _), compiled, args
               in zip(named, make_batch, batch_args)}
    if update is None:
      update = compiler(program, state, batches, rngs, teachers, values,
                        **memory)
      began = time.perf_counter()
    state, step_measured = update.call(state, batches, rngs, teachers, values)
    outputs.append(step_measured)
  return state, began, update.flops + sum(c.flops for c in make_batch)


class Progress:
  """A run's progress lines, about every `log_every_s`: images per second
  of execution (not compilation) and the last step's loss."""

  def __init__(self, label: str, plan: plans.Plan, population: int,
               log_every_s: float, *, host: bool):
    self.label, self.population = label, population
    self.log_every_s, self.host = log_every_s, host
    # Images one member has seen after each step, real ones only.
    self.seen = np.cumsum([0] + [plan.images(i) for i in range(len(plan))])
    self.total, self.done, self.running = len(plan), 0, 0.0
    self.last_log = time.perf_counter()

  def advance(self, count: int, seconds: float, outputs, step: int) -> None:
    """`count` more steps ran in `seconds`, up to plan step `step`, their
    measurements in `outputs` (the group's)."""
    self.done += count
    self.running += seconds
    now = time.perf_counter()
    if not (self.label and now - self.last_log >= self.log_every_s
            and self.done < self.total and jax.process_index() == 0):
      return
    self.last_log = now
    last_loss = outputs[-1]['loss'] if self.host else outputs['loss']
    # This process's members only: a progress line must not start a
    # computation the other processes do not run.
    if not last_loss.is_fully_addressable:
      last_loss = last_loss.addressable_shards[0].data
    loss = np.asarray(last_loss if self.host else last_loss[step - 1]).mean()
    cluster.log(f'  {self.label} step {self.done}/{self.total}: '
        f'{self.seen[self.done] * self.population / self.running:.1f} img/s, '
        f'loss {loss:.4f}')


def measured(outputs, segments, total: int, *,
             host: bool) -> dict[str, np.ndarray]:
  """{measurement: [steps, members]} in plan order from each group's
  outputs (`host`: a list of each step's), for the measurements every kind
  of step makes (the loss, at least)."""
  fetched = sharding.to_host(outputs)
  measured: dict[str, list] = {}
  for group, first, stop in segments:
    values = fetched[group]
    if host:
      values = {name: np.stack([v[name] for v in values[first:stop]])
                for name in values[0]}
    else:
      values = {name: v[first:stop] for name, v in values.items()}
    for name, v in values.items():
      measured.setdefault(name, []).append(v)
  return {k: np.concatenate(v) for k, v in measured.items()
          if sum(len(x) for x in v) == total}
