"""One benchmark run as a config describes it: data, the original model,
the unlearning methods, evaluation, and the results on disk.

`run_main.py` is a thin shell around `run`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from mufax import cluster
from mufax import compilation
from mufax import convert
from mufax import datasets
from mufax import engine as engine_lib
from mufax import evaluation
from mufax import executors
from mufax import files
from mufax import input_pipeline
from mufax import losses as losses_lib
from mufax import metrics
from mufax import models
from mufax import optimizers
from mufax import plots
from mufax import plugins
from mufax import published
from mufax import recipes
from mufax import sharding
from mufax import tasks
from mufax import train
from mufax import unlearning
from mufax.data import prepare
from mufax.data import splits as splits_lib
from mufax.evaluators import base as evaluator_base
from mufax.evaluators import confidence
from mufax.evaluators import intervals

MODELS = {'resnet18': models.ResNet18, 'resnet_tiny': models.ResNetTiny}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# What each from-scratch model trains on.
TRAIN_SPLIT = {'original': 'train', 'retrain': 'retain', 'oracle': 'retain'}
# Populations with seeds of their own, as multiples of N past config.seed;
# the originals and every method's own randomness use stream 0.
SEED_STREAMS = {'retrain': 1, 'oracle': 2}
# Splits whose per-sample losses are kept, and that the MIA compares.
LOSS_SPLITS = ('forget', 'unseen', 'test', 'retain')
# What a run writes to its workdir, besides checkpoints.
RESULT_FILES = ('results.json', 'results.md', 'losses',
                'loss_histograms.png', 'accuracy_vs_forgetting.png',
                'epsilon_distributions.png', 'accuracy_vs_forget_score.png',
                'examples', 'identities', 'least_forgotten')


class ConfigError(ValueError):
  """A config value that cannot work; the message says which and why."""


def load_task(config: ml_collections.ConfigDict
              ) -> tuple[tasks.Task, dict[str, dict[str, np.ndarray]]]:
  """The config's task, and every split of its dataset, prepared if needed."""
  task = datasets.task_of(config.data.dataset)
  prepared = functools.partial(
      prepare.prepare, config.data.dataset,
      data_dir=config.data.data_dir or prepare.DEFAULT_DATA_DIR,
      manual_dir=config.data.manual_dir or None)
  # Of several processes, process 0 prepares the data first; the others then
  # find it prepared (or prepare their own copy, on a disk of their own).
  if jax.process_index() == 0:
    builder = prepared()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('mufax: data prepared')
  if jax.process_index() != 0:
    builder = prepared()
  start = time.perf_counter()
  data = {split: input_pipeline.read_split(builder.as_data_source(split))
          for split in splits_lib.SPLITS}
  cluster.log(f'read {config.data.dataset}: ' + ', '.join(
      f'{s} {len(d["label"])}' for s, d in data.items())
      + f' images in {time.perf_counter() - start:.1f} s')
  return task, data


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


def recipe(config: ml_collections.ConfigDict, task: tasks.Task,
           kind: str) -> train.Recipe:
  """Protocol §4's recipe of `kind` for the task, with the config's
  overrides."""
  # The oracle is a second retraining, with retraining's recipe.
  kind = 'retrain' if kind == 'oracle' else kind
  values = dict(task.per_family(recipes.RECIPES)[kind])
  values.update({k: v for k, v in config[kind].items() if v is not None})
  r = train.Recipe.from_config(values)
  if r.epochs < 1 or r.batch_size < 1 or r.learning_rate <= 0:
    raise ConfigError(f'config.{kind}: epochs and batch_size must be >= 1 and '
                      f'learning_rate > 0, got {r}.')
  return r


def seeds_of(config, kind: str = 'method') -> tuple[int, ...]:
  """The population's seeds: config.seed + 0..N-1 for the originals and the
  methods (the original's alone, config.seed, when every member unlearns
  from one shared original); N..2N-1 for retraining and 2N..3N-1 for the
  oracle.

  Retrained model k never shares an initialisation, data order or
  augmentation draw with original k: a seed-paired retrained population
  would look like its unlearned twins and flatter F and the attack
  (docs/evaluation.md §1).
  """
  if kind == 'original' and config.population.shared_original:
    return (config.seed,)
  n = config.population.size
  first = config.seed + n * SEED_STREAMS.get(kind, 0)
  return tuple(first + k for k in range(n))


def checkpoint_dir(config, workdir: str, kind: str,
                   seeds: tuple[int, ...]) -> str:
  """One population per dataset, kind, protocol and seeds; methods share it."""
  name = re.sub(r'[^A-Za-z0-9]+', '-', config.data.dataset)
  which = (f'seed{seeds[0]}' if len(seeds) == 1
           else f'seeds{seeds[0]}-{seeds[-1]}')
  return os.path.join(workdir, 'checkpoints',
                      f'{name}-{kind}-{config.protocol}-{which}')


def train_from_scratch(kind: str, config, *, task: tasks.Task,
                       engine: engine_lib.Engine,
                       workdir: str) -> unlearning.Row:
  """The original (on train) or retrained (on retain) population of
  protocol §4, one model per seed.

  Reuses or resumes the checkpoint of an earlier run with the same settings;
  the row's seconds are those its epochs took, over all runs that trained it.
  """
  r = recipe(config, task, kind)
  seeds = seeds_of(config, kind)
  split = TRAIN_SPLIT[kind]
  cluster.log(f'{kind}: training on {split} '
              f'({len(engine.splits[split]["label"])} images)'
              + (f', {len(seeds)} models' if len(seeds) > 1 else '')
              + f', {r}')
  try:
    state, history = train.fit(
        r, engine=engine, split=split, seeds=seeds, eval_split='test',
        checkpoint_dir=checkpoint_dir(config, workdir, kind, seeds),
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


def converted_original(config, engine: engine_lib.Engine,
                       task: tasks.Task) -> unlearning.Row:
  """The original model of `config.original.checkpoint` (a folder of
  `python -m mufax.convert`), refused with the reason where it does not fit
  the run."""
  folder = config.original.checkpoint
  where = f'config.original.checkpoint={folder}'
  try:
    model, variables, trained_at = convert.load(folder)
  except FileNotFoundError as e:
    raise ConfigError(f'{where}: {e}') from e
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'{where}: not a folder written by python -m '
                      f'mufax.convert ({type(e).__name__}).') from e
  if model.num_outputs != task.num_outputs:
    raise ConfigError(
        f'{where}: its head has {model.num_outputs} outputs, and '
        f'{config.data.dataset} ({task.name}) needs {task.num_outputs}: '
        'convert the model trained for this task.')
  if trained_at != engine.input_size:
    raise ConfigError(
        f'{where}: the model was trained on {trained_at}x{trained_at} images '
        f'and this run feeds it {engine.input_size}x{engine.input_size}: set '
        f'config.data.image_size={trained_at} (or convert with the right '
        '--image_size).')
  shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)
  expected = jax.eval_shape(lambda: models.init_variables(
      engine.model, jax.random.key(0), engine.input_size))
  if shapes(expected) != shapes(variables):
    raise ConfigError(
        f'{where}: a ResNet with stages {list(model.stage_sizes)} and width '
        f'{model.num_filters}, and config.model ({config.model.name}, '
        f'num_filters {config.model.num_filters or "its own"}) builds '
        'another: set config.model to match it.')
  cluster.log(f'original: read from {folder}')
  return unlearning.Row(
      'original', engine.put_members(
          jax.tree.map(lambda x: np.asarray(x)[None], variables), 1),
      update_steps=0, seconds=0.0,
      settings={'checkpoint': os.path.abspath(folder)})


def evaluate_model(variables, *, engine: engine_lib.Engine, task: tasks.Task,
                   lam: float, seeds: tuple[int, ...]
                   ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Protocol §6 for every member of a population: utility on test, MIA on
  forget vs unseen, NoMUS. Returns the record (means over the members, and
  each member's own under `members` when there are several) and the
  arrays [members, examples] of every split in LOSS_SPLITS: per-sample losses
  under the split's name and φ under `phi_<split>`."""
  results = {split: engine.evaluate(variables, split)
             for split in LOSS_SPLITS}
  labels = engine.splits['test']['label']
  per_member = []
  for k, seed in enumerate(seeds):
    record = {'seed': seed, **losses_lib.accuracies(
        results['test']['logits'][k], labels, task.loss)}
    if 'attribute_accuracies' in record:
      record['attribute_accuracies'] = dict(zip(
          task.label_names, record['attribute_accuracies']))
    record['retain_accuracy'] = losses_lib.accuracies(
        results['retain']['logits'][k], engine.splits['retain']['label'],
        task.loss)['accuracy']
    forget, unseen = results['forget']['loss'][k], results['unseen']['loss'][k]
    mia = metrics.membership_inference(forget, unseen)
    record.update(mia=mia, forgetting_score=metrics.forgetting_score(mia),
                  nomus=metrics.nomus(record['accuracy'], mia, lam=lam),
                  lam=lam, loss_auc=metrics.loss_auc(forget, unseen))
    per_member.append(record)
  record = mean_record(per_member)
  if len(per_member) > 1:
    record['members'] = per_member
  arrays = {split: results[split]['loss'] for split in LOSS_SPLITS}
  # φ (docs/evaluation.md §2), float64, for the extended evaluation.
  arrays.update({f'phi_{split}': confidence.phi(
      results[split]['logits'], engine.splits[split]['label'], task.loss)
                 for split in LOSS_SPLITS})
  return record, arrays


def mean_record(records: list[dict]) -> dict:
  """The members' records averaged key by key (a seed list for `seed`)."""
  out = {}
  for key, value in records[0].items():
    if key == 'seed':
      out['seeds'] = [r['seed'] for r in records]
    elif isinstance(value, dict):
      out[key] = mean_record([r[key] for r in records])
    elif isinstance(value, (int, float)) and key != 'lam':
      out[key] = float(np.mean([r[key] for r in records]))
    else:
      out[key] = value
  return out


def method_names(config) -> list[str]:
  """`config.methods` as a list: `all` is the paper's table, `extended`
  that and every other registered method."""
  paper = unlearning.PAPER_TABLE
  if config.population.size > 1:
    # With seeds, the oracle that F is read against.
    paper = paper[:2] + ('oracle',) + paper[2:]
  groups = {'all': paper,
            'extended': paper + tuple(n for n in unlearning.METHODS
                                      if n not in paper + ('oracle',))}
  names = []
  for name in (m.strip() for m in config.methods.split(',')):
    for n in groups.get(name, (name,) if name else ()):
      if n not in names:
        names.append(n)
  known = list(dict.fromkeys(groups['extended'] + ('oracle',)))
  unknown = [n for n in names if n not in known]
  if unknown or not names:
    raise ConfigError(
        f'config.methods={config.methods!r}: unknown method(s) {unknown}; '
        f'choose from {", ".join(known)}, all or extended'
        + ('' if config.plugins else
           ' (a method of your own: config.plugins)') + '.')
  return names


def method_context(ctx: unlearning.Context, config,
                   name: str) -> unlearning.Context:
  """`ctx` with the method's own `config.unlearn.<name>` section."""
  section = config.unlearn.get(name)
  return dataclasses.replace(
      ctx, hparams=section.to_dict() if section is not None else {})


def check_config(config) -> list[str]:
  """Loads the plugins, refuses values that cannot work, and returns the
  methods to run."""
  try:
    plugins.load(config.plugins)
  except plugins.PluginError as e:
    raise ConfigError(str(e)) from e
  try:
    metrics.nomus_lambda(config.lam)
  except ValueError as e:
    raise ConfigError(f'config.lam={config.lam}: the NoMUS weight λ must lie '
                      'in [0, 1].') from e
  if config.protocol not in ('paper', 'clean'):
    raise ConfigError(f'config.protocol={config.protocol!r}: choose paper or '
                      'clean.')
  if not config.population.size >= 1:
    raise ConfigError(f'config.population.size={config.population.size} '
                      'must be at least 1.')
  if (config.original.checkpoint and config.population.size > 1
      and not config.population.shared_original):
    raise ConfigError(
        f'config.original.checkpoint={config.original.checkpoint} is one '
        'model: with config.population.size > 1 set '
        'config.population.shared_original=true.')
  if config.engine.executor not in executors.EXECUTORS:
    raise ConfigError(f'config.engine.executor={config.engine.executor!r}: '
                      f'choose one of {", ".join(executors.EXECUTORS)}.')
  if not config.population.members_per_call >= 0:
    raise ConfigError('config.population.members_per_call='
                      f'{config.population.members_per_call} must be at least '
                      '0 (0: the device\'s default).')
  for name, section in config.unlearn.items():
    if name in unlearning.METHODS:
      try:
        unlearning.METHODS[name].Hparams.from_overrides(section.to_dict())
      except ValueError as e:
        raise ConfigError(f'config.unlearn.{name}.{e}') from e
  return method_names(config)


def enable_compilation_cache(config, workdir: str) -> None:
  """JAX's persistent compilation cache, so that a second run of the same
  table compiles nothing. A cache the process already set up is kept."""
  if jax.config.jax_compilation_cache_dir:
    return
  directory = config.compilation_cache_dir or os.path.join(workdir,
                                                           'jax_cache')
  jax.config.update('jax_compilation_cache_dir', os.path.abspath(directory))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def make_engine(config, task: tasks.Task,
                data: dict[str, dict[str, np.ndarray]]) -> engine_lib.Engine:
  """The run's engine; refuses images larger than those stored."""
  limit = config.population.device_memory_gb
  engine = engine_lib.Engine(
      make_model(config, task.num_outputs), loss=task.loss,
      splits=data, image_size=config.data.image_size or None,
      log_every_s=config.log_every_s,
      members_per_call=config.population.members_per_call or None,
      executor=config.engine.executor,
      memory_limit=int(limit * 2**30) if limit else
      compilation.device_memory())
  if engine.input_size > engine.stored_size:
    raise ConfigError(
        f'config.data.image_size={config.data.image_size} is larger than the '
        f'stored {engine.stored_size}x{engine.stored_size} images of '
        f'{config.data.dataset}: enlarging adds no detail; use '
        f'{engine.stored_size} or less.')
  return engine


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs the config's methods and writes results to `workdir`.

  Rows already in `workdir/results.json` from a run with the same settings
  are kept rather than computed again, so a stopped run loses nothing.

  Raises:
    files.WorkdirInUse: while another run holds `workdir`.
  """
  names = check_config(config)
  with files.exclusive(workdir, jax.process_index()):
    return _run(config, workdir, names)


def runnable_methods(ctx: unlearning.Context, config,
                     names: list[str]) -> list[str]:
  """`names` less the methods that refuse the task, checked before anything
  trains: a method that refuses is an error if named, skipped if it came
  with `extended`; rows that two stages (or two methods) would both write
  are an error, since results.json keeps one record per row."""
  named = {m.strip() for m in config.methods.split(',')}
  kept, writer = [], {}
  for name in names:
    try:
      rows = (unlearning.METHODS[name].row_names(
          method_context(ctx, config, name))
              if name in unlearning.METHODS else [name])
    except unlearning.Unsupported as e:
      if name in named:
        raise ConfigError(f'config.methods: {name}: {e}') from e
      cluster.log(f'{name}: skipped, {e}')
      continue
    for row in rows:
      if row in writer:
        raise ConfigError(
            f'config.methods: {name}: row {row!r} is also written by '
            + ('another of its stages' if writer[row] == name else
               f'method {writer[row]}')
            + '; give each stage that reports a row a name of its own.')
      writer[row] = name
    kept.append(name)
  return kept


def _run(config: ml_collections.ConfigDict, workdir: str,
         names: list[str]) -> list[dict]:
  enable_compilation_cache(config, workdir)
  task, data = load_task(config)
  engine = make_engine(config, task, data)
  seeds = seeds_of(config)
  cluster.log(f'{jax.device_count()} {engine.platform} device(s), '
              f'{engine.executor} executor; methods: {", ".join(names)}')
  cluster.log(engine.memory_summary(
      len(seeds), engine.abstract_state(optimizers.SGD, len(seeds))))
  if too_few_models(config):
    cluster.log(too_few_models(config))
  from_scratch = functools.partial(train_from_scratch, config=config,
                                   task=task, engine=engine, workdir=workdir)
  ctx = unlearning.Context(
      task=task, protocol=config.protocol, data=data, engine=engine,
      seeds=seeds, train_from_scratch=from_scratch)
  names = runnable_methods(ctx, config, names)
  done = previous_records(workdir, config)
  # Only process 0 writes results; checkpoints are every process's.
  primary = jax.process_index() == 0
  records, original = [], []
  if config.original.checkpoint:
    # Read (and refused if it does not fit) before anything trains.
    original.append(converted_original(config, engine, task))

  def original_model() -> unlearning.Row:
    # Trained, resumed or restored from its checkpoint only when a row
    # needs it: a row reused from results.json does not.
    if not original:
      original.append(from_scratch('original'))
    return original[0]

  for name in names:
    method = unlearning.METHODS.get(name)
    method_ctx = method_context(ctx, config, name)
    rows = method.row_names(method_ctx) if method else [name]
    if all(r in done for r in rows):
      cluster.log(f'{name}: reusing the results of an earlier run in '
                  f'{workdir}')
      records += [done[r] for r in rows]
      continue
    # Rows of a method killed part way are kept; it resumes after them.
    records += [done[r] for r in rows if r in done]
    for row in produced_rows(name, method_ctx, original_model, config,
                             workdir):
      if row.name in done:
        continue
      record, losses = row_record(row, config, task, engine)
      records.append(record)
      if primary:
        if losses is not None:
          save_losses(workdir, row.name, losses)
        write_results(workdir, records, config)
  if not primary:
    # The extended evaluation reads the losses process 0 wrote.
    return records
  return extend_records(workdir, records, config, data)


def produced_rows(name: str, ctx: unlearning.Context,
                  original_model: Callable[[], unlearning.Row], config,
                  workdir: str) -> Iterator[unlearning.Row]:
  """The rows of method `name`: the original model, or what the method
  makes of it, its progress saved under `workdir` so that it resumes."""
  if name == 'original':
    return iter([original_model()])
  method = unlearning.METHODS[name]
  ctx = dataclasses.replace(ctx, progress_dir=checkpoint_dir(
      config, workdir, f'{name}-{settings_digest(config)}', ctx.seeds))
  return method.run(
      ctx, original_model().variables if method.needs_original else None)


def row_record(row: unlearning.Row, config, task: tasks.Task,
               engine: engine_lib.Engine) -> tuple[dict, dict | None]:
  """A row's record for results.json and its per-sample losses (None for a
  diverged row: a result like any other, kept, shown, never recomputed)."""
  row_seeds = seeds_of(config, row.name)
  record = {'method': row.name, 'dataset': config.data.dataset,
            'task': task.name, 'protocol': config.protocol,
            'seed': row_seeds[0], 'population': len(row_seeds)}
  cost = {'wall_seconds': row.seconds,
          'compile_seconds': row.compile_seconds, 'flops': row.flops,
          'update_steps': row.update_steps, 'config': row.settings,
          'published': published.published(task, row.name)}
  if row.diverged:
    return record | {'diverged': row.diverged} | cost, None
  measured, losses = evaluate_model(row.variables, engine=engine,
                                    task=task, lam=config.lam,
                                    seeds=row_seeds)
  record |= measured | cost
  cluster.log(f'{row.name}: accuracy {record["accuracy"]:.4f}, MIA '
              f'{record["mia"]:.4f}, NoMUS {record["nomus"]:.4f}'
              + (f' (means of {len(row_seeds)} models)'
                 if len(row_seeds) > 1 else ''))
  return record, losses


def extend_records(workdir: str, records: list[dict], config,
                   data: dict[str, dict[str, np.ndarray]]) -> list[dict]:
  """`records` with the extended evaluation of the rows that did not
  diverge; writes results and plots."""
  evaluated = [r for r in records if 'diverged' not in r]
  extended = evaluation.evaluate(workdir, evaluated,
                                 data['forget']['identity'])
  for record in records:
    if record['method'] in extended:
      record['evaluation'] = extended[record['method']]['scalars']
      record['evaluation_per_seed'] = extended[record['method']]['per_seed']
  write_results(workdir, records, config, extended)
  write_plots(workdir, evaluated, config, extended)
  return records


def too_few_models(config) -> str | None:
  """The line that says F and the attack are left out, for populations of
  2..MIN_MODELS-1 models; None otherwise."""
  n = config.population.size
  if 1 < n < evaluator_base.MIN_MODELS:
    return (f'config.population.size={n}: F and the likelihood-ratio attack '
            f'need at least {evaluator_base.MIN_MODELS} models per row to '
            'mean anything (docs/evaluation.md §3); the table leaves them '
            'out.')
  return None


def save_losses(workdir: str, name: str, losses: dict[str, np.ndarray]):
  with files.replaced_atomically(
      os.path.join(workdir, 'losses', f'{name}.npz'), 'wb') as f:
    np.savez(f, **losses)


def comparable_config(config: dict) -> dict:
  """The settings that decide a row's result (not which rows to run)."""
  config = json.loads(json.dumps(config, default=str))
  # How steps are executed changes float rounding only.
  for key in ('methods', 'log_every_s', 'compilation_cache_dir', 'plugins',
              'checkpoint_every_s', 'engine'):
    config.pop(key, None)
  for key in ('device_memory_gb', 'members_per_call'):
    config.get('population', {}).pop(key, None)
  return config


def settings_digest(config) -> str:
  """Short hash of the settings that decide the results: a method's saved
  progress is only resumed under the settings it was made with."""
  return hashlib.sha256(json.dumps(comparable_config(config.to_dict()),
                                   sort_keys=True).encode()).hexdigest()[:10]


def previous_records(workdir: str, config) -> dict[str, dict]:
  """Rows of an earlier run in `workdir` with the same settings, by name."""
  path = os.path.join(workdir, 'results.json')
  saved = {}
  try:
    with open(path) as f:
      saved = json.load(f)
  except FileNotFoundError:
    pass
  except (OSError, json.JSONDecodeError):
    cluster.log(f'{path} is unreadable; its rows are computed again')
  # A row saved with other seeds than seeds_of gives it (by a version that
  # seeded it otherwise) is made again.
  done = {r['method']: r for r in saved.get('records', [])
          if r.get('seed') == seeds_of(config, r['method'])[0]
          and ('diverged' in r or os.path.exists(
              os.path.join(workdir, 'losses', f'{r["method"]}.npz')))}
  if jax.process_count() > 1:
    # Every process reads the same files before process 0 moves any.
    multihost_utils.sync_global_devices('mufax: previous results read')
  if saved and comparable_config(saved.get('config', {})) != comparable_config(
      config.to_dict()):
    # Made with other settings: kept aside, not overwritten.
    if jax.process_index() == 0:
      aside = os.path.join(workdir, 'previous',
                           time.strftime('%Y%m%d-%H%M%S'))
      os.makedirs(aside)
      for name in RESULT_FILES:
        if os.path.exists(os.path.join(workdir, name)):
          os.rename(os.path.join(workdir, name), os.path.join(aside, name))
      cluster.log(f'{workdir} held results of other settings; moved to '
                  f'{aside}')
    return {}
  return done


def write_results(workdir: str, records: list[dict], config,
                  extended=None) -> None:
  devices = f'{jax.device_count()} x {jax.devices()[0].device_kind}'
  with files.replaced_atomically(os.path.join(workdir, 'results.json')) as f:
    json.dump({'records': records, 'config': config.to_dict(),
               'devices': devices}, f, indent=1, default=str)
  with files.replaced_atomically(os.path.join(workdir, 'results.md')) as f:
    f.write(f'{config.data.dataset}, protocol {config.protocol}, seed '
            f'{config.seed}, λ = {config.lam}, {devices}\n\n'
            f'{format_table(records)}\n')
    if any(r.get('published') for r in records):
      f.write(f'\n"paper" columns: {published.SOURCE}\n')
    if any(r.get('members') for r in records):
      f.write('\nA row of several models shows their mean ± the half width '
              'of its 95% t-interval.\n')
    if extended:
      f.write('\n## Against retraining (docs/evaluation.md)\n\n'
              f'{evaluation.format_table(extended)}\n\n{EXTENDED_LEGEND}\n')
      if too_few_models(config):
        f.write(f'\n{too_few_models(config)}\n')
      least = evaluation.format_least_forgotten(extended)
      if least:
        f.write('\n### The five least-forgotten people of each row\n\n'
                'Largest ε first (identity, ε, per-person attack accuracy, '
                f'forget images); all of them in identities/<row>.csv.\n\n'
                f'{least}\n')


EXTENDED_LEGEND = (
    'F: forget score from per-example ε (1: indistinguishable from '
    'retraining; the oracle, a second retraining, is its ceiling); '
    'final_score: F × retain and test accuracy relative to retraining; '
    'lira_*: likelihood-ratio attack telling the row\'s models from '
    'retrained ones (accuracy 0.5, AUC 0.5: no better than chance), per '
    'example and per identity; tpr_at_X%_fpr: loss attack, forget against '
    'unseen, at the false-positive rate X that the unseen set can give (0%: '
    'no false positive at all); relative_*: cost over retraining\'s. '
    '± after F and the attack accuracies: half the width of a 95% bootstrap '
    'interval over the forget identities; after a per-model column: the 95% '
    't half width over the seeds.')


def write_plots(workdir: str, records: list[dict], config,
                extended=None) -> None:
  losses = {}
  for r in records:
    with np.load(os.path.join(workdir, 'losses', f'{r["method"]}.npz')) as z:
      losses[r['method']] = {'forget': z['forget'].ravel(),
                             'unseen': z['unseen'].ravel()}
  title = f'{config.data.dataset} ({config.protocol}, seed {config.seed})'
  plots.plot_loss_histograms(
      losses, os.path.join(workdir, 'loss_histograms.png'),
      mia={r['method']: r['mia'] for r in records}, title=title)
  paper = [{'method': r['method'], **r['published']} for r in records
           if r.get('published')]
  plots.plot_accuracy_vs_forgetting(
      records, os.path.join(workdir, 'accuracy_vs_forgetting.png'),
      lam=config.lam, published=paper or None, title=title)
  if extended:
    plots.plot_epsilon_distributions(
        {name: r['tables'] for name, r in extended.items()},
        os.path.join(workdir, 'epsilon_distributions.png'), title=title)
    plots.plot_accuracy_vs_forget_score(
        {name: r['scalars'] for name, r in extended.items()},
        os.path.join(workdir, 'accuracy_vs_forget_score.png'), title=title)


def format_table(records: list[dict]) -> str:
  """The results as a Markdown table in the paper's layout, for people.

  Where protocol §7 publishes the row, its numbers follow ours ("paper").
  """
  has = lambda key: any(key in r for r in records)
  attributes = next((list(r['attribute_accuracies']) for r in records
                     if 'attribute_accuracies' in r), [])
  has_paper = any(r.get('published') for r in records)
  head = (['method', 'accuracy'] + (['top-2'] if has('top2_accuracy') else [])
          + attributes + ['MIA', 'forgetting', 'NoMUS', 'loss AUC', 'steps',
                          'seconds'])
  if has_paper:
    head += ['paper acc'] + (['paper top-2'] if has('top2_accuracy') else []) + [
        'paper forgetting', 'paper NoMUS']
  fmt = lambda v: '' if v is None else f'{v:.4f}'

  def measured(r, *path):
    # A population's mean ± the 95% t half width over its members.
    get = lambda d: functools.reduce(
        lambda d, k: None if d is None else d.get(k), path, d)
    if get(r) is None:
      return ''
    if not r.get('members'):
      return fmt(get(r))
    mean, half = intervals.t_interval([get(m) for m in r['members']])
    return f'{mean:.4f} ± {half:.4f}'

  rows = []
  for r in records:
    paper = r.get('published') or {}
    name = r['method'] + (f' (diverged at step {r["diverged"]["step"]})'
                          if 'diverged' in r else '')
    row = ([name, measured(r, 'accuracy')]
           + ([measured(r, 'top2_accuracy')] if has('top2_accuracy') else [])
           + [measured(r, 'attribute_accuracies', a) for a in attributes]
           + [measured(r, key) for key in ('mia', 'forgetting_score', 'nomus',
                                            'loss_auc')]
           + [str(r['update_steps']), f'{r["wall_seconds"]:.1f}'])
    if has_paper:
      row += ([fmt(paper.get('accuracy'))]
              + ([fmt(paper.get('top2_accuracy'))] if has('top2_accuracy')
                 else [])
              + [fmt(paper.get('forgetting_score')),
                 fmt(paper.get('nomus'))])
    rows.append(row)
  lines = ['| ' + ' | '.join(head) + ' |',
           '|' + '|'.join('---' for _ in head) + '|']
  return '\n'.join(lines + ['| ' + ' | '.join(r) + ' |' for r in rows])
