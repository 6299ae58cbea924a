"""What every evaluator shares: its inputs, its result's shape, the registry.

An evaluator scores one table row (a population of N models) against the
reference populations and returns a `Result`:

  {'scalars':  {column: float},          # one number per column of the table
   'per_seed': {column: [float, ...]},   # one number per model, in seed order
   'tables':   {name: [{field: value}]}}  # extra tables, a list of rows each

All three keys are always there (empty when unused). Every per-seed column
also appears among the scalars as its mean, with the half width of its 95%
Student-t interval as `<column>_ci95` where there are two seeds or more
(docs/evaluation.md §1), so a runner
can put all scalars in its table without knowing which evaluator made them. An
evaluator that does not apply to a row (missing inputs, too few models)
leaves its columns out rather than writing NaN.

Every row, the `oracle` and `original` populations included, is scored
against `References.retrain`; the retrain row itself is not scored against
itself by the forgetting evaluators (it would be identical by construction:
F = 1), and the `oracle` row shows the level that an independent retraining
reaches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

import numpy as np

from mufax.evaluators import intervals


@dataclasses.dataclass(frozen=True)
class Population:
  """One table row's N models; every array is on the host."""
  # Row name: a method, or 'retrain', 'oracle', 'original'.
  name: str
  # Split ('forget', 'retain', 'test', 'unseen') -> [models, examples] φ
  # (docs/evaluation.md §2), float64.
  phi: Mapping[str, np.ndarray]
  # Split -> [models, examples] per-sample eval losses.
  losses: Mapping[str, np.ndarray]
  # One record of scalars per model, in seed order: 'test_accuracy',
  # 'retain_accuracy', 'mia', 'seconds', 'flops', ... (any may be missing).
  records: Sequence[Mapping[str, float]]


@dataclasses.dataclass(frozen=True)
class References:
  """The populations that every row is compared with."""
  retrain: Population
  # A second, independent retrained population (the ceiling of F).
  oracle: Population | None
  original: Population
  # [n_forget] identity of each forget example, in the order of phi['forget'].
  forget_identities: np.ndarray


class Result(TypedDict):
  scalars: dict[str, float]
  per_seed: dict[str, list[float]]
  tables: dict[str, list[dict[str, Any]]]


Evaluator = Callable[[Population, References], Result]

EVALUATORS: dict[str, Evaluator] = {}


def register(name: str):
  """Function decorator: makes an evaluator run for every row."""

  def wrap(fn: Evaluator) -> Evaluator:
    if name in EVALUATORS:
      raise ValueError(f'Evaluator {name!r} is registered twice.')
    EVALUATORS[name] = fn
    return fn

  return wrap


def result(scalars: Mapping[str, float] | None = None,
           per_seed: Mapping[str, Sequence[float]] | None = None,
           tables: Mapping[str, list[dict[str, Any]]] | None = None) -> Result:
  """A `Result` whose scalars include each per-seed column's mean and CI."""
  per_seed = {k: [float(v) for v in values]
              for k, values in (per_seed or {}).items()}
  merged = {k: float(v) for k, v in (scalars or {}).items()}
  for key, value in intervals.summarise(per_seed).items():
    if key in merged:
      raise ValueError(f'Column {key!r} is both a scalar and a per-seed '
                       'summary.')
    merged[key] = value
  return Result(scalars=merged, per_seed=per_seed, tables=dict(tables or {}))


def run_all(row: Population, refs: References,
            names: Sequence[str] | None = None) -> Result:
  """Every evaluator's result (or those in `names`) for `row`, merged.

  Raises:
    ValueError: if two evaluators write the same column or table.
  """
  merged = result()
  for name in EVALUATORS if names is None else names:
    for part, values in EVALUATORS[name](row, refs).items():
      clash = merged[part].keys() & values.keys()
      if clash:
        raise ValueError(f'Evaluator {name!r} writes {part} {sorted(clash)} '
                         'that another evaluator wrote.')
      merged[part].update(values)
  return merged


# Fewest models per population for which F and the attack mean something:
# between two populations of one distribution the attack scores 0.004 at
# N = 2, 0.41 at N = 3 and 0.49 from N = 8 on (docs/evaluation.md §3).
MIN_MODELS = 8


def forget_pools(row: Population,
                 refs: References) -> tuple[np.ndarray, np.ndarray] | None:
  """The row's and retraining's forget φ, [N, n_forget] float64 each.

  A row of one model (a shared original) stands for N identical members: it
  is the same model whichever seed unlearns it. None where a forgetting
  score does not apply: the retrain row itself, a row without forget φ, or
  populations of different sizes or of fewer than MIN_MODELS models.
  """
  if row.name == refs.retrain.name or 'forget' not in row.phi:
    return None
  u = np.asarray(row.phi['forget'], dtype=np.float64)
  r = np.asarray(refs.retrain.phi['forget'], dtype=np.float64)
  if u.shape[0] == 1:
    u = np.repeat(u, r.shape[0], axis=0)
  if u.shape[0] != r.shape[0] or u.shape[0] < MIN_MODELS:
    return None
  return u, r


def record_column(population: Population, key: str) -> np.ndarray | None:
  """[models] float64 values of `key` in every record, or None if any lacks it.
  """
  if not population.records or any(key not in r for r in population.records):
    return None
  return np.array([r[key] for r in population.records], dtype=np.float64)
