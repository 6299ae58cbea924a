r"""Compile seconds and step time of the engine's update program, with the
convolutions `conv.cpu_formulations` chooses against all-native ones.

The engine's own training program (device-resident data, augmentation, SGD
with momentum, BatchNorm in train mode) for one epoch of random images, with
`--members` members; `--convolutions=native` replaces
`conv.cpu_formulations` by XLA's native convolution everywhere. The step
time is the epoch's run time (the first steps included, compilation
excluded) over its steps.

  python -m benchmarks.convolution_choice --width=16 --image_size=32 \
      --members=1 --steps=30 --convolutions=plan
"""

from __future__ import annotations

import json

from absl import app
from absl import flags
import jax
import numpy as np

from mufax import conv
from mufax import engine
from mufax import models
from mufax import objectives
from mufax import optimizers
from mufax import plans

_WIDTH = flags.DEFINE_integer('width', 16, 'ResNet-18 width (64: full).')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 32, 'Image side.')
_MEMBERS = flags.DEFINE_integer('members', 1, 'Population size.')
_STEPS = flags.DEFINE_integer('steps', 30, 'Steps of batch 64 per member.')
_CONVOLUTIONS = flags.DEFINE_enum(
    'convolutions', 'plan', ['plan', 'native'],
    "conv.cpu_formulations' choices, or native everywhere.")


def main(argv):
  del argv
  size, members, n = _IMAGE_SIZE.value, _MEMBERS.value, 64 * _STEPS.value
  rng = np.random.default_rng(0)
  splits = {'train': {
      'image': rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
      'label': rng.integers(0, 8, n)}}
  eng = engine.Engine(
      models.ResNet18(num_outputs=8, num_filters=_WIDTH.value,
                      conv=conv.Conv if _CONVOLUTIONS.value == 'native'
                      else None),
      loss='softmax', splits=splits, log_every_s=1e9, image_size=size)
  seeds = list(range(members))
  state = eng.init(optimizers.sgd(0.01, 0.9), seeds)
  plan = plans.Plan.stack(plans.epoch_plan(
      [np.arange(n)] * members, batch_size=64, seeds=seeds, epoch=0))
  rngs = jax.vmap(jax.random.key)(np.arange(members))
  update = objectives.Update(objectives.TASK_OBJECTIVE, optimizers.SGD)
  _, result = eng.run(plan, {'train': update}, state, rngs)
  print(json.dumps({
      'width': _WIDTH.value, 'image_size': size, 'members': members,
      'convolutions': _CONVOLUTIONS.value,
      'compile_s': round(result.compile_seconds, 1),
      'ms_per_step': round(1000 * result.seconds / len(plan), 1)}))


if __name__ == '__main__':
  app.run(main)
