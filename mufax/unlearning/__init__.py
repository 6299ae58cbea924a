"""Unlearning methods (docs/protocol.md §5), one module each, registered by
name.

`METHODS[name].run(context, original_variables)` yields the method's rows
(`core.Row`); `unsir` yields two, one per stage. Every module of this
package is imported here, so a new method is one new file that registers
itself; one outside the package is a plugin (`mufax.plugins`). This package
exports everything a method needs (its base classes, objectives, optimizers,
plans and search ranges), so a plugin imports from here alone.
"""

import dataclasses
import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

# What a method needs, in one place: a plugin imports from here.
from mufax.objectives import Forward
from mufax.objectives import Inputs
from mufax.objectives import Objective
from mufax.objectives import TASK_OBJECTIVE
from mufax.optimizers import ADAM
from mufax.optimizers import SGD
from mufax.optimizers import adam
from mufax.optimizers import sgd
from mufax.plans import full_batches
from mufax.plans import passes
from mufax.plans import retain_driven
from mufax.plans import step_plan
from mufax.plans import zipped
from mufax.search_spaces import Choice
from mufax.search_spaces import IntRange
from mufax.search_spaces import LogUniform
from mufax.search_spaces import Uniform
from mufax.unlearning.core import Context
from mufax.unlearning.core import METHODS
from mufax.unlearning.core import Method
from mufax.unlearning.core import Row
from mufax.unlearning.core import SGDMethod
from mufax.unlearning.core import Stage
from mufax.unlearning.core import Unsupported
from mufax.unlearning.core import register
from mufax.unlearning.finetune import FineTuneHparams
from mufax.unlearning.hparams import REFERENCE_SOURCE
from mufax.unlearning.hparams import Hparams
from mufax.unlearning.hparams import SGDHparams
from mufax.unlearning.hparams import hparam
from mufax.unlearning.hparams import member_fields
from mufax.unlearning.hparams import search_spaces_of
from mufax.unlearning.finetune import RETAIN_LOSS

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f'{__name__}.{_module.name}')

# `config.methods=all`: the paper's table, in its order.
PAPER_TABLE = ('original', 'retrain', 'finetune', 'cf_k', 'neggrad', 'unsir',
               'scrub', 'advanced_neggrad')


def check_config(unlearn: Mapping[str, Any]) -> None:
  """Refuses a `config.unlearn` (as a dict) whose sections name no
  registered method, or name a field the method does not declare or give it
  a value it cannot take.

  Raises:
    ValueError: one line naming the field, what it may be and what to do.
  """
  for name, section in unlearn.items():
    if name not in METHODS:
      raise ValueError(
          f'config.unlearn.{name}: no method {name!r} is registered; the '
          'methods with hyperparameters are '
          f'{", ".join(n for n, m in METHODS.items() if _declares(m))} '
          '(a method of your own: name its file in config.plugins).')
    if not isinstance(section, Mapping):
      raise ValueError(f'config.unlearn.{name}={section!r}: give each '
                       f'hyperparameter as config.unlearn.{name}.<name>.')
    try:
      METHODS[name].Hparams.from_config(section)
    except ValueError as e:
      raise ValueError(f'config.unlearn.{name}.{e}') from e


def _declares(method: Method) -> bool:
  return bool(dataclasses.fields(method.Hparams))


def hparams_config(unlearn: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """Every registered method's hyperparameters, `unlearn`'s (a
  `config.unlearn` as a dict) in place of the defaults: what decides the
  methods' results, whichever of them a config names (None: the task's
  reference)."""
  return {name: dataclasses.asdict(method.Hparams.from_overrides(
      unlearn.get(name, {}))) for name, method in METHODS.items()
          if _declares(method)}


__all__ = ['ADAM', 'Choice', 'Context', 'FineTuneHparams', 'Forward',
           'Hparams', 'Inputs', 'IntRange', 'LogUniform', 'METHODS', 'Method',
           'Objective', 'PAPER_TABLE', 'REFERENCE_SOURCE', 'RETAIN_LOSS',
           'Row', 'SGD', 'SGDHparams', 'SGDMethod', 'Stage', 'TASK_OBJECTIVE',
           'Uniform', 'Unsupported', 'adam', 'check_config', 'full_batches',
           'hparam', 'hparams_config', 'member_fields', 'passes',
           'register', 'retain_driven', 'search_spaces_of', 'sgd', 'step_plan',
           'zipped']
