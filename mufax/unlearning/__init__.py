"""Unlearning methods (docs/protocol.md §5), one module each, registered by
name.

`METHODS[name].run(context, original_variables)` yields the method's rows
(`core.Row`); `unsir` yields two, one per stage. Every module of this
package is imported here, so a new method is one new file that registers
itself; one outside the package is a plugin (`mufax.plugins`).
"""

import importlib
import pkgutil

import ml_collections

from mufax.unlearning.core import Context
from mufax.unlearning.core import Hparams
from mufax.unlearning.core import METHODS
from mufax.unlearning.core import Row
from mufax.unlearning.core import Unsupported
from mufax.unlearning.core import hparam
from mufax.unlearning.core import register

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f'{__name__}.{_module.name}')

# `config.methods=all`: the paper's table, in its order.
PAPER_TABLE = ('original', 'retrain', 'finetune', 'cf_k', 'neggrad', 'unsir',
               'scrub', 'advanced_neggrad')


def hparams_config() -> ml_collections.ConfigDict:
  """`config.unlearn`: a section per registered method that has
  hyperparameters, holding their defaults."""
  return ml_collections.ConfigDict({
      name: method.Hparams.config_fields()
      for name, method in METHODS.items()
      if method.Hparams.config_fields()})


__all__ = ['Context', 'Hparams', 'METHODS', 'PAPER_TABLE', 'Row', 'Unsupported', 'hparam',
           'hparams_config', 'register']
