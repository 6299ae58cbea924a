"""Unlearning methods (protocol §5), one module each, registered by name.

`METHODS[name].run(context, original_variables)` yields the method's rows
(`core.Row`); `unsir` yields two, one per stage.
"""

from mufax.unlearning import advanced_neggrad  # noqa: F401 (registers)
from mufax.unlearning import cf_k  # noqa: F401
from mufax.unlearning import finetune  # noqa: F401
from mufax.unlearning import neggrad  # noqa: F401
from mufax.unlearning import retrain  # noqa: F401
from mufax.unlearning import scrub  # noqa: F401
from mufax.unlearning import unsir  # noqa: F401
from mufax.unlearning.core import Context
from mufax.unlearning.core import METHODS
from mufax.unlearning.core import Row

__all__ = ['Context', 'METHODS', 'Row']
