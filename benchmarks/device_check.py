r"""One command for the first accelerator: does mufax compute right there, and
how fast is it.

On a machine with one GPU or TPU and nothing installed but the test
requirements:

  pip install -r requirements-test.txt
  python -m benchmarks.device_check \
      --json=benchmarks/results/device_check.json --benchmarks_md=BENCHMARKS.md

It runs, on the devices JAX finds (or those of `--platform`):

1. checks: a tiny ResNet trained from scratch and unlearned by SCRUB (two
   objectives, a teacher), a population of 2 each time, compared
   - member by member with the single model of its seed (within 1e-3 of what
     the steps changed: the members convolve in one program),
   - through the compiled-loop executor and the host-dispatch executor, both
     members in one program (within 1e-5, parameters, batch statistics and
     per-sample losses),
   - on all devices against one, with the platform's own executor (within
     1e-3 of the change; skipped with one device).
2. throughput: training images/s of the engine's update program (on-device
   augmentation, SGD with momentum, BatchNorm in train mode, batch 64) for
   one ResNet-18 at 32, 64 and 128 pixels in float32 and bfloat16, and for a
   population of 16 at 32 pixels; compilation timed apart.
3. the quick start (`configs/quickstart.py`) and the population quick start
   (`configs/quickstart_population.py`, 16 members and the extended
   evaluation), each with its wall time and its table's main figures.

Every figure goes to `--json` (laid out as benchmarks/metadata.py does);
the tables are printed, and `--benchmarks_md` renders them into that file's
`device_check` section (benchmarks/render.py). It is sized to end within 8
minutes on one current GPU (the population quick start dominates).

`--platform=cpu` runs the same on the host's CPU (with 4 CPU devices, so
that the device check compares 4 with 1), shortened so that it ends within 8
minutes on 2 cores: throughput of ResNet-18 at width 16 and 32 pixels in
float32 only, and of a population of 4; the quick starts with the tiny
ResNet (one block per stage) and 2 epochs instead of 40 and 20 for the
models they train from scratch, the quick start with original, retrain,
fine-tuning and SCRUB, the population quick start with 8 members and
original, retrain and fine-tuning. It shows the script works before a
device is lent; its figures say nothing about an accelerator.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
import time
from collections.abc import Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import metadata
from benchmarks import quickstart
from benchmarks import render
from mufax import datasets
from mufax import engine as engine_lib
from mufax import executors
from mufax import models
from mufax import objectives
from mufax import optimizers
from mufax import plans
from mufax import train
from mufax import unlearning

_PLATFORM = flags.DEFINE_string(
    'platform', '', "JAX platform to run on (cpu, gpu, tpu); '': JAX's "
    'choice.')
_JSON = flags.DEFINE_string('json', None, 'Write every figure here.',
                            required=True)
_BENCHMARKS_MD = flags.DEFINE_string(
    'benchmarks_md', None, 'Also render the tables into the device_check '
    'section of this file (BENCHMARKS.md).')
_SHORT = flags.DEFINE_boolean(
    'short', None, 'Shortened runs (see the module docstring); default: on '
    'CPU only.')
_SECTIONS = flags.DEFINE_list(
    'sections', ['checks', 'throughput', 'quickstart', 'population'],
    'What to run.')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Folder for the quick starts (their data and results); '
    'default: a temporary one.')

# Single models against members, and all devices against one: the members'
# grouped convolution and the devices' summation order round otherwise.
ROUNDING = 1e-3
# The two executors on the same devices: the same programs, one inside a
# loop.
EXECUTOR_TOLERANCE = 1e-5
FULL = {'width': 64, 'image_sizes': (32, 64, 128),
        'dtypes': ('float32', 'bfloat16'), 'members': 16, 'steps': 20,
        'epochs': None, 'population': None, 'model': None,
        'methods': {'quickstart': None, 'quickstart_population': None}}
# bfloat16 is emulated on CPU, and compiling dominates there: the CPU run
# keeps one of each kind of stage in the quick starts, with the tiny ResNet.
SHORT = {'width': 16, 'image_sizes': (32,), 'dtypes': ('float32',),
         'members': 4, 'steps': 3, 'epochs': 2, 'population': 8,
         'model': 'resnet_tiny',
         'methods': {'quickstart': 'original,retrain,finetune,scrub',
                     'quickstart_population': 'original,retrain,finetune'}}


def log(message: str) -> None:
  print(f'[device_check] {message}', flush=True)


# ------------------------------------------------------------------ checks


def _tiny_splits():
  rng = np.random.default_rng(0)
  split = lambda n: {'image': rng.integers(0, 256, (n, 16, 16, 3),
                                           dtype=np.uint8),
                     'label': rng.integers(0, 8, n)}
  # 22 = two batches of 8 and a short one of 6; forget 12 = 8 + 4.
  return {'retain': split(22), 'forget': split(12), 'test': split(9)}


def _largest_difference(a, b) -> float:
  return max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _relative_difference(start, a, b) -> float:
  """Largest difference of `a` and `b`, per collection over the largest
  change from `start`: what float rounding carried on, as a fraction of what
  the steps did."""
  return max(_largest_difference(a[k], b[k])
             / max(_largest_difference(start[k], a[k]), 1e-30) for k in a)


def _runs(devices, executor: str, seeds, scrub_from=None) -> dict:
  """Training from scratch (1 epoch) and SCRUB from its result (or from
  `scrub_from`), a population of `seeds`, on `devices`: {name: (start,
  variables, per-sample losses)}."""

  splits = _tiny_splits()
  eng = engine_lib.Engine(models.ResNetTiny(num_outputs=8), loss_kind='softmax',
                          splits=splits, log_every_s=1e9, devices=devices,
                          executor=executor, members_per_call=len(seeds))
  state = optimizers.with_learning_rate(
      eng.init(optimizers.sgd(0.05, 0.9), seeds), 0.05)
  start = jax.device_get(state.variables)
  plan = plans.Plan.stack(plans.epoch_plan(
      [np.arange(22)] * len(seeds), batch_size=8, seeds=seeds, epoch=0))
  state, _ = eng.run(plan, {'train': objectives.Update(
      objectives.TASK_OBJECTIVE, optimizers.SGD)}, state,
                     train.augmentation_keys(seeds),
                     sources={'train': 'retain'})
  trained = jax.device_get(state.variables)
  losses = lambda v: eng.predict(v, 'test')['loss']
  out = {'from scratch': (start, trained, losses(state.variables))}
  ctx = unlearning.Context(
      task=datasets.task_of('mufac/paper'), protocol='paper',
      data={name: splits[name] for name in ('forget', 'retain')},
      engine=eng, seeds=tuple(seeds),
      hparams={'batch_size': 8, 'epochs': 1, 'lr': 0.001})
  original = state.variables if scrub_from is None else scrub_from
  row, = unlearning.METHODS['scrub'].run(ctx, original)
  out['scrub'] = (jax.device_get(original), jax.device_get(row.variables),
                  losses(row.variables))
  return out


def run_checks() -> list[dict]:

  seeds = (3, 8)
  one, every = jax.devices()[:1], jax.devices()
  reference = _runs(one, executors.HOST, seeds)
  # Every other run unlearns from the reference's trained models (a single
  # model from its member), so that only the unlearning is compared.
  trained = reference['from scratch'][1]
  looped = _runs(one, executors.LOOP, seeds, scrub_from=trained)
  singles = [_runs(one, executors.HOST, (seed,), scrub_from=jax.tree.map(
      lambda x, k=k: x[k:k + 1], trained)) for k, seed in enumerate(seeds)]
  results = []

  def check(name, what, value, bound, detail=''):
    results.append({'check': name, 'of': what, 'value': value,
                    'bound': bound, 'passed': value <= bound,
                    'detail': detail})
    log(f'{name}, {what}: {value:.3g} (bound {bound:g}) '
        + ('passed' if value <= bound else 'FAILED'))

  for what, (start, variables, losses) in reference.items():
    member = max(_relative_difference(
        jax.tree.map(lambda x, k=k: x[k], start),
        jax.tree.map(lambda x, k=k: x[k], variables),
        jax.tree.map(lambda x: x[0], singles[k][what][1]))
                 for k in range(len(seeds)))
    check('population = single models', what, member, ROUNDING,
          'relative to the change')
    _, loop_variables, loop_losses = looped[what]
    check('loop executor = host executor', what,
          max(_largest_difference(variables, loop_variables),
              float(np.abs(losses - loop_losses).max())),
          EXECUTOR_TOLERANCE, 'absolute, parameters, statistics, losses')
  if len(every) > 1:
    # The executor this platform runs; the other one's steps are the same
    # programs (checked above).
    executor = executors.choose_executor('auto', every[0].platform)
    spread = _runs(every, executor, seeds, scrub_from=trained)
    for what, (start, variables, _) in reference.items():
      check(f'{len(every)} devices = 1 ({executor})', what,
            _relative_difference(start, variables, spread[what][1]),
            ROUNDING, 'relative to the change')
  else:
    log('one device: the devices check is skipped')
  return results


# -------------------------------------------------------------- throughput


def _images_per_second(image_size: int, dtype, members: int, width: int,
                       steps: int) -> dict:

  rng = np.random.default_rng(0)
  n = 64 * steps
  splits = {'train': {'image': rng.integers(0, 256, (n, image_size,
                                                     image_size, 3),
                                            dtype=np.uint8),
                      'label': rng.integers(0, 8, n)}}
  eng = engine_lib.Engine(
      models.ResNet18(num_outputs=8, num_filters=width, dtype=dtype),
      loss_kind='softmax', splits=splits, log_every_s=1e9)
  seeds = list(range(members))
  state = eng.init(optimizers.sgd(0.01, 0.9), seeds)
  plan = plans.Plan.stack(plans.epoch_plan(
      [np.arange(n)] * members, batch_size=64, seeds=seeds, epoch=0))
  update = {'train': objectives.Update(objectives.TASK_OBJECTIVE,
                                       optimizers.SGD)}
  # The first epoch compiles; the second is timed whole.
  state, first = eng.run(plan, update, state, train.augmentation_keys(seeds))
  _, result = eng.run(plan, update, state, train.augmentation_keys(seeds))
  return {'image_size': image_size, 'dtype': np.dtype(dtype).name,
          'members': members, 'width': width, 'steps': steps,
          'executor': eng.executor,
          'img_per_s': round(n * members / result.seconds, 1),
          'ms_per_step': round(1000 * result.seconds / len(plan), 2),
          'compile_s': round(first.compile_seconds, 1)}


def run_throughput(settings) -> list[dict]:
  rows = []
  cases = [(size, jnp.dtype(dtype), 1) for size in settings['image_sizes']
           for dtype in settings['dtypes']]
  cases.append((32, jnp.float32, settings['members']))
  for size, dtype, members in cases:
    rows.append(_images_per_second(size, dtype, members, settings['width'],
                                   settings['steps']))
    log(f'throughput {rows[-1]}')
  return rows


# ------------------------------------------------------------- quick starts


def run_quickstart(config_name: str, workdir: str, settings) -> dict:

  config = importlib.import_module(f'configs.{config_name}').get_config()
  config.data.data_dir = os.path.join(workdir, 'tfds')
  if settings['epochs']:
    for kind in ('original', 'retrain'):
      config[kind].epochs = settings['epochs']
      config[kind].decay_epochs = (settings['epochs'] // 2,)
  if settings['population'] and config.population.size > 1:
    config.population.size = settings['population']
  if settings['model']:
    config.model.name = settings['model']
    config.model.num_filters = 0
  if settings['methods'][config_name]:
    config.methods = settings['methods'][config_name]
  return {'config': f'configs/{config_name}.py',
          **quickstart.run(config, os.path.join(workdir, config_name))}


def main(argv):
  del argv
  recorder = metadata.Recorder()
  if _PLATFORM.value == 'cpu':
    # Before JAX starts its CPU backend (importing it starts none): 4
    # devices, to compare with 1.
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               ' --xla_force_host_platform_device_count=4')
  if _PLATFORM.value:
    jax.config.update('jax_platforms', _PLATFORM.value)
  short = (_SHORT.value if _SHORT.value is not None
           else jax.default_backend() == 'cpu')
  settings = SHORT if short else FULL
  report = {'short': short, 'settings': settings}
  began = time.perf_counter()
  workdir = _WORKDIR.value
  with (contextlib.nullcontext(workdir) if workdir
        else tempfile.TemporaryDirectory(prefix='device_check-')) as workdir:
    sections: dict[str, Callable[[], object]] = {
        'checks': run_checks,
        'throughput': lambda: run_throughput(settings),
        'quickstart': lambda: run_quickstart('quickstart', workdir, settings),
        'population': lambda: run_quickstart('quickstart_population',
                                             workdir, settings)}
    unknown = set(_SECTIONS.value) - set(sections)
    if unknown:
      raise SystemExit(f'--sections: unknown {sorted(unknown)}; choose from '
                       f'{", ".join(sections)}.')
    for name in _SECTIONS.value:
      log(f'{name} ...')
      start = time.perf_counter()
      report[name] = sections[name]()
      report.setdefault('seconds', {})[name] = round(
          time.perf_counter() - start, 1)
      # Written after every section: a later failure loses nothing.
      report['wall_s'] = round(time.perf_counter() - began, 1)
      record = recorder.write(_JSON.value, report)
  print(render.render_section('device_check', record))
  if _BENCHMARKS_MD.value:
    render.update(_BENCHMARKS_MD.value, {'device_check': record})
  failed = [c for c in report.get('checks', []) if not c['passed']]
  log(f'done in {report["wall_s"]:.0f} s; '
      + (f'{len(failed)} check(s) FAILED' if failed else 'every check passed'))
  if failed:
    raise SystemExit(1)


if __name__ == '__main__':
  app.run(main)
