"""What every unlearning method shares: the registry, the run context and
the stages that the engine runs.

A method (one module each) describes one model's unlearning as stages: a plan
of batches (`loops`), an objective per kind of step, a learning rate, the
BatchNorm mode and which parameters train. `SGDMethod.run` plans every
member of the population with its own seed and hands the stages to the
engine, which runs them for the whole population at once. The original
model's variables are never written: each stage copies them into fresh
buffers before its donated steps update them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from mufax import engine as engine_lib
from mufax.unlearning import loops

METHODS: dict[str, Method] = {}


def register(name: str):
  """Class decorator: makes a method available as `config.methods=name`."""

  def wrap(cls):
    if name in METHODS:
      raise ValueError(f'Unlearning method {name!r} is registered twice.')
    METHODS[name] = cls(name)
    return cls

  return wrap


@dataclasses.dataclass
class Context:
  """Everything a method may use; built once per run by the runner."""
  # 'softmax' or 'sigmoid' (losses.LOSSES).
  loss: str
  # Protocol §4/§5 row: 'mufac', 'multilabel' or 'binary'
  # (tasks.task_of(dataset).family).
  task: str
  # 'paper' (the reference's quirks) or 'clean'.
  protocol: str
  # {'forget', 'retain', ...} -> {'label', ...}: what plans are made from.
  data: Mapping[str, Mapping[str, np.ndarray]]
  # Runs the stages; None where only plans are wanted.
  engine: engine_lib.Engine | None = None
  # One seed per member of the population.
  seeds: tuple[int, ...] = (42,)
  # Overrides of the protocol §5 hyperparameters; None keeps the reference.
  hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  # Trains a protocol §4 population ('retrain', for `retrain`), or reuses its
  # checkpoint; returns (state, seconds its epochs took, recipe as a dict,
  # history).
  train_from_scratch: Callable[[str], tuple] | None = None

  @property
  def seed(self) -> int:
    """The seed of a one-member context, as `stages` sees it."""
    return self.seeds[0]

  def for_seed(self, seed: int) -> Context:
    return dataclasses.replace(self, seeds=(seed,))

  def size(self, name: str) -> int:
    return len(self.data[name]['label'])

  def hp(self, name: str, reference):
    """The config's value of hyperparameter `name`, else the reference's."""
    value = self.hparams.get(name)
    return reference if value is None else value

  @property
  def batch_size(self) -> int:
    return self.hp('batch_size', 64)

  def bn_train(self, *, reference_eval: bool = False) -> bool:
    """BatchNorm mode of a method's updates (protocol §5).

    On MUFAC the reference left the model in eval mode for fine-tuning and
    both UNSIR stages (`reference_eval`); `paper` keeps that quirk.
    """
    return not (reference_eval and self.protocol == 'paper'
                and self.task == 'mufac')


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


@dataclasses.dataclass(frozen=True)
class Stage:
  """A run of SGD updates; `row` names the model reported at its end."""
  row: str | None
  # One entry per update step: (objective key, {data name: indices}).
  plan: list[tuple[str, dict[str, np.ndarray]]]
  objectives: Mapping[str, engine_lib.Objective]
  learning_rate: float
  bn_train: bool
  # Passes over the loop's driving split, as the reference counts them.
  epochs: int
  # Which parameter groups train (None: all); see `models.param_group`.
  trainable: frozenset[str] | None = None
  uses_teacher: bool = False

  def settings(self) -> dict:
    return {'learning_rate': self.learning_rate, 'epochs': self.epochs,
            'batch_norm': 'train' if self.bn_train else 'eval',
            **({'trainable': sorted(self.trainable)} if self.trainable
               else {})}


def step_plan(key: str, plan: loops.Plan) -> list[tuple[str, dict]]:
  return [(key, batches) for batches in plan]


# --------------------------------------------------------------- methods


class Method:
  """An unlearning method: `run` yields the rows it produces."""
  # Whether `run` starts from the original model; the runner passes None
  # to a method that does not, without loading the original.
  needs_original = True

  def __init__(self, name: str):
    self.name = name

  def row_names(self, ctx: Context) -> list[str]:
    return [self.name]

  def run(self, ctx: Context, original) -> Iterator[Row]:
    raise NotImplementedError


class SGDMethod(Method):
  """A method made of `stages`, each a plain-SGD loop over planned batches."""

  def stages(self, ctx: Context) -> list[Stage]:
    """One model's stages; `ctx.seed` is that model's seed."""
    raise NotImplementedError

  def settings(self, ctx: Context) -> dict:
    """Method-level hyperparameters reported with every row."""
    return {}

  def row_names(self, ctx: Context) -> list[str]:
    return [s.row for s in self.stages(ctx.for_seed(ctx.seed)) if s.row]

  def run(self, ctx: Context, original) -> Iterator[Row]:
    """The population of `original` (one member per seed, or one member
    shared by all) through every stage, each member with its own seed."""
    engine = ctx.engine
    population = len(ctx.seeds)
    per_member = [self.stages(ctx.for_seed(s)) for s in ctx.seeds]
    variables, steps, seconds, compile_seconds, flops = original, 0, 0., 0., 0.
    history = []
    for index, stages in enumerate(zip(*per_member)):
      stage = stages[0]
      label = stage.row or self.name
      plan = engine_lib.Plan.stack([s.plan for s in stages])
      updates = {key: engine_lib.Update(objective, engine_lib.SGD, stage.bn_train,
                                        stage.trainable)
                 for key, objective in stage.objectives.items()}
      state = engine.state_from(variables, engine_lib.sgd(stage.learning_rate),
                                trainable=stage.trainable,
                                population=population)
      rngs = jax.vmap(lambda s, i=index: jax.random.fold_in(
          jax.random.key(s), i))(np.asarray(ctx.seeds, np.int32))
      engine_lib.log(
          f'{label}: {len(plan)} update steps, learning rate '
          f'{stage.learning_rate}, BatchNorm in '
          f'{"train" if stage.bn_train else "eval"} mode'
          + (f', {population} models' if population > 1 else ''))
      state, result = engine.run(
          plan, updates, state, rngs,
          teacher=original if stage.uses_teacher else None, label=label)
      if len(plan):
        engine_lib.log(f'  {label} done in {result.seconds:.1f} s '
                       f'(+{result.compile_seconds:.1f} s compiling), last '
                       f'loss {result.measured["loss"][-1].mean():.4f}')
      variables = state.variables
      steps += len(plan)
      seconds += result.seconds
      compile_seconds += result.compile_seconds
      flops += result.flops
      history.append(stage.settings() | {'steps': len(plan)})
      if stage.row:
        settings = {'batch_size': ctx.batch_size} | self.settings(ctx) | (
            history[0] if len(history) == 1 else {'stages': list(history)})
        yield Row(stage.row, variables, steps, seconds=seconds,
                  compile_seconds=compile_seconds, flops=flops,
                  settings=settings)
