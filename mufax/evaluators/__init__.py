"""The extended evaluation (docs/evaluation.md), host-side numpy in float64.

One module per concept; each registered evaluator scores one table row (a
`Population`) against the `References` and returns a `Result` (see `base`).
`run_all(row, refs)` runs them all and merges their columns, so a runner
needs no evaluator's name. Every module of this package is imported here, so
a new evaluator is one new file that registers itself.
"""

import importlib
import pkgutil

from mufax.evaluators.base import EVALUATORS
from mufax.evaluators.base import Population
from mufax.evaluators.base import References
from mufax.evaluators.base import Result
from mufax.evaluators.base import register
from mufax.evaluators.base import run_all
from mufax.evaluators.intervals import SUFFIX as CI_SUFFIX

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f'{__name__}.{_module.name}')

__all__ = ['CI_SUFFIX', 'EVALUATORS', 'Population', 'References', 'Result',
           'register', 'run_all']
