"""What every unlearning method shares: the registry, the run context, the
jitted data-parallel update step and the loop that drives it.

A method (one module each) describes itself as stages: a plan of batches
(`loops`), an objective per kind of step, a learning rate, the BatchNorm mode
and which parameters train. `SGDMethod.run` turns the stages into models. The
original model's variables are never written: each stage copies them into
fresh buffers before its donated steps update them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from mufax import input_pipeline
from mufax import train
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
  model: nn.Module
  # 'softmax' or 'sigmoid' (train.LOSSES).
  loss: str
  # SPEC §4/§5 row: 'mufac', 'multilabel' or 'binary' (recipes.task_of).
  task: str
  # 'paper' (the reference's quirks) or 'clean'.
  protocol: str
  # {'forget', 'retain'} -> {'image', 'label'} numpy arrays.
  data: Mapping[str, Mapping[str, np.ndarray]]
  mesh: Mesh
  seed: int = 42
  # Overrides of the SPEC §5 hyperparameters; None keeps the reference value.
  hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  image_size: int | None = None
  log_every_s: float = 30.0
  # Trains a SPEC §4 model ('retrain', for `retrain`), or reuses its
  # checkpoint; returns (state, seconds its epochs took, recipe as a dict).
  train_from_scratch: Callable[[str], tuple[train.TrainState, float, dict]] | (
      None) = None
  _steps: dict = dataclasses.field(default_factory=dict, repr=False)

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
    """BatchNorm mode of a method's updates (SPEC §5).

    On MUFAC the reference left the model in eval mode for fine-tuning and
    both UNSIR stages (`reference_eval`); `paper` keeps that quirk.
    """
    return not (reference_eval and self.protocol == 'paper'
                and self.task == 'mufac')


@dataclasses.dataclass
class Row:
  """One model a method produced, for one row of the results table."""
  name: str
  variables: Any
  update_steps: int
  # Seconds spent producing the model, when the method knows better than the
  # runner's clock (a retrained model reused from its checkpoint).
  seconds: float | None = None
  # The hyperparameters the model was made with, for results.json.
  settings: dict = dataclasses.field(default_factory=dict)


class Forward:
  """The model as a function of images that threads BatchNorm statistics.

  In train mode each call normalises by the batch and updates the running
  statistics, in call order, as a PyTorch module in train mode does; in eval
  mode it uses and keeps them.
  """

  def __init__(self, model: nn.Module, params, batch_stats, *, train: bool):
    self.model, self.params, self.train = model, params, train
    self.batch_stats = batch_stats

  def apply(self, batch_stats, images):
    """Pure form: (logits, updated statistics)."""
    return train.apply_model(self.model, self.params, batch_stats, images,
                             train=self.train)

  def __call__(self, images: jax.Array) -> jax.Array:
    logits, self.batch_stats = self.apply(self.batch_stats, images)
    return logits.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Inputs:
  """The step's augmented batches and what objectives need besides the model.

  `teacher` is the original model in eval mode (None unless the stage asks
  for it); `loss(logits, labels)` is the task's mean loss.
  """
  batches: Mapping[str, tuple[jax.Array, jax.Array]]
  rng: jax.Array
  loss_kind: str
  teacher: Callable[[jax.Array], jax.Array] | None = None

  def images(self, name: str) -> jax.Array:
    return self.batches[name][0]

  def labels(self, name: str) -> jax.Array:
    return self.batches[name][1]

  def loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    return train.per_sample_loss(logits, labels, self.loss_kind).mean()


# loss(forward, inputs, prepared) -> (scalar to minimise, measurements).
LossFn = Callable[[Forward, Inputs, Any], tuple[jax.Array, dict]]
# prepare(forward, inputs) -> anything the loss needs that is not
# differentiated (teacher logits, UNSIR's noise); may run the model.
PrepareFn = Callable[[Forward, Inputs], Any]


@dataclasses.dataclass(frozen=True)
class Objective:
  loss: LossFn
  prepare: PrepareFn | None = None


@dataclasses.dataclass(frozen=True)
class Stage:
  """A run of SGD updates; `row` names the model reported at its end."""
  row: str | None
  # One entry per update step: (objective key, {data name: indices}).
  plan: list[tuple[str, dict[str, np.ndarray]]]
  objectives: Mapping[str, Objective]
  learning_rate: float
  bn_train: bool
  # Passes over the loop's driving split, as the reference counts them.
  epochs: int
  # Which top-level parameter groups train (None: all); see `param_group`.
  trainable: frozenset[str] | None = None
  uses_teacher: bool = False

  def settings(self) -> dict:
    return {'learning_rate': self.learning_rate, 'epochs': self.epochs,
            'batch_norm': 'train' if self.bn_train else 'eval',
            **({'trainable': sorted(self.trainable)} if self.trainable
               else {})}


def step_plan(key: str, plan: loops.Plan) -> list[tuple[str, dict]]:
  return [(key, batches) for batches in plan]


# ----------------------------------------------------------------- params

# Units a ResNet's parameters fall into, input to output; CF-k trains the
# last k of them.
PARAM_GROUPS = ('stem', 'layer1', 'layer2', 'layer3', 'layer4', 'fc')


def param_group(name: str) -> str:
  """'layer3_1' -> 'layer3'; the stem's conv1/bn1 -> 'stem'."""
  if name in ('conv1', 'bn1'):
    return 'stem'
  return name.split('_')[0]


def split_params(params, trainable: frozenset[str] | None):
  """(trainable, frozen) top-level parameter dicts."""
  if trainable is None:
    return params, {}
  train_part = {k: v for k, v in params.items() if param_group(k) in trainable}
  frozen = {k: v for k, v in params.items() if param_group(k) not in trainable}
  return train_part, frozen


# ------------------------------------------------------------------- steps


def sgd(learning_rate: float = 0.0) -> optax.GradientTransformation:
  """torch.optim.SGD without momentum or weight decay (SPEC §5).

  The learning rate lives in the optimizer state rather than in the compiled
  step, so one compiled step serves every learning rate.
  """
  return optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate)


def make_update_step(objective: Objective, *, model: nn.Module, loss: str,
                     mesh: Mesh, bn_train: bool,
                     trainable: frozenset[str] | None,
                     image_size: int | None) -> Callable:
  """Jitted `(state, batches, rng, teacher) -> (state, measurements)`.

  `batches` maps data names to sharded {'image', 'label'} batches; each is
  augmented on the device with the train transform. `teacher` is the
  original's variables (or None). The state, whose optimizer state holds the
  learning rate (`sgd`), is donated. Frozen parameters are outside the
  differentiated function, so they stay bit-identical and cost no gradient.
  """
  tx = sgd()

  def step(state: train.TrainState, batches, rng, teacher):
    rng = jax.random.fold_in(rng, state.step)
    augmented = {}
    for i, name in enumerate(sorted(batches)):
      images = train.preprocess(batches[name]['image'], image_size)
      augmented[name] = (
          input_pipeline.augment(images, jax.random.fold_in(rng, i)),
          batches[name]['label'])
    teacher_fn = None
    if teacher is not None:
      teacher_fn = Forward(model, teacher['params'], teacher['batch_stats'],
                           train=False)
    inputs = Inputs(augmented, jax.random.fold_in(rng, len(batches)), loss,
                    teacher_fn)
    forward = Forward(model, state.params, state.batch_stats, train=bn_train)
    prepared = (objective.prepare(forward, inputs)
                if objective.prepare is not None else None)
    trained, frozen = split_params(state.params, trainable)

    def objective_fn(trained):
      f = Forward(model, {**frozen, **trained}, forward.batch_stats,
                  train=bn_train)
      value, measured = objective.loss(f, inputs, prepared)
      return value, (f.batch_stats, measured)

    (value, (batch_stats, measured)), grads = jax.value_and_grad(
        objective_fn, has_aux=True)(trained)
    updates, opt_state = tx.update(grads, state.opt_state, trained)
    trained = optax.apply_updates(trained, updates)
    return state.replace(step=state.step + 1, params={**frozen, **trained},
                         batch_stats=batch_stats, opt_state=opt_state), {
                             'loss': value, **measured}

  replicated = train.replicated(mesh)
  return jax.jit(step, donate_argnums=0,
                 out_shardings=(replicated, replicated))


def fresh_state(variables, *, learning_rate: float,
                trainable: frozenset[str] | None,
                mesh: Mesh) -> train.TrainState:
  """A state holding copies of `variables`, so donation never frees them."""

  def build(variables):
    params = jax.tree.map(jnp.copy, variables['params'])
    trained, _ = split_params(params, trainable)
    return train.TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        batch_stats=jax.tree.map(jnp.copy, variables['batch_stats']),
        opt_state=sgd(learning_rate).init(trained))

  return jax.jit(build, out_shardings=train.replicated(mesh))(variables)


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
    raise NotImplementedError

  def settings(self, ctx: Context) -> dict:
    """Method-level hyperparameters reported with every row."""
    return {}

  def row_names(self, ctx: Context) -> list[str]:
    return [s.row for s in self.stages(ctx) if s.row]

  def run(self, ctx: Context, original) -> Iterator[Row]:
    variables, steps = original, 0
    history = []
    for index, stage in enumerate(self.stages(ctx)):
      variables, done = _run_stage(ctx, stage, variables, index=index,
                                   label=stage.row or self.name)
      steps += done
      history.append(stage.settings() | {'steps': done})
      if stage.row:
        settings = {'batch_size': ctx.batch_size} | self.settings(ctx) | (
            history[0] if len(history) == 1 else {'stages': list(history)})
        yield Row(stage.row, variables, steps, settings=settings)


def _run_stage(ctx: Context, stage: Stage, variables, *, index: int,
               label: str):
  """Runs one stage's plan from `variables`; returns (variables, steps)."""
  steps = {}
  for key, objective in stage.objectives.items():
    cache_key = (objective, stage.bn_train, stage.trainable)
    if cache_key not in ctx._steps:
      ctx._steps[cache_key] = make_update_step(
          objective, model=ctx.model, loss=ctx.loss, mesh=ctx.mesh,
          bn_train=stage.bn_train, trainable=stage.trainable,
          image_size=ctx.image_size)
    steps[key] = ctx._steps[cache_key]
  state = fresh_state(variables, learning_rate=stage.learning_rate,
                      trainable=stage.trainable, mesh=ctx.mesh)
  # The stage's starting model, never donated, so it stays unchanged.
  teacher = variables if stage.uses_teacher else None
  rng = train.replicate(
      jax.random.fold_in(jax.random.key(ctx.seed), index), ctx.mesh)
  total = len(stage.plan)
  start = last = time.perf_counter()
  images = 0
  train.log(f'{label}: {total} update steps, learning rate '
            f'{stage.learning_rate}, BatchNorm in '
            f'{"train" if stage.bn_train else "eval"} mode')
  measured = {}
  for i, (key, indices) in enumerate(stage.plan):
    batches = {name: train.shard_batch(
        {'image': ctx.data[name]['image'][idx],
         'label': ctx.data[name]['label'][idx]}, ctx.mesh)
               for name, idx in indices.items()}
    state, measured = steps[key](state, batches, rng, teacher)
    images += sum(len(idx) for idx in indices.values())
    now = time.perf_counter()
    if now - last >= ctx.log_every_s and i + 1 < total:
      last = now
      train.log(f'  {label} step {i + 1}/{total}: '
                f'{images / (now - start):.1f} img/s, '
                f'loss {float(measured["loss"]):.4f}')
  if measured:
    train.log(f'  {label} done in {time.perf_counter() - start:.1f} s, last '
              f'loss {float(measured["loss"]):.4f}')
  return state.variables, total
