"""Where a hyperparameter may be searched: a range beside its default.

A method declares a field's search range once, in its `hparam(search=...)`,
with where the range comes from (`search_source`: the method's paper or
official sweep where one exists). A sweep draws K candidates from the
ranges, seeded (`sample`), or lays them on a grid (`grid`); both are pure
functions of their arguments, so a killed sweep draws the same candidates
again.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np


@dataclasses.dataclass(frozen=True)
class Uniform:
  """Floats uniform on [low, high]."""
  low: float
  high: float
  # Uniform in log(value) instead (`LogUniform`).
  log: ClassVar[bool] = False

  def __post_init__(self):
    if not (self.low < self.high and (self.low > 0 or not self.log)):
      raise ValueError(f'{type(self).__name__}({self.low}, {self.high}): '
                       'needs low < high' + (', both > 0.' if self.log
                                             else '.'))

  def _ends(self) -> tuple[float, float]:
    return ((math.log(self.low), math.log(self.high)) if self.log
            else (self.low, self.high))

  def _values(self, points: np.ndarray) -> list[float]:
    return [float(v) for v in (np.exp(points) if self.log else points)]

  def sample(self, rng: np.random.Generator, n: int) -> list[float]:
    return self._values(rng.uniform(*self._ends(), n))

  def grid(self, n: int) -> list[float]:
    # The ends exactly, not exp(log(end)).
    inner = self._values(np.linspace(*self._ends(), n))[1:-1]
    return [self.low, *inner, self.high] if n > 1 else [self.low]

  def values(self) -> tuple[float, float]:
    return self.low, self.high

  def __str__(self) -> str:
    return (f'{"log-uniform" if self.log else "uniform"} '
            f'[{self.low:g}, {self.high:g}]')


@dataclasses.dataclass(frozen=True)
class LogUniform(Uniform):
  """Floats whose logarithm is uniform on [log low, log high]: learning
  rates, loss weights, thresholds spanning decades."""
  log: ClassVar[bool] = True


@dataclasses.dataclass(frozen=True)
class IntRange:
  """Integers low..high, both included (epochs, layers)."""
  low: int
  high: int

  def __post_init__(self):
    if not self.low < self.high:
      raise ValueError(f'IntRange({self.low}, {self.high}): needs '
                       'low < high.')

  def sample(self, rng: np.random.Generator, n: int) -> list[int]:
    return [int(v) for v in rng.integers(self.low, self.high + 1, n)]

  def grid(self, n: int) -> list[int]:
    return sorted({int(round(v))
                   for v in np.linspace(self.low, self.high, n)})

  def values(self) -> tuple[int, int]:
    return self.low, self.high

  def __str__(self) -> str:
    return f'integers {self.low}..{self.high}'


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of a few values (modes, kinds)."""
  options: tuple[Any, ...]

  def __post_init__(self):
    if len(self.options) < 2:
      raise ValueError(f'Choice{self.options}: needs two options or more.')

  def sample(self, rng: np.random.Generator, n: int) -> list[Any]:
    return [self.options[i] for i in rng.integers(0, len(self.options), n)]

  def grid(self, n: int) -> list[Any]:
    del n  # Every option, whatever the grid's density.
    return list(self.options)

  def values(self) -> tuple[Any, ...]:
    return self.options

  def __str__(self) -> str:
    return 'one of ' + ', '.join(str(o) for o in self.options)


SearchSpace = LogUniform | Uniform | IntRange | Choice


def sample(spaces: dict[str, SearchSpace], n: int,
           seed: int) -> list[dict[str, Any]]:
  """`n` candidates, each field drawn independently from its range; the
  same (`spaces`, `n`, `seed`) draws the same candidates."""
  rng = np.random.default_rng(seed)
  columns = {name: space.sample(rng, n) for name, space in spaces.items()}
  return [{name: column[k] for name, column in columns.items()}
          for k in range(n)]


def grid(spaces: dict[str, SearchSpace],
         points: int) -> list[dict[str, Any]]:
  """Every combination of `points` values per range (every option of a
  `Choice`), in a fixed order."""
  candidates: list[dict[str, Any]] = [{}]
  for name, space in spaces.items():
    candidates = [c | {name: v} for c in candidates
                  for v in space.grid(points)]
  return candidates



# The ranges most methods share, as `hparam` arguments: DeepUnlearn's sweep
# (Cadet, Gayet et al. 2024), the one peer benchmark whose code declares its
# search spaces.
_DEEPUNLEARN = ('DeepUnlearn (Cadet, Gayet et al. 2024), '
                'github.com/xcadet/deepunlearn')
# Learning rates reach the model only through the optimizer state
# (`hparam(per_member=True)`).
LEARNING_RATES = {'search': LogUniform(1e-5, 1e-1),
                  'search_source': _DEEPUNLEARN + ', munl/settings.py '
                                   '(learning_rate: log-uniform 1e-5..1e-1)',
                  'per_member': True}
# Its epochs run 1 .. ceil(0.2 x the original's epochs): 10 on its 50-epoch
# face set (MUFAC's 30 epochs would give 6); 10 holds every paper default.
EPOCHS = {'search': IntRange(1, 10),
          'search_source': _DEEPUNLEARN + ', munl/hpsearch/suggestor.py '
                           '(num_epochs: 1 .. ceil(0.2 x the original\'s '
                           'epochs), 10 on UTKFace)'}
