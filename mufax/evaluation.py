"""The extended evaluation of a finished table (docs/evaluation.md).

Reads what the runner wrote for each row (its record and
`losses/<row>.npz`), scores every row against the retrained population with
every registered evaluator (`mufax/evaluators`), and writes each evaluator
table to `<table>/<row>.csv` (e.g. `identities/<row>.csv`). It never touches
models: anything here can be recomputed from the workdir.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence

import numpy as np

from mufax import evaluators
from mufax import files
from mufax.evaluators import low_fpr


def population(workdir: str,
               record: Mapping) -> evaluators.Population | None:
  """A row's population from its record and its saved arrays; None for a
  row saved without φ (by an earlier version)."""
  path = os.path.join(workdir, 'losses', f'{record["method"]}.npz')
  # The runner saves each split's losses under its name and φ under
  # `phi_<split>`.
  with np.load(path) as arrays:
    phi = {k.removeprefix('phi_'): arrays[k] for k in arrays.files
           if k.startswith('phi_')}
    losses = {k: arrays[k] for k in arrays.files if not k.startswith('phi_')}
  if not phi:
    return None
  members = record.get('members') or [record]
  models = len(next(iter(phi.values())))
  if len(members) != models:
    raise ValueError(f'{path}: {models} models, but the record of '
                     f'{record["method"]} has {len(members)}.')
  # The cost is the row's, all members trained at once.
  cost = {'seconds': record['wall_seconds'], 'flops': record['flops']}
  return evaluators.Population(
      name=record['method'], phi=phi, losses=losses,
      records=[{'test_accuracy': m['accuracy'],
                'retain_accuracy': m['retain_accuracy'], 'mia': m['mia'],
                **cost} for m in members])


def run_evaluators(workdir: str, records: Sequence[Mapping],
                   forget_identities: np.ndarray
                   ) -> dict[str, evaluators.Result]:
  """Every row's extended evaluation, by row name; {} when the table has no
  `retrain` or `original` row to compare with."""
  rows = {r['method']: population(workdir, r) for r in records}
  rows = {name: row for name, row in rows.items() if row is not None}
  if not all(name in rows for name in ('retrain', 'original')):
    return {}
  refs = evaluators.References(
      retrain=rows['retrain'], oracle=rows.get('oracle'),
      original=rows['original'], forget_identities=forget_identities)
  results = {name: evaluators.run_all(row, refs)
             for name, row in rows.items()}
  for name, result in results.items():
    for table, lines in result['tables'].items():
      write_csv(os.path.join(workdir, table, f'{name}.csv'), lines)
  return results


def write_csv(path: str, lines: Sequence[Mapping]) -> None:
  if not lines:
    return
  with files.replaced_atomically(path, newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(lines[0]))
    writer.writeheader()
    writer.writerows(lines)


# Columns first in the table, in this order; any other column an evaluator
# writes follows them.
LEADING_COLUMNS = ('F', 'final_score', 'lira_accuracy', 'lira_auc',
                   'F_identity', 'lira_accuracy_identity', low_fpr.COLUMN_PREFIX,
                   'retain_accuracy', 'relative_seconds', 'relative_flops')
# Per-model values the runner's own table already shows, with their
# intervals, and F's N, which goes into F's heading.
SHOWN_ELSEWHERE = ('test_accuracy', 'mia', 'seconds', 'flops', 'F_N')


def columns(results: Mapping[str, evaluators.Result]) -> list[str]:
  """The table's columns: LEADING_COLUMNS first, then the rest as found."""
  found = []
  for result in results.values():
    for key in result['scalars']:
      if (not key.endswith(evaluators.CI_SUFFIX) and key not in found
          and key not in SHOWN_ELSEWHERE):
        found.append(key)

  def rank(column: str) -> int:
    # The low-FPR columns are named by the rate they reach: they lead by
    # their prefix, in the order their evaluator wrote them.
    for i, lead in enumerate(LEADING_COLUMNS):
      if column == lead or (lead == low_fpr.COLUMN_PREFIX
                            and column.startswith(lead)):
        return i
    return len(LEADING_COLUMNS)

  return sorted(found, key=rank)


def format_table(results: Mapping[str, evaluators.Result]) -> str:
  """The scalars of every row as a Markdown table: a per-seed column as
  mean ± its 95% half width, other columns as they are."""
  keys = columns(results)
  head = []
  for key in keys:
    if key == 'F':
      n = next((r['scalars']['F_N'] for r in results.values()
                if 'F_N' in r['scalars']), None)
      oracle = results.get('oracle', {}).get('scalars', {}).get('F')
      key = f'F (N = {n:.0f}' + (f', oracle {oracle:.3f})'
                                 if oracle is not None else ')')
    head.append(key)
  lines = ['| row | ' + ' | '.join(head) + ' |',
           '|' + '---|' * (len(keys) + 1)]
  for name, result in results.items():
    scalars = result['scalars']
    cells = [format_value(scalars.get(key),
                          scalars.get(key + evaluators.CI_SUFFIX))
             for key in keys]
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def format_value(value: float | None, half_width: float | None) -> str:
  """`value`, with `± half_width` where there is a finite one."""
  if value is None:
    return ''
  if half_width is None or not np.isfinite(half_width):
    return f'{value:.4g}'
  return f'{value:.4g} ± {half_width:.2g}'


def format_least_forgotten(results: Mapping[str, evaluators.Result]) -> str:
  """Per row, the people whose forget images are told apart from retraining
  most easily (largest ε), as Markdown lines."""
  lines = []
  for name, result in results.items():
    people = result['tables'].get('least_forgotten')
    if people:
      lines.append(f'- **{name}**: ' + ', '.join(
          f'{p["identity"]} (ε {p["epsilon"]:.2f}, attack '
          f'{p["attack_accuracy"]:.2f}, {p["images"]} images)'
          for p in people))
  return '\n'.join(lines)
