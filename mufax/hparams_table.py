"""The table of every method's hyperparameters in docs/protocol.md, made from
the methods' own declarations (`hparams.hparam`): the default, the values a
field may take and where the default comes from, and the range a sweep
searches with where that range comes from. The document holds it
between two markers, and `tests/hparams_table_test.py` fails when the two
drift apart. To write it again after changing a method:

  python -m mufax.hparams_table docs/protocol.md
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping

from mufax import unlearning

BEGIN = ('<!-- The table below is made by '
         '`python -m mufax.hparams_table docs/protocol.md`. -->')
END = '<!-- End of the table made from the methods. -->'


def _allowed(rule: Mapping) -> str:
  if rule['choices'] is not None:
    return 'one of ' + ', '.join(f'`{c}`' for c in rule['choices'])
  bounds = []
  if rule['positive']:
    bounds.append('> 0')
  if rule['minimum'] is not None:
    bounds.append(f'≥ {rule["minimum"]}')
  if rule['maximum'] is not None:
    bounds.append(f'≤ {rule["maximum"]}')
  return ', '.join(bounds)


def _default(field: dataclasses.Field) -> str:
  per_task = field.metadata.get('per_task')
  if field.default is None and per_task:
    return '; '.join(f'{task}: `{value}`' for task, value in per_task.items())
  return f'`{field.default}`'


def markdown(methods: Mapping) -> str:
  """Rows of (method, field) for every method that declares
  hyperparameters, in `methods`' order."""
  lines = ['| method | hyperparameter | default | allowed | source of the '
           'default | search range | source of the range |',
           '|---|---|---|---|---|---|---|']
  for name, method in methods.items():
    for field in dataclasses.fields(method.Hparams):
      search = field.metadata.get('search')
      lines.append(f'| `{name}` | `{field.name}` | {_default(field)} | '
                   f'{_allowed(field.metadata)} | '
                   f'{field.metadata["source"]} | '
                   f'{search if search is not None else "not searched"} | '
                   f'{field.metadata.get("search_source") or ""} |')
  return '\n'.join(lines)


def replace_table(text: str, table: str, path: str = 'the document') -> str:
  """`text` with what stands between BEGIN and END replaced by `table`."""
  if BEGIN not in text or END not in text:
    raise ValueError(f'{path} has no {BEGIN} ... {END} block to fill.')
  before, rest = text.split(BEGIN, 1)
  _, after = rest.split(END, 1)
  return f'{before}{BEGIN}\n{table}\n{END}{after}'


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise SystemExit('usage: python -m mufax.hparams_table docs/protocol.md')
  with open(argv[1]) as f:
    text = f.read()
  text = replace_table(text, markdown(unlearning.METHODS), argv[1])
  with open(argv[1], 'w') as f:
    f.write(text)


if __name__ == '__main__':
  main(sys.argv)
