"""What every unlearning method shares: the registry, the run context and
the stages that the engine runs.

A method (one module each) describes one model's unlearning as stages: a plan
of batches (`plans`), an objective per kind of step, a learning rate, the
BatchNorm mode and which parameters train. `SGDMethod.run` plans every
member of the population with its own seed and hands the stages to the
engine, which runs them for the whole population at once. The original
model's variables are never written: each stage copies them into fresh
buffers before its donated steps update them.
"""

from __future__ import annotations

import dataclasses
import time
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from mufax import checkpoints
from mufax import cluster
from mufax import engine as engine_lib
from mufax import gradient_sums
from mufax import objectives as objectives_lib
from mufax import optimizers
from mufax import plans
from mufax import tasks
from mufax.unlearning.hparams import Hparams
from mufax.unlearning.hparams import SGDHparams
from mufax.unlearning.hparams import check_search_spaces

METHODS: dict[str, Method] = {}


def register(name: str):
  """Class decorator: makes a method available as `config.methods=name`."""

  def wrap(cls):
    if name in METHODS:
      raise ValueError(f'Unlearning method {name!r} is registered twice.')
    check_search_spaces(name, cls.Hparams)
    METHODS[name] = cls(name)
    return cls

  return wrap


# Whether the reference notebook of each task family fine-tuned and ran UNSIR
# with the model in eval mode (`Context.bn_train`).
REFERENCE_EVAL_MODE = {'mufac': True, 'multilabel': False, 'binary': False}


@dataclasses.dataclass
class Context:
  """Everything a method may use; built once per run by the runner."""
  # What the model predicts: its loss, outputs and family.
  task: tasks.Task
  # 'paper' (the reference's quirks) or 'clean'.
  protocol: str
  # {'forget', 'retain', ...} -> {'label', ...}: what plans are made from.
  data: Mapping[str, Mapping[str, np.ndarray]]
  # One seed per member of the population (the run's: config.seed + k).
  seeds: tuple[int, ...]
  # Runs the stages; None where only plans are wanted.
  engine: engine_lib.Engine | None = None
  # Values of `config.unlearn.<method>`: overrides of the method's
  # `Hparams` (None or absent keeps the default).
  hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  # A sweep's: each member's own overrides, in place of `hparams`; members
  # may differ only in `per_member` fields.
  member_hparams: tuple[Mapping[str, Any], ...] | None = None
  # Trains a protocol §4 population ('retrain', for `retrain`), or reuses its
  # checkpoint, and returns its row (`train.from_scratch`).
  train_from_scratch: Callable[[str], Row] | None = None
  # Where a method saves its progress after each stage
  # (checkpoints.Progress), so that a killed run resumes inside it; None
  # saves nothing.
  progress_dir: str | None = None

  @property
  def seed(self) -> int:
    """The seed of a one-member context, as `stages` sees it."""
    return self.seeds[0]

  def for_seed(self, seed: int) -> Context:
    return dataclasses.replace(self, seeds=(seed,))

  def member(self, k: int) -> Context:
    """The one-member context of member `k`: its seed and overrides."""
    return dataclasses.replace(
        self, seeds=(self.seeds[k],), member_hparams=None,
        hparams=(self.member_hparams[k] if self.member_hparams
                 else self.hparams))

  def size(self, name: str) -> int:
    return len(self.data[name]['label'])

  def bn_train(self, *, reference_eval: bool = False) -> bool:
    """BatchNorm mode of a method's updates (protocol §5).

    On MUFAC the reference left the model in eval mode for fine-tuning and
    both UNSIR stages (`reference_eval`); `paper` keeps that quirk.
    """
    return not (reference_eval and self.protocol == 'paper'
                and self.task.per_family(REFERENCE_EVAL_MODE))


@dataclasses.dataclass
class Row:
  """One population a method produced, for one row of the results table."""
  name: str
  # Variables with a leading model axis, one member per seed.
  variables: Any
  update_steps: int
  # Seconds the updates took (all stages so far, all members at once), and
  # seconds spent compiling them.
  seconds: float
  compile_seconds: float = 0.0
  # XLA-counted flops of the update steps, all members.
  flops: float = 0.0
  # The hyperparameters the model was made with, for results.json.
  settings: dict = dataclasses.field(default_factory=dict)
  # Set when a loss became NaN or infinite: {'step': the first such update
  # step (1-based, over the method's stages), 'stage', 'seeds' (the members
  # it happened to), 'last_finite_loss'}; `variables` are then unusable.
  diverged: dict | None = None


@dataclasses.dataclass(frozen=True)
class Stage:
  """A run of updates over planned batches; `row` names the model reported
  at its end."""
  row: str | None
  # One entry per update step: (objective key, {data name: indices}).
  plan: plans.Steps
  objectives: Mapping[str, objectives_lib.Objective]
  learning_rate: float
  bn_train: bool
  # Passes over the loop's driving split, as the reference counts them.
  epochs: int
  # Which parameter groups train (None: all); see `models.param_group`.
  trainable: frozenset[str] | None = None
  # Models the objectives may call (`inputs.teacher(images, name)`), in eval
  # mode: 'original', or one of the method's `teachers`.
  teachers: tuple[str, ...] = ()
  # A key of `optimizers.OPTIMIZERS` or `gradient_sums.GRADIENT_SUMS`. The
  # gradient sums update nothing: they leave their sums (a population's
  # params-shaped tree) under `name` for the stages after them.
  optimizer: str = 'sgd'
  momentum: float = 0.0
  name: str = ''
  # False: batches as stored, without the training transforms (e.g. SSD's
  # importances, measured on plain images as its reference does).
  augment: bool = True
  # Population-level hooks, run at the stage's start with (variables,
  # measurements {name: sums}, rngs one key per member, values {name: float64
  # [members]} of `values`): `edit` returns the variables to start from
  # (e.g. dampened or re-initialised weights); `gradient_scale` the
  # params-shaped multipliers of `scaled_sgd`.
  edit: Callable | None = None
  gradient_scale: Callable | None = None
  # Values that the objectives (`Inputs.value`) and hooks read per member, by
  # name: the members of a sweep's program may differ in these (and in the
  # learning rate) alone, so none of them is compiled in.
  values: Mapping[str, float] = dataclasses.field(default_factory=dict)

  @property
  def measures(self) -> bool:
    return self.optimizer in gradient_sums.GRADIENT_SUMS

  def settings(self) -> dict:
    if self.measures:
      return {'measures': self.name, 'batch_norm': 'train' if self.bn_train
              else 'eval'}
    return {'learning_rate': self.learning_rate, 'epochs': self.epochs,
            'batch_norm': 'train' if self.bn_train else 'eval',
            **({'optimizer': self.optimizer}
               if self.optimizer not in ('sgd', 'scaled_sgd') else {}),
            **({'momentum': self.momentum} if self.momentum else {}),
            **({'trainable': sorted(self.trainable)} if self.trainable
               else {})}


def member_settings(stages: typing.Sequence[Stage]
                    ) -> tuple[list | None, dict[str, np.ndarray]]:
  """(the members' learning rates of one stage where they differ, else
  None; {value name: the members' values, float64 [members]}); members
  whose stages differ in anything else the engine reads from the first are
  refused, as one program runs them all."""
  first = dataclasses.replace(stages[0], learning_rate=0.0).settings()
  for stage in stages[1:]:
    if (dataclasses.replace(stage, learning_rate=0.0).settings() != first
        or len(stage.plan) != len(stages[0].plan)
        or set(stage.values) != set(stages[0].values)):
      raise ValueError(
          f'Stage {stages[0].name or stages[0].row!r}: members of one '
          'program differ in more than the learning rate and values: '
          f'{first} against {stage.settings()}.')
  rates = [stage.learning_rate for stage in stages]
  values = {name: np.asarray([float(s.values[name]) for s in stages])
            for name in sorted(stages[0].values)}
  return (None if len(set(rates)) == 1 else rates), values


# --------------------------------------------------------------- methods


class Unsupported(ValueError):
  """A method that does not apply to the task; one line saying why."""



class Method:
  """An unlearning method: `run` yields the rows it produces."""
  # Whether `run` starts from the original model; the runner passes None
  # to a method that does not, without loading the original.
  needs_original = True
  # The method's hyperparameters (`config.unlearn.<name>`).
  Hparams: type[Hparams] = Hparams

  def __init__(self, name: str):
    self.name = name

  def hparams(self, ctx: Context) -> Hparams:
    return self.Hparams.from_overrides(ctx.hparams)

  def row_names(self, ctx: Context) -> list[str]:
    return [self.name]

  def run(self, ctx: Context, original) -> Iterator[Row]:
    raise NotImplementedError


class SGDMethod(Method):
  """A method made of `stages`, each a loop of updates over planned
  batches."""
  Hparams = SGDHparams

  def stages(self, ctx: Context) -> list[Stage]:
    """One model's stages; `ctx.seed` is that model's seed."""
    raise NotImplementedError

  def settings(self, ctx: Context) -> dict:
    """Method-level hyperparameters reported with every row."""
    return self.hparams(ctx).settings()

  def teachers(self, ctx: Context, original) -> dict[str, Any]:
    """The models stages may name in `Stage.teachers`, by name: a
    population each (or one model that every member shares)."""
    return {'original': original}

  def row_names(self, ctx: Context) -> list[str]:
    return [s.row for s in self.stages(ctx.for_seed(ctx.seed)) if s.row]

  def _run_stage(self, ctx, stage, plan, variables, rngs, measurements,
                 label, teachers, learning_rates, values):
    engine, population = ctx.engine, len(ctx.seeds)
    update_tx, make_tx = (optimizers.OPTIMIZERS
                          | gradient_sums.GRADIENT_SUMS)[stage.optimizer]
    updates = {key: objectives_lib.Update(objective, update_tx,
                                          stage.bn_train, stage.trainable,
                                          stage.augment)
               for key, objective in stage.objectives.items()}
    state = engine.state_from(
        variables, make_tx(stage.learning_rate, stage.momentum),
        trainable=stage.trainable, population=population)
    if learning_rates is not None:
      state = optimizers.with_learning_rate(state, np.asarray(learning_rates))
    if stage.gradient_scale is not None:
      scale = engine.put_members(stage.gradient_scale(
          state.variables, measurements, rngs, values), population)
      state = state.replace(opt_state=(optimizers.GradientScale(scale),)
                            + tuple(state.opt_state[1:]))
    cluster.log(
        f'{label}: {len(plan)} '
        + ('gradient passes' if stage.measures else
           'update steps, learning rate ' + (
               f'{stage.learning_rate}' if learning_rates is None else
               f'{min(learning_rates):.3g}..{max(learning_rates):.3g}'))
        + f', BatchNorm in {"train" if stage.bn_train else "eval"} mode'
        + (f', {population} models' if population > 1 else ''))
    state, result = engine.run(
        plan, updates, state, rngs,
        teachers={n: teachers[n] for n in stage.teachers} or None,
        values=values, label=label)
    cluster.log(f'  {label} done in {result.seconds:.1f} s '
                f'(+{result.compile_seconds:.1f} s compiling), last '
                f'loss {result.measured["loss"][-1].mean():.4f}')
    return state, result

  def run(self, ctx: Context, original) -> Iterator[Row]:
    """The population of `original` (one member per seed, or one member
    shared by all) through every stage, each member with its own seed.

    With `ctx.progress_dir`, the state after each stage is saved once the
    rows before it are handed on, and a run started again resumes after the
    last saved stage.
    """
    engine = ctx.engine
    population = len(ctx.seeds)
    per_member = [self.stages(ctx.member(k)) for k in range(population)]
    progress = (checkpoints.Progress(ctx.progress_dir) if ctx.progress_dir
                else None)
    variables, measurements, done = self._resume(
        ctx, progress, original, len(per_member[0]))
    teachers = None
    history = done['history']
    for index, stages in enumerate(zip(*per_member)):
      if index < done['finished']:
        continue
      stage = stages[0]
      label = stage.row or stage.name or self.name
      learning_rates, values = member_settings(stages)
      plan = plans.Plan.stack([s.plan for s in stages])
      rngs = jax.vmap(lambda s, i=index: jax.random.fold_in(
          jax.random.key(s), i))(np.asarray(ctx.seeds, np.int32))
      if stage.edit is not None:
        began = time.perf_counter()
        variables = jax.block_until_ready(stage.edit(
            engine.put_members(variables, population), measurements, rngs,
            values))
        done['seconds'] += time.perf_counter() - began
      if len(plan):
        if stage.teachers and teachers is None:
          teachers = self.teachers(ctx, original)
        state, result = self._run_stage(ctx, stage, plan, variables, rngs,
                                        measurements, label, teachers,
                                        learning_rates, values)
        diverged = self._add_run(ctx, done, result, label)
        if diverged:
          later = [s.row for s in per_member[0][index:] if s.row]
          for row in later:
            yield self._row(ctx, row, None, done, done['steps'] + len(plan),
                            diverged=diverged)
          break
        if stage.measures:
          measurements[stage.name] = state.opt_state
        else:
          variables = state.variables
        done['steps'] += len(plan)
      history.append(stage.settings() | {'steps': len(plan)})
      if stage.row:
        yield self._row(ctx, stage.row, variables, done, done['steps'])
      done['finished'] = index + 1
      if progress and done['finished'] < len(per_member[0]):
        progress.save(done['finished'], {'variables': variables} | (
            {'measurements': measurements} if measurements else {}), done)
        cluster.log(f'  {label}: progress saved')
    if progress:
      progress.clear()

  def _resume(self, ctx, progress, original, stage_count: int):
    """(variables, measurements, done so far) to start from: the original
    model, or what `progress` saved after a stage."""
    done = {'finished': 0, 'steps': 0, 'seconds': 0.0,
            'compile_seconds': 0.0, 'flops': 0.0, 'history': []}
    saved = progress.restore() if progress else None
    if not saved:
      return original, {}, done
    _, arrays, done = saved
    cluster.log(f'{self.name}: resuming after stage {done["finished"]} '
                f'of {stage_count} from {ctx.progress_dir}')
    return arrays['variables'], arrays.get('measurements', {}), done

  def _add_run(self, ctx, done, result, label) -> dict | None:
    """Adds a stage's run to `done`; returns where its loss stopped being
    finite (`engine.divergence`, the step counted over the method's
    stages), or None."""
    done['seconds'] += result.seconds
    done['compile_seconds'] += result.compile_seconds
    done['flops'] += result.flops
    diverged = engine_lib.divergence(result.measured['loss'], ctx.seeds)
    if diverged:
      diverged.update(step=done['steps'] + diverged['step'], stage=label)
      cluster.log(f'{self.name} diverged at update step '
                  f'{diverged["step"]} ({label}); its rows are recorded as '
                  'diverged')
    return diverged

  def _row(self, ctx, name, variables, done, steps, diverged=None) -> Row:
    history = done['history']
    settings = self.settings(ctx) | (
        history[0] if len(history) == 1 else {'stages': list(history)})
    return Row(name, variables, steps, seconds=done['seconds'],
               compile_seconds=done['compile_seconds'], flops=done['flops'],
               settings=self.settings(ctx) if diverged else settings,
               diverged=diverged)
