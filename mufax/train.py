"""Training from scratch (protocol §4): recipes, `fit`, which trains a
population of models epoch by epoch through the engine, saving a
checkpoint at the end of an epoch once `checkpoint_every_s` has passed, and
`from_scratch`, the original or retrained population a config asks for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from mufax import checkpoints
from mufax import cluster
from mufax import engine as engine_lib
from mufax import losses
from mufax import objectives
from mufax import optimizers
from mufax import plans
from mufax import recipes
from mufax import run_config
from mufax import sharding
from mufax import tasks
from mufax import unlearning

# What each from-scratch model trains on.
TRAIN_SPLIT = {'original': 'train', 'retrain': 'retain', 'oracle': 'retain'}


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How a model is trained from scratch (protocol §4)."""
  learning_rate: float
  momentum: float
  epochs: int
  # The learning rate is divided by 10 at the start of each of these epochs.
  decay_epochs: tuple[int, ...] = ()
  batch_size: int = 64

  @classmethod
  def from_config(cls, config) -> Recipe:
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in dict(config).items() if k in fields}
    values['decay_epochs'] = tuple(values.get('decay_epochs', ()))
    return cls(**values)


def recipe_of(config, task: tasks.Task, kind: str) -> Recipe:
  """Protocol §4's recipe of `kind` for the task, with the config's
  overrides."""
  # The oracle is a second retraining, with retraining's recipe.
  kind = 'retrain' if kind == 'oracle' else kind
  values = dict(task.per_family(recipes.RECIPES)[kind])
  values.update({k: v for k, v in config[kind].items() if v is not None})
  r = Recipe.from_config(values)
  if r.epochs < 1 or r.batch_size < 1 or r.learning_rate <= 0:
    raise run_config.ConfigError(
        f'config.{kind}: epochs and batch_size must be >= 1 and '
        f'learning_rate > 0, got {r}.')
  return r


def learning_rate(recipe: Recipe, epoch: int) -> float:
  """The recipe's learning rate in `epoch` (0-based): torch's MultiStepLR."""
  return recipe.learning_rate * 0.1 ** sum(epoch >= e
                                           for e in recipe.decay_epochs)


def architecture(model_repr: str) -> str:
  """A model's repr without its formulations (`conv =`, `pool =` lines):
  they change float rounding, not what a checkpoint holds, and the repr of a
  function holds its address."""
  return '\n'.join(line for line in model_repr.split('\n')
                   if not line.strip().startswith(('conv =', 'pool =')))


def augmentation_keys(seeds: Sequence[int]) -> jax.Array:
  """Member k's key for its augmentation draws, beside its init key."""
  return jax.vmap(lambda s: jax.random.split(jax.random.key(s))[1])(
      np.asarray(seeds, np.int32))


def member_pools(n: int, masks: np.ndarray | None,
                 population: int) -> list[np.ndarray]:
  """Each member's examples: all `n`, or those its mask row selects."""
  if masks is None:
    return [np.arange(n)] * population
  masks = np.asarray(masks, bool)
  if masks.shape != (population, n):
    raise ValueError(f'Example masks have shape {masks.shape}; expected '
                     f'({population}, {n}): one row per member.')
  sizes = set(masks.sum(axis=1).tolist())
  if len(sizes) != 1 or not sizes.pop():
    raise ValueError('Every member must train on the same, non-zero number '
                     'of examples, so that all take the same steps; masks '
                     f'select {sorted(set(masks.sum(axis=1).tolist()))}.')
  return [np.flatnonzero(m) for m in masks]


def from_scratch(kind: str, config, *, task: tasks.Task,
                 engine: engine_lib.Engine, workdir: str) -> unlearning.Row:
  """The original (on train) or retrained (on retain) population of
  protocol §4, one model per seed.

  Reuses or resumes the checkpoint of an earlier run with the same settings;
  the row's seconds are those its epochs took, over all runs that trained it.
  """
  r = recipe_of(config, task, kind)
  seeds = run_config.seeds_of(config, kind)
  split = TRAIN_SPLIT[kind]
  cluster.log(f'{kind}: training on {split} '
              f'({len(engine.splits[split]["label"])} images)'
              + (f', {len(seeds)} models' if len(seeds) > 1 else '')
              + f', {r}')
  try:
    state, history = fit(
        r, engine=engine, split=split, seeds=seeds, eval_split='test',
        checkpoint_dir=checkpoints.folder(config, workdir, kind, seeds),
        checkpoint_every_s=config.checkpoint_every_s)
  except engine_lib.Diverged as e:
    raise engine_lib.Diverged(f'{kind}: {e}: lower '
                              f'config.{kind}.learning_rate.') from e
  return unlearning.Row(
      kind, state.variables, update_steps=int(sharding.to_host(state.step)[0]),
      seconds=sum(h['seconds'] for h in history),
      compile_seconds=sum(h.get('compile_seconds', 0.0) for h in history),
      flops=sum(h.get('flops', 0.0) for h in history),
      settings=dataclasses.asdict(r) | {'batch_norm': 'train'})


def fit(recipe: Recipe, *, engine: engine_lib.Engine, split: str,
        seeds: Sequence[int], checkpoint_dir: str,
        eval_split: str | None = None, masks: np.ndarray | None = None,
        on_epoch_end: Callable[[int, dict], None] | None = None,
        checkpoint_every_s: float = 0.0
        ) -> tuple[engine_lib.TrainState, list[dict]]:
  """Trains one model per seed from scratch on `engine.splits[split]`.

  Member k is initialised, ordered and augmented from `seeds[k]`, and trains
  on the examples of row k of `masks` (default: all). Saves the population
  in `checkpoint_dir` after the last epoch and after every epoch that ends
  `checkpoint_every_s` or more after the last save (0: every epoch), and
  resumes from the last saved epoch when started again with the same
  recipe, so that a killed run ends with the same parameters as an
  uninterrupted one. Returns the final state and one log record per epoch
  (means over the members).
  """
  n = len(engine.splits[split]['label'])
  if n == 0:
    raise ValueError(f'The training split {split!r} is empty.')
  population = len(seeds)
  pools = member_pools(n, masks, population)
  fingerprint = _fingerprint(recipe, engine, seeds, n, masks)
  update = objectives.Update(objectives.TASK_OBJECTIVE, optimizers.SGD)
  manager = checkpoints.open_manager(checkpoint_dir)
  state, history = _start(manager, checkpoint_dir, fingerprint, engine,
                          recipe, seeds)
  rngs = augmentation_keys(seeds)
  # A save runs beside the next epoch and slows it: by a sixth for the
  # quick start's sub-second epochs on a 2-core CPU.
  last_save = time.perf_counter()
  try:
    for epoch in range(len(history), recipe.epochs):
      plan = plans.Plan.stack(plans.epoch_plan(
          pools, batch_size=recipe.batch_size, seeds=seeds, epoch=epoch))
      state = optimizers.with_learning_rate(state,
                                            learning_rate(recipe, epoch))
      state, result = engine.run(plan, {'train': update}, state, rngs,
                                 sources={'train': split},
                                 label=f'epoch {epoch + 1}/{recipe.epochs}')
      _refuse_divergence(result, seeds, split, epoch, recipe)
      history.append(_epoch_record(epoch, plan, result, population, engine,
                                   state, eval_split))
      _log_epoch(history[-1], recipe)
      if (epoch + 1 == recipe.epochs
          or time.perf_counter() - last_save >= checkpoint_every_s):
        last_save = time.perf_counter()
        _save_epoch(manager, checkpoint_dir, state, fingerprint, history,
                    wait=on_epoch_end is not None)
      if on_epoch_end is not None:
        on_epoch_end(epoch, history[-1])
    checkpoints.save(manager, checkpoint_dir, recipe.epochs)
  except BaseException:
    # What stopped the run is the error to show, not a save left behind.
    with contextlib.suppress(Exception):
      manager.close()
    raise
  manager.close()
  return state, history


def _save_epoch(manager, checkpoint_dir: str, state, fingerprint: dict,
                history: list[dict], *, wait: bool) -> None:
  """Saves `state` as the checkpoint of epoch `len(history)`, with what
  resuming it needs."""
  checkpoints.save(manager, checkpoint_dir, len(history), wait=wait,
                   state=ocp.args.StandardSave(state),
                   meta=ocp.args.JsonSave({'fingerprint': fingerprint,
                                           'history': history}))


def _fingerprint(recipe: Recipe, engine: engine_lib.Engine,
                 seeds: Sequence[int], n: int,
                 masks: np.ndarray | None) -> dict:
  """What a checkpoint of `fit` must have been made with to be resumed."""
  fingerprint = {'recipe': dataclasses.asdict(recipe), 'loss': engine.loss_kind,
                 'seeds': list(seeds), 'examples': n,
                 'image_size': engine.input_size,
                 'model': architecture(repr(engine.model))}
  if masks is not None:
    fingerprint['masks'] = hashlib.sha256(
        np.packbits(np.asarray(masks, bool)).tobytes()).hexdigest()
  return fingerprint


def _start(manager, checkpoint_dir: str, fingerprint: dict,
           engine: engine_lib.Engine, recipe: Recipe, seeds: Sequence[int]
           ) -> tuple[engine_lib.TrainState, list[dict]]:
  """(state, history of the epochs done): fresh models, or the latest
  checkpoint's if it was made with `fingerprint`."""
  # torch's momentum buffer is optax's trace: buf = m * buf + g,
  # p -= lr * buf; the learning rate is set per epoch, as MultiStepLR does.
  tx = optimizers.sgd(recipe.learning_rate, recipe.momentum)
  latest = manager.latest_step()
  if latest is None:
    return engine.init(tx, seeds), []
  # The fingerprint first: a checkpoint of other shapes would not restore.
  meta = checkpoints.restore(manager, checkpoint_dir, latest,
                             meta=ocp.args.JsonRestore())
  saved = dict(meta['fingerprint'])
  saved['model'] = architecture(saved.get('model', ''))
  if saved != json.loads(json.dumps(fingerprint)):
    raise checkpoints.CheckpointError(
        f'{checkpoint_dir} holds a checkpoint of a different run '
        f'({meta["fingerprint"]}); use another directory or delete it to '
        'start over.')
  state = checkpoints.restore(manager, checkpoint_dir, latest,
                              state=ocp.args.StandardRestore(
                                  engine.abstract_state(tx, len(seeds))))
  cluster.log(f'resuming from the checkpoint of epoch {latest} in '
              f'{checkpoint_dir}')
  return state, meta['history']


def _refuse_divergence(result: engine_lib.RunResult, seeds: Sequence[int],
                       split: str, epoch: int, recipe: Recipe) -> None:
  """Raises `engine.Diverged` if an epoch's loss stopped being finite."""
  diverged = engine_lib.divergence(result.measured['loss'], seeds)
  if diverged:
    last = diverged['last_finite_loss']
    raise engine_lib.Diverged(
        f'training on {split} diverged: the loss of seed(s) '
        f'{diverged["seeds"]} stopped being finite at step '
        f'{diverged["step"]} of epoch {epoch + 1} (last finite loss '
        + (f'{last:.4f}' if last is not None else 'none')
        + f'); learning rate {recipe.learning_rate}')


def _log_epoch(record: dict, recipe: Recipe) -> None:
  cluster.log(
      f'epoch {record["epoch"]}/{recipe.epochs}: ' + ', '.join(
          f'{k.replace("_", " ")} {record[k]:.4f}' for k in record
          if k.endswith(('loss', 'accuracy')))
      + f', {record["img_per_s"]:.1f} img/s, {record["seconds"]:.1f} s'
      + (f' (+{record["compile_seconds"]:.1f} s compiling)'
         if record['compile_seconds'] >= 0.1 else ''))


def _epoch_record(epoch: int, plan: plans.Plan,
                  result: engine_lib.RunResult, population: int,
                  engine: engine_lib.Engine, state: engine_lib.TrainState,
                  eval_split: str | None) -> dict:
  """An epoch's log record: the members' mean train loss and accuracy
  (weighted by batch size), `eval_split` accuracy and the epoch's costs."""
  sizes = np.asarray([plan.images(i) for i in range(len(plan))])
  record = {'epoch': epoch + 1}
  for name in ('loss', 'accuracy'):
    record[f'train_{name}'] = float(
        (result.measured[name] * sizes[:, None]).sum()
        / sizes.sum() / population)
  if eval_split is not None:
    evaluated = engine.predict(state.variables, eval_split)
    labels = engine.splits[eval_split]['label']
    record[f'{eval_split}_accuracy'] = float(np.mean(
        [losses.accuracies(z, labels, engine.loss_kind)['accuracy']
         for z in evaluated['logits']]))
  record.update(img_per_s=population * sizes.sum() / result.seconds,
                seconds=result.seconds,
                compile_seconds=result.compile_seconds,
                flops=result.flops)
  return record
