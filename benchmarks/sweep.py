r"""A sweep's candidates in one program against the same candidates run one by
one (docs/protocol.md §9).

K candidates of one method that differ only in one `per_member` field (the
first by name with a search range: finetune's learning rate; drawn from its
range, seeded) unlearn from one original: once as K members of one
population program (`Context.member_hparams`), once as K single-model runs
one after another, in one process. Both are timed from the call to the method's
`run` to its last row, each arm with an engine of its own and its
compilation included, as a sweep pays it; the ratio
is sequential seconds / one-program seconds (above 1: the shared program is
faster). Random images and labels at 32x32, 8 classes, nothing prepared:

  python -m benchmarks.sweep --json=benchmarks/results/sweep.json

On a GPU the same command with `--num_filters=64 --image_size=64` (and more
`--retain`) is the accelerator figure; on one CPU device the engine runs the
members one by one (BENCHMARKS.md §2), so the ratio there shows only what
one program saves in compiling and dispatch.
"""

from __future__ import annotations

import dataclasses
import time

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import metadata
from mufax import datasets
from mufax import engine as engine_lib
from mufax import models
from mufax import unlearning

_METHOD = flags.DEFINE_string('method', 'finetune', 'Method to sweep.')
_CANDIDATES = flags.DEFINE_integer('candidates', 16, 'Candidates K.')
_NUM_FILTERS = flags.DEFINE_integer('num_filters', 16, 'ResNet-18 width.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 32, 'Image size.')
_RETAIN = flags.DEFINE_integer('retain', 256, 'Retain images.')
_FORGET = flags.DEFINE_integer('forget', 64, 'Forget images.')
_JSON = flags.DEFINE_string('json', None, 'Also write the results here.')

SEED = 42


def _data(n: int, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  size = _IMAGE_SIZE.value
  return {'image': rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
          'label': rng.integers(0, 8, n)}


def _timed_run(method, ctx, original) -> float:
  start = time.perf_counter()
  *_, row = method.run(ctx, original)
  jax.block_until_ready(row.variables)
  return time.perf_counter() - start


def main(argv):
  del argv
  recorder = metadata.Recorder()
  task = datasets.task_of('mufac/paper')
  model = models.ResNet18(num_outputs=task.num_outputs,
                          num_filters=_NUM_FILTERS.value)
  data = {'forget': _data(_FORGET.value, 1), 'retain': _data(_RETAIN.value, 2)}
  method = unlearning.METHODS[_METHOD.value]
  spaces = unlearning.search_spaces_of(method.Hparams)
  field = sorted(unlearning.member_fields(method.Hparams) & set(spaces))[0]
  space = spaces[field]
  rates = space.sample(np.random.default_rng(0), _CANDIDATES.value)
  original = jax.tree.map(lambda x: np.asarray(x)[None],
                          models.init_variables(model, jax.random.key(SEED),
                                                _IMAGE_SIZE.value))
  # An engine per arm, so that each compiles its own programs.
  context = lambda: unlearning.Context(
      task=task, protocol='paper', data=data, seeds=(SEED,),
      engine=engine_lib.Engine(model, loss_kind=task.loss_kind, splits=data,
                               log_every_s=1e9))
  together = _timed_run(method, dataclasses.replace(
      context(), seeds=(SEED,) * len(rates),
      member_hparams=tuple({field: r} for r in rates)), original)
  single = context()
  one_by_one = sum(_timed_run(method, dataclasses.replace(
      single, hparams={field: r}), original) for r in rates)
  result = {'method': _METHOD.value, 'candidates': len(rates),
            'field': field, 'range': str(space),
            'num_filters': _NUM_FILTERS.value,
            'image_size': _IMAGE_SIZE.value, 'retain': _RETAIN.value,
            'forget': _FORGET.value, 'backend': jax.default_backend(),
            'one_program_s': together, 'one_by_one_s': one_by_one,
            'ratio': one_by_one / together}
  print(f'{_METHOD.value}, {len(rates)} candidates ({field} {space}): one '
        f'program {together:.1f} s, one by one {one_by_one:.1f} s, ratio '
        f'{one_by_one / together:.2f} ({jax.default_backend()})')
  if _JSON.value:
    recorder.write(_JSON.value, result)


if __name__ == '__main__':
  app.run(main)
