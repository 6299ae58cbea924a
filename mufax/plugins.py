"""Methods and evaluators from outside mufax: `config.plugins`.

A plugin is a Python file, or an importable module, that registers what it
defines with the same decorators as mufax's own (`mufax.unlearning.register`,
`mufax.evaluators.register`); README "Your own method" shows one.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys


class PluginError(ValueError):
  """A plugin that cannot be loaded; the message names it."""


def names(spec: str) -> list[str]:
  """`config.plugins` (comma-separated) as a list."""
  return [p.strip() for p in spec.split(',') if p.strip()]


def load(spec: str) -> None:
  """Imports every plugin of `spec` (paths or module names), once each."""
  for plugin in names(spec):
    _load_one(plugin)


def _load_one(plugin: str) -> None:
  if plugin.endswith('.py') or os.sep in plugin:
    path = os.path.abspath(plugin)
    if not os.path.isfile(path):
      raise PluginError(f'config.plugins: no file {plugin!r}; give the path '
                        'of a .py file or an importable module name.')
    # One module per file, so a second load (of a second run in the same
    # process) registers nothing twice.
    module_name = 'mufax_plugin_' + ''.join(
        c if c.isalnum() else '_' for c in path)
    if module_name in sys.modules:
      return
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
      spec.loader.exec_module(module)
    except Exception as e:
      del sys.modules[module_name]
      raise PluginError(f'config.plugins: {plugin} failed to load: '
                        f'{type(e).__name__}: {e}') from e
    return
  try:
    importlib.import_module(plugin)
  except ImportError as e:
    raise PluginError(f'config.plugins: cannot import {plugin!r} ({e}); give '
                      'the path of a .py file or an importable module '
                      'name.') from e

