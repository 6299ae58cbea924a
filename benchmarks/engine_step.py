r"""Compile seconds and step time of the engine's update program, under the
choices the engine makes for CPU.

The engine's own training program (device-resident data, augmentation, SGD
with momentum, BatchNorm in train mode, batch 64 per member) for one epoch of
random images, for every combination of
- `--members`: population sizes;
- `--convolutions`: `plan`, the formulations `conv.cpu_formulations` picks
  per shape, or `native`, XLA's native convolution everywhere;
- `--executors`: `host`, the host dispatching each step, or `loop`, one
  compiled loop per span of steps (`auto`: the platform's choice).
The step time is the epoch's run time (the first steps included, compilation
excluded) over its steps.

  python -m benchmarks.engine_step --members=1,8 \
      --convolutions=plan,native \
      --json=benchmarks/results/convolution_choice.json
  python -m benchmarks.engine_step --members=1 --executors=host,loop \
      --json=benchmarks/results/executors.json
"""

from __future__ import annotations

import itertools
import json

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import metadata
from mufax import conv
from mufax import engine
from mufax import executors
from mufax import models
from mufax import objectives
from mufax import optimizers
from mufax import plans

_WIDTH = flags.DEFINE_integer('width', 16, 'ResNet-18 width (64: full).')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 32, 'Image side.')
_MEMBERS = flags.DEFINE_list('members', ['1'], 'Population sizes.')
_STEPS = flags.DEFINE_integer('steps', 8, 'Steps of batch 64 per member.')
_CONVOLUTIONS = flags.DEFINE_list(
    'convolutions', ['plan'],
    "plan: conv.cpu_formulations' choices; native: XLA's everywhere.")
_EXECUTORS = flags.DEFINE_list(
    'executors', ['auto'], f'Any of {", ".join(executors.EXECUTORS)}.')
_JSON = flags.DEFINE_string('json', None, 'Also write the results here.')


def time_update(members: int, convolutions: str, executor: str) -> dict:
  size, n = _IMAGE_SIZE.value, 64 * _STEPS.value
  rng = np.random.default_rng(0)
  splits = {'train': {
      'image': rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
      'label': rng.integers(0, 8, n)}}
  eng = engine.Engine(
      models.ResNet18(num_outputs=8, num_filters=_WIDTH.value,
                      conv=conv.Conv if convolutions == 'native' else None),
      loss_kind='softmax', splits=splits, log_every_s=1e9, image_size=size,
      executor=executor)
  seeds = list(range(members))
  state = eng.init(optimizers.sgd(0.01, 0.9), seeds)
  plan = plans.Plan.stack(plans.epoch_plan(
      [np.arange(n)] * members, batch_size=64, seeds=seeds, epoch=0))
  rngs = jax.vmap(jax.random.key)(np.arange(members))
  update = objectives.Update(objectives.TASK_OBJECTIVE, optimizers.SGD)
  _, result = eng.run(plan, {'train': update}, state, rngs)
  return {'members': members, 'convolutions': convolutions,
          'executor': eng.executor,
          'compile_s': round(result.compile_seconds, 1),
          'ms_per_step': round(1000 * result.seconds / len(plan), 1)}


def main(argv):
  del argv
  recorder = metadata.Recorder()
  rows = []
  for members, convolutions, executor in itertools.product(
      _MEMBERS.value, _CONVOLUTIONS.value, _EXECUTORS.value):
    rows.append(time_update(int(members), convolutions, executor))
    print(json.dumps(rows[-1]), flush=True)
  if _JSON.value:
    recorder.write(_JSON.value, {'width': _WIDTH.value,
                                 'image_size': _IMAGE_SIZE.value,
                                 'steps': _STEPS.value, 'rows': rows})


if __name__ == '__main__':
  app.run(main)
