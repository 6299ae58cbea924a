r"""Training images/s of a population of N models in one vmapped program.

The training engine trains N models at once: parameters, batch statistics and
optimizer state carry a leading model axis and the single-model train step is
`jax.vmap`ped over it, each member with its own batch [N, B, H, W, 3]. This
times, for N = 1, 2, 4, 8, that vmapped step (one jitted program) against N
runs of the same single-model step (jitted unvmapped) one after another, in
one process, the two interleaved repetition by repetition. The ratio is
vmapped img/s / sequential img/s: above 1, a population trains faster than
its members one at a time.

The step: softmax cross-entropy, SGD with momentum 0.9, BatchNorm in train
mode (batch statistics updated), float32, uint8 images converted on device,
no augmentation. Two models:

- small: `models.ResNet18(num_outputs=8, num_filters=16)` at 32x32;
- full: `models.ResNet18(num_outputs=8)` at 64x64.

  python -m benchmarks.population --json=benchmarks/results/population.json

Each figure is the median over `--repeats` repetitions of `--steps` steps per
member, after one warm-up step. Compilation is timed apart (`compile_s`).
"""

from __future__ import annotations

import os
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import metadata
from mufax import input_pipeline
from mufax import losses as losses_lib
from mufax import models
from mufax import objectives

_MEMBERS = flags.DEFINE_list('members', ['1', '2', '4', '8'],
                             'Population sizes N.')
_CONFIGS = flags.DEFINE_list('configs', ['small', 'full'],
                             'Models to time: small (16 filters, 32x32), '
                             'full (64 filters, 64x64).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Images per member.')
_STEPS = flags.DEFINE_integer('steps', 2, 'Steps per member per repetition.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repetitions.')
_JSON = flags.DEFINE_string('json', None, 'Also write the results here.')

NUM_OUTPUTS = 8
LEARNING_RATE = 0.01
MOMENTUM = 0.9
CONFIGS = {'small': (16, 32), 'full': (64, 64)}  # (num_filters, image size)


def make_step(model, tx):
  """One model's train step `(params, batch_stats, opt_state, images,
  labels) -> (params, batch_stats, opt_state, loss)`."""

  def step(params, batch_stats, opt_state, images, labels):

    def loss_fn(params):
      logits, new_stats = objectives.apply_model(
          model, params, batch_stats, input_pipeline.to_float(images),
          train=True)
      return (losses_lib.per_sample_loss(logits, labels, 'softmax').mean(),
              new_stats)

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  return step


def time_config(name: str, members: list[int], batch_size: int, steps: int,
                repeats: int) -> list[dict]:
  """One row per population size: img/s of both ways, ratio, compile s."""
  num_filters, size = CONFIGS[name]
  # The formulations the engine would build for this platform.
  model = models.for_platform(
      models.ResNet18(num_outputs=NUM_OUTPUTS, num_filters=num_filters),
      jax.default_backend())
  tx = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
  step = make_step(model, tx)

  def init(key):
    variables = models.init_variables(model, key, size)
    return (variables['params'], variables['batch_stats'],
            tx.init(variables['params']))

  def compiled(fn, *args):
    start = time.perf_counter()
    executable = jax.jit(fn, donate_argnums=(0, 1, 2)).lower(*args).compile()
    return executable, time.perf_counter() - start

  rng = np.random.default_rng(0)
  rows = []
  single = None
  for n in members:
    keys = jax.random.split(jax.random.key(0), n)
    images = jnp.asarray(rng.integers(0, 256, (n, batch_size, size, size, 3),
                                      dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, NUM_OUTPUTS, (n, batch_size),
                                      dtype=np.int32))
    population = jax.jit(jax.vmap(init))(keys)
    vmapped, vmapped_compile_s = compiled(jax.vmap(step), *population, images,
                                          labels)
    states = [jax.jit(init)(k) for k in keys]
    if single is None:
      single = compiled(step, *states[0], images[0], labels[0])
    single_step, single_compile_s = single

    def run_vmapped(count):
      nonlocal population
      for _ in range(count):
        *population, loss = vmapped(*population, images, labels)
      jax.block_until_ready((population, loss))

    def run_sequential(count):
      for _ in range(count):
        for k in range(n):
          *states[k], loss = single_step(*states[k], images[k], labels[k])
      jax.block_until_ready((states, loss))

    runs = {'sequential': run_sequential, 'vmapped': run_vmapped}
    for run in runs.values():
      run(1)
    rates = {key: [] for key in runs}
    for _ in range(repeats):
      for key, run in runs.items():
        start = time.perf_counter()
        run(steps)
        rates[key].append(steps * n * batch_size
                          / (time.perf_counter() - start))
    median = {key: statistics.median(r) for key, r in rates.items()}
    rows.append({
        'model': name, 'num_filters': num_filters, 'image_size': size,
        'members': n, 'sequential_img_per_s': median['sequential'],
        'vmapped_img_per_s': median['vmapped'],
        'ratio': median['vmapped'] / median['sequential'],
        'compile_s': {'single': single_compile_s,
                      'vmapped': vmapped_compile_s},
        'repetitions_img_per_s': rates})
    print(f'{name:6s} {size:4d} {n:3d} {median["sequential"]:14.1f} '
          f'{median["vmapped"]:12.1f} {rows[-1]["ratio"]:6.2f} '
          f'{vmapped_compile_s:10.1f}', flush=True)
  return rows


def main(argv):
  del argv
  recorder = metadata.Recorder()
  members = [int(n) for n in _MEMBERS.value]
  print(f'Population training, batch {_BATCH_SIZE.value} per member, '
        f'float32, jax {jax.default_backend()} ({os.cpu_count()} CPU cores)')
  print(f'{"model":6s} {"size":>4s} {"N":>3s} {"sequential img/s":>14s} '
        f'{"vmapped img/s":>12s} {"ratio":>6s} {"compile s":>10s}')
  rows = []
  for name in _CONFIGS.value:
    rows += time_config(name, members, _BATCH_SIZE.value, _STEPS.value,
                        _REPEATS.value)
  print(f'load average before/after: {recorder.load_before[0]:.2f} / '
        f'{os.getloadavg()[0]:.2f}')
  if _JSON.value:
    recorder.write(_JSON.value, {'rows': rows,
                                 'batch_size': _BATCH_SIZE.value,
                                 'steps': _STEPS.value,
                                 'repeats': _REPEATS.value})


if __name__ == '__main__':
  app.run(main)
