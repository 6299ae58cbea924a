"""One benchmark run as a config describes it: data, models, evaluation.

`run_main.py` is a thin shell around `run`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mufax import input_pipeline
from mufax import metrics
from mufax import models
from mufax import recipes
from mufax import train
from mufax.data import prepare
from mufax.data import splits as splits_lib

MODELS = {'resnet18': models.ResNet18, 'resnet_tiny': models.ResNetTiny}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# What each from-scratch model trains on.
TRAIN_SPLIT = {'original': 'train', 'retrain': 'retain'}
# Splits whose per-sample losses are kept, and that the MIA compares.
LOSS_SPLITS = ('forget', 'unseen', 'test', 'retain')


class ConfigError(ValueError):
  """A config value that cannot work; the message says which and why."""


@dataclasses.dataclass
class Task:
  dataset: str
  loss: str
  num_outputs: int
  label_names: list[str]
  splits: dict[str, dict[str, np.ndarray]]


def load_task(config: ml_collections.ConfigDict) -> Task:
  """Prepares the config's dataset if needed and reads every split."""
  builder = prepare.prepare(
      config.data.dataset,
      data_dir=config.data.data_dir or prepare.DEFAULT_DATA_DIR,
      manual_dir=config.data.manual_dir or None)
  loss, num_outputs = train.loss_kind(builder.info.features['label'])
  start = time.perf_counter()
  data = {split: input_pipeline.read_split(builder.as_data_source(split))
          for split in splits_lib.SPLITS}
  train.log(f'read {config.data.dataset}: ' + ', '.join(
      f'{s} {len(d["label"])}' for s, d in data.items())
      + f' images in {time.perf_counter() - start:.1f} s')
  return Task(dataset=config.data.dataset, loss=loss,
              num_outputs=num_outputs, label_names=builder.label_names(),
              splits=data)


def make_model(config: ml_collections.ConfigDict, num_outputs: int):
  if config.model.name not in MODELS:
    raise ConfigError(f'config.model.name={config.model.name!r}: choose one '
                      f'of {sorted(MODELS)}.')
  if config.model.dtype not in DTYPES:
    raise ConfigError(f'config.model.dtype={config.model.dtype!r}: choose one '
                      f'of {sorted(DTYPES)}.')
  kwargs = {'num_outputs': num_outputs, 'dtype': DTYPES[config.model.dtype]}
  if config.model.num_filters:
    kwargs['num_filters'] = config.model.num_filters
  return MODELS[config.model.name](**kwargs)


def recipe(config: ml_collections.ConfigDict, kind: str) -> train.Recipe:
  """SPEC §4's recipe of `kind` for the dataset, with the config's overrides."""
  values = dict(recipes.RECIPES[recipes.task_of(config.data.dataset)][kind])
  values.update({k: v for k, v in config[kind].items() if v is not None})
  r = train.Recipe.from_config(values)
  if r.epochs < 1 or r.batch_size < 1 or r.learning_rate <= 0:
    raise ConfigError(f'config.{kind}: epochs and batch_size must be >= 1 and '
                      f'learning_rate > 0, got {r}.')
  return r


def checkpoint_dir(config, workdir: str, kind: str) -> str:
  """One model per dataset, kind, protocol and seed; methods share it."""
  name = re.sub(r'[^A-Za-z0-9]+', '-', config.data.dataset)
  return os.path.join(workdir, 'checkpoints',
                      f'{name}-{kind}-{config.protocol}-seed{config.seed}')


def train_from_scratch(kind: str, config, task: Task, *, model, mesh,
                       workdir: str) -> train.TrainState:
  """The original (on train) or retrained (on retain) model of SPEC §4.

  Reuses or resumes the checkpoint of an earlier run with the same settings.
  """
  r = recipe(config, kind)
  train.log(f'training {kind} on {TRAIN_SPLIT[kind]} '
            f'({len(task.splits[TRAIN_SPLIT[kind]]["label"])} images): {r}')
  state, _ = train.fit(
      r, model=model, loss=task.loss,
      train_data=task.splits[TRAIN_SPLIT[kind]],
      eval_data={'test': task.splits['test']}, mesh=mesh,
      checkpoint_dir=checkpoint_dir(config, workdir, kind), seed=config.seed,
      image_size=config.data.image_size or None,
      log_every_s=config.log_every_s)
  return state


def evaluate_model(variables, *, model, task: Task, mesh, config
                   ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """SPEC §6: utility on test, MIA on forget vs unseen, NoMUS; losses."""
  eval_step = train.make_eval_step(model, mesh=mesh, loss=task.loss,
                                   image_size=config.data.image_size or None)
  results = {split: train.evaluate(eval_step, variables, task.splits[split],
                                   mesh=mesh, loss=task.loss)
             for split in LOSS_SPLITS}
  test = results['test']
  mia = metrics.membership_inference(results['forget']['loss'],
                                     results['unseen']['loss'])
  record = {k: v for k, v in test.items() if k not in ('logits', 'loss')}
  if 'attribute_accuracies' in record:
    record['attribute_accuracies'] = dict(zip(
        task.label_names, record['attribute_accuracies']))
  record.update(
      mia=mia, forgetting_score=metrics.forgetting_score(mia),
      nomus=metrics.nomus(record['accuracy'], mia, lam=config.lam),
      lam=config.lam,
      loss_auc=metrics.loss_auc(results['forget']['loss'],
                                results['unseen']['loss']))
  return record, {split: results[split]['loss'] for split in LOSS_SPLITS}


def check_config(config) -> None:
  if not 0 <= config.lam <= 1:
    raise ConfigError(f'config.lam={config.lam}: the NoMUS weight λ must lie '
                      'in [0, 1].')
  unknown = [m for m in config.models.split(',') if m not in TRAIN_SPLIT]
  if unknown:
    raise ConfigError(f'config.models: unknown {unknown}; choose from '
                      f'{sorted(TRAIN_SPLIT)}.')
  if config.protocol not in ('paper', 'clean'):
    raise ConfigError(f'config.protocol={config.protocol!r}: choose paper or '
                      'clean.')


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Trains and evaluates the config's models; writes results to `workdir`."""
  check_config(config)
  task = load_task(config)
  model = make_model(config, task.num_outputs)
  mesh = train.make_mesh()
  train.log(f'{jax.device_count()} {jax.default_backend()} device(s)')
  records = []
  for kind in config.models.split(','):
    start = time.perf_counter()
    state = train_from_scratch(kind, config, task, model=model, mesh=mesh,
                               workdir=workdir)
    record, losses = evaluate_model(state.variables, model=model, task=task,
                                    mesh=mesh, config=config)
    record = {'model': kind, 'dataset': task.dataset,
              'protocol': config.protocol, 'seed': config.seed, **record,
              'update_steps': int(state.step),
              'wall_seconds': time.perf_counter() - start}
    records.append(record)
    write_results(workdir, records, config)
    os.makedirs(os.path.join(workdir, 'losses'), exist_ok=True)
    np.savez(os.path.join(workdir, 'losses', f'{kind}.npz'), **losses)
  return records


def write_results(workdir: str, records: list[dict], config) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump({'records': records, 'config': config.to_dict(),
               'devices': f'{jax.device_count()} x {jax.devices()[0].device_kind}'},
              f, indent=1, default=str)
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(f'{config.data.dataset}, protocol {config.protocol}, seed '
            f'{config.seed}, λ = {config.lam}\n\n{format_table(records)}\n')


def format_table(records: list[dict]) -> str:
  """The results as a Markdown table, for people."""
  has_top2 = any('top2_accuracy' in r for r in records)
  head = (['model', 'accuracy'] + (['top-2'] if has_top2 else [])
          + ['MIA', 'forgetting', 'NoMUS', 'loss AUC', 'steps', 'seconds'])
  rows = []
  for r in records:
    rows.append([r['model'], f'{r["accuracy"]:.4f}']
                + ([f'{r.get("top2_accuracy", float("nan")):.4f}']
                   if has_top2 else [])
                + [f'{r["mia"]:.4f}', f'{r["forgetting_score"]:.4f}',
                   f'{r["nomus"]:.4f}', f'{r["loss_auc"]:.4f}',
                   str(r['update_steps']), f'{r["wall_seconds"]:.1f}'])
  lines = ['| ' + ' | '.join(head) + ' |',
           '|' + '|'.join('---' for _ in head) + '|']
  return '\n'.join(lines + ['| ' + ' | '.join(r) + ' |' for r in rows])
