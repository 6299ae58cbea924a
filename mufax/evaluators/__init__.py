"""The extended evaluation (docs/evaluation.md), host-side numpy in float64.

One module per concept; each registered evaluator scores one table row (a
`Population`) against the `References` and returns a `Result` (see `base`).
`evaluate(row, refs)` runs them all and merges their columns, so a runner
needs no evaluator's name.
"""

from mufax.evaluators import cost  # noqa: F401 (registers)
from mufax.evaluators import epsilon  # noqa: F401
from mufax.evaluators import identity  # noqa: F401
from mufax.evaluators import lira  # noqa: F401
from mufax.evaluators import low_fpr  # noqa: F401
from mufax.evaluators import seeds  # noqa: F401
from mufax.evaluators.base import EVALUATORS
from mufax.evaluators.base import Population
from mufax.evaluators.base import References
from mufax.evaluators.base import Result
from mufax.evaluators.base import evaluate
from mufax.evaluators.base import register
from mufax.evaluators.intervals import SUFFIX as CI_SUFFIX

__all__ = ['CI_SUFFIX', 'EVALUATORS', 'Population', 'References', 'Result', 'evaluate',
           'register']
