"""What a dataset asks the model to predict, and which reference recipes apply.

The one place that reads a dataset name (`name/config`, e.g. `mucac/gender`);
recipes, unlearning loops, published tables and results all key on the `Task`
it returns.
"""

from __future__ import annotations

import dataclasses

from mufax.data.errors import DataError

# MUCAC's configs: all three CelebA attributes at once, or one of them.
MUCAC_MULTILABEL = 'multilabel'
MUCAC_ATTRIBUTES = ('gender', 'smiling', 'young')


@dataclasses.dataclass(frozen=True)
class Task:
  """A dataset's task.

  Attributes:
    name: what the model predicts: `age` (MUFAC's eight age groups),
      `multilabel` (MUCAC's three attributes) or one attribute (`gender`,
      `smiling`, `young`).
    family: the row of docs/protocol.md §4 and §5 (training recipes,
      unlearning hyperparameters and loops): `mufac`, `multilabel` or
      `binary`.
    benchmark: the paper's benchmark whose published numbers (§7) apply,
      `mufac` or `mucac`; None for the synthetic stand-in, which has none.
  """
  name: str
  family: str
  benchmark: str | None


def task_of(dataset: str) -> Task:
  """The task of `dataset`, a `name` or `name/config`.

  A bare `name` means the builder's default config, as `tfds.builder` reads
  it: `mucac` is `mucac/multilabel`. Every config of MUFAC (paper, clean)
  and of the synthetic stand-in (small, large) is age classification.

  Raises:
    DataError: `dataset` is of no known family, or an unknown MUCAC task.
  """
  family, _, config = dataset.partition('/')
  if family == 'mufac':
    return Task('age', 'mufac', 'mufac')
  if family == 'synthetic_faces':
    # A stand-in for MUFAC, trained and unlearnt with MUFAC's settings.
    return Task('age', 'mufac', None)
  if family == 'mucac' and config in ('', MUCAC_MULTILABEL):
    return Task(MUCAC_MULTILABEL, 'multilabel', 'mucac')
  if family == 'mucac' and config in MUCAC_ATTRIBUTES:
    return Task(config, 'binary', 'mucac')
  mucac = ', '.join(f'mucac/{c}'
                    for c in (MUCAC_MULTILABEL,) + MUCAC_ATTRIBUTES)
  raise DataError(f'Unknown dataset {dataset!r}; choose mufac/<config>, '
                  f'synthetic_faces/<config> or one of {mucac}.')
