"""One benchmark run as a config describes it, step by step: the config
checked (`run_config`), the data, the original model trained
(`train.from_scratch`) or read, the unlearning methods, each row's
evaluation, and the results on disk (`results`).

`run_main.py` is a thin shell around `run`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from mufax import checkpoints
from mufax import cluster
from mufax import compilation
from mufax import convert
from mufax import datasets
from mufax import deletion_requests
from mufax import engine as engine_lib
from mufax import evaluation
from mufax import files
from mufax import input_pipeline
from mufax import losses as losses_lib
from mufax import metrics
from mufax import models
from mufax import optimizers
from mufax import published
from mufax import rehearsal
from mufax import results
from mufax import run_config
from mufax import sharding
from mufax import sweep
from mufax import tasks
from mufax import train
from mufax import unlearning
from mufax.data import prepare
from mufax.data import splits as splits_lib
from mufax.evaluators import confidence

# Splits whose per-sample losses are kept, and that the MIA compares.
LOSS_SPLITS = ('forget', 'unseen', 'test', 'retain')


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
    raise run_config.ConfigError(f'{where}: {e}') from e
  except Exception as e:  # pylint: disable=broad-except
    raise run_config.ConfigError(f'{where}: not a folder written by python -m '
                      f'mufax.convert ({type(e).__name__}).') from e
  if model.num_outputs != task.num_outputs:
    raise run_config.ConfigError(
        f'{where}: its head has {model.num_outputs} outputs, and '
        f'{config.data.dataset} ({task.name}) needs {task.num_outputs}: '
        'convert the model trained for this task.')
  if trained_at != engine.input_size:
    raise run_config.ConfigError(
        f'{where}: the model was trained on {trained_at}x{trained_at} images '
        f'and this run feeds it {engine.input_size}x{engine.input_size}: set '
        f'config.data.image_size={trained_at} (or convert with the right '
        '--image_size).')
  shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)
  expected = jax.eval_shape(lambda: models.init_variables(
      engine.model, jax.random.key(0), engine.input_size))
  if shapes(expected) != shapes(variables):
    raise run_config.ConfigError(
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
                   lam: float, seeds: tuple[int, ...], original=None
                   ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Protocol §6 for every member of a population: utility on test, MIA on
  forget vs unseen, NoMUS; and, given the `original` population the members
  were unlearned from, how far each moved from its original
  (`metrics.parameter_change`). Returns the record (means over the members,
  and each member's own under `members` when there are several) and the
  arrays [members, examples] of every split in LOSS_SPLITS: per-sample losses
  under the split's name and φ under `phi_<split>`."""
  outputs = {split: engine.predict(variables, split)
             for split in LOSS_SPLITS}
  if original is not None:
    params = jax.tree.leaves(sharding.to_host(variables['params']))
    start = jax.tree.leaves(sharding.to_host(original['params']))
  labels = engine.splits['test']['label']
  per_member = []
  for k, seed in enumerate(seeds):
    record = {'seed': seed, **losses_lib.accuracies(
        outputs['test']['logits'][k], labels, task.loss_kind)}
    if 'attribute_accuracies' in record:
      record['attribute_accuracies'] = dict(zip(
          task.label_names, record['attribute_accuracies']))
    record['retain_accuracy'] = losses_lib.accuracies(
        outputs['retain']['logits'][k], engine.splits['retain']['label'],
        task.loss_kind)['accuracy']
    forget, unseen = outputs['forget']['loss'][k], outputs['unseen']['loss'][k]
    mia = metrics.membership_inference(forget, unseen)
    record.update(mia=mia, forgetting_score=metrics.forgetting_score(mia),
                  nomus=metrics.nomus(record['accuracy'], mia, lam=lam),
                  lam=lam, loss_auc=metrics.loss_auc(forget, unseen))
    if original is not None:
      # A shared original is one model that every member started from.
      first = [x[min(k, len(x) - 1)] for x in start]
      record['moved_from_original'] = metrics.parameter_change(
          first, [x[k] for x in params])
    per_member.append(record)
  record = mean_record(per_member)
  if len(per_member) > 1:
    record['members'] = per_member
  arrays = {split: outputs[split]['loss'] for split in LOSS_SPLITS}
  # φ (docs/evaluation.md §2), float64, for the extended evaluation.
  arrays.update({f'phi_{split}': confidence.phi(
      outputs[split]['logits'], engine.splits[split]['label'], task.loss_kind)
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


def method_context(ctx: unlearning.Context, config,
                   name: str) -> unlearning.Context:
  """`ctx` with the method's own `config.unlearn.<name>` section."""
  section = config.unlearn.get(name)
  return dataclasses.replace(
      ctx, hparams=section.to_dict() if section is not None else {})


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
      run_config.make_model(config, task.num_outputs), loss_kind=task.loss_kind,
      splits=data, image_size=config.data.image_size or None,
      log_every_s=config.log_every_s,
      members_per_call=config.population.members_per_call or None,
      executor=config.engine.executor,
      memory_limit=int(limit * 2**30) if limit else
      compilation.device_memory())
  if engine.input_size > engine.stored_size:
    raise run_config.ConfigError(
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
  names = run_config.check_config(config)
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
        raise run_config.ConfigError(f'config.methods: {name}: {e}') from e
      cluster.log(f'{name}: skipped, {e}')
      continue
    for row in rows:
      if row in writer:
        raise run_config.ConfigError(
            f'config.methods: {name}: row {row!r} is also written by '
            + ('another of its stages' if writer[row] == name else
               f'method {writer[row]}')
            + '; give each stage that reports a row a name of its own.')
      writer[row] = name
    kept.append(name)
  return kept


def _log_start(config, engine: engine_lib.Engine, population: int,
               names: list[str]) -> None:
  cluster.log(f'{jax.device_count()} {engine.platform} device(s), '
              f'{engine.executor} executor; methods: {", ".join(names)}')
  cluster.log(engine.memory_summary(
      population, engine.abstract_state(optimizers.SGD, population)))
  if results.too_few_models(config):
    cluster.log(results.too_few_models(config))


def _run(config: ml_collections.ConfigDict, workdir: str,
         names: list[str]) -> list[dict]:
  enable_compilation_cache(config, workdir)
  task, data = load_task(config)
  engine = make_engine(config, task, data)
  seeds = run_config.seeds_of(config)
  _log_start(config, engine, len(seeds), names)
  from_scratch = functools.partial(train.from_scratch, config=config,
                                   task=task, engine=engine, workdir=workdir)
  ctx = unlearning.Context(
      task=task, protocol=config.protocol, data=data, engine=engine,
      seeds=seeds, train_from_scratch=from_scratch)
  names = runnable_methods(ctx, config, names)
  done = results.previous_records(workdir, config)
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
      record, losses = row_record(
          row, config, task, engine,
          original_model().variables if method and method.needs_original
          else None)
      records.append(record)
      if primary:
        if losses is not None:
          results.save_losses(workdir, row.name, losses)
        results.write_results(workdir, records, config)
  if config.sweep.methods:
    run_sweep(config, workdir, ctx, data, original_model)
  if config.requests.count:
    run_requests(config, workdir, ctx, data, original_model)
  if not primary:
    # The extended evaluation reads the losses process 0 wrote.
    return records
  return extend_records(workdir, records, config, data)


def run_sweep(config, workdir: str, ctx: unlearning.Context,
              data: dict[str, dict[str, np.ndarray]],
              original_model: Callable[[], unlearning.Row]) -> list[dict]:
  """The sweep of `config.sweep` (mufax/sweep.py): the rehearsal and the
  real request, each on an engine of its own splits with the population
  retrained without its people; returns the chosen rows."""
  splits = dict(zip(('rehearsal', 'real'), rehearsal.request_splits(
      data, config.sweep.seed)))
  requests = {}
  for name, request_data in splits.items():
    engine = make_engine(config, ctx.task, request_data)
    requests[name] = sweep.Request(name, engine, functools.partial(
        train.from_scratch, 'retrain', config, task=ctx.task, engine=engine,
        workdir=workdir if name == 'real' else os.path.join(workdir,
                                                            'sweep')))
  cluster.log('sweep: rehearsal request of '
              f'{len(np.unique(splits["rehearsal"]["forget"]["identity"]))} '
              f'people ({len(splits["rehearsal"]["forget"]["label"])} '
              'images) from retain')
  return sweep.Sweep(
      config, workdir, ctx, original=original_model, requests=requests,
      evaluate=functools.partial(evaluate_model, task=ctx.task,
                                 lam=config.lam),
      retrain_seeds=run_config.seeds_of(config, 'retrain'),
      settings=results.settings_digest(config)).run()


def run_requests(config, workdir: str, ctx: unlearning.Context,
                 data: dict[str, dict[str, np.ndarray]],
                 original_model: Callable[[], unlearning.Row]) -> dict:
  """The deletion requests of `config.requests` (mufax/deletion_requests.py),
  each on an engine of its own splits with a population retrained without
  the people of it and every request before; returns requests.json."""
  spec = config.requests
  people = deletion_requests.draw_requests(
      data, count=spec.count, people=spec.people, seed=spec.seed,
      first=spec.first, excluded=rehearsal.rehearsal_people(
          data['retain']['identity'], data['forget']['identity'],
          config.sweep.seed) if config.sweep.methods else ())
  splits = deletion_requests.request_splits(data, people, spec.first)
  requests = []
  for r, request_data in enumerate(splits):
    engine = make_engine(config, ctx.task, request_data)
    # The stored forget set's retrained population is the table's own.
    folder = workdir if r == 0 and spec.first == 'forget' else os.path.join(
        workdir, 'requests', f'request{r + 1}')
    requests.append(sweep.Request(f'request{r + 1}', engine, functools.partial(
        train.from_scratch, 'retrain', config, task=ctx.task, engine=engine,
        workdir=folder)))
  cluster.log('requests: ' + ', '.join(
      f'{len(p)} people ({len(s["forget"]["label"])} images)'
      for p, s in zip(people, splits)))
  return deletion_requests.Requests(
      config, workdir, ctx, people, requests,
      batch_engine=make_engine(config, ctx.task,
                               deletion_requests.batch_splits(splits[-1])),
      evaluate=functools.partial(evaluate_model, task=ctx.task,
                                 lam=config.lam),
      original=original_model,
      method_context=functools.partial(method_context, ctx, config),
      retrain_seeds=run_config.seeds_of(config, 'retrain'),
      settings=results.settings_digest(config)).run()


def produced_rows(name: str, ctx: unlearning.Context,
                  original_model: Callable[[], unlearning.Row], config,
                  workdir: str) -> Iterator[unlearning.Row]:
  """The rows of method `name`: the original model, or what the method
  makes of it, its progress saved under `workdir` so that it resumes."""
  if name == 'original':
    return iter([original_model()])
  method = unlearning.METHODS[name]
  ctx = dataclasses.replace(ctx, progress_dir=checkpoints.folder(
      config, workdir, f'{name}-{results.settings_digest(config)}', ctx.seeds))
  return method.run(
      ctx, original_model().variables if method.needs_original else None)


def row_record(row: unlearning.Row, config, task: tasks.Task,
               engine: engine_lib.Engine,
               original=None) -> tuple[dict, dict | None]:
  """A row's record for results.json and its per-sample losses (None for a
  diverged row: a result like any other, kept, shown, never recomputed);
  with the `original` variables the row was unlearned from, how far it moved
  from them."""
  row_seeds = run_config.seeds_of(config, row.name)
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
                                    seeds=row_seeds, original=original)
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
  extended = evaluation.run_evaluators(workdir, evaluated,
                                       data['forget']['identity'])
  for record in records:
    if record['method'] in extended:
      record['evaluation'] = extended[record['method']]['scalars']
      record['evaluation_per_seed'] = extended[record['method']]['per_seed']
  results.write_results(workdir, records, config, extended)
  results.write_plots(workdir, evaluated, config, extended)
  return records
