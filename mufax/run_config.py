"""A run's config, read and checked before anything trains: the methods it
names, the model it builds and the seeds of each population; `ConfigError`
for a value that cannot work.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from mufax import deletion_requests
from mufax import executors
from mufax import metrics
from mufax import models
from mufax import plugins
from mufax import sweep
from mufax import unlearning

MODELS = {'resnet18': models.ResNet18, 'resnet_tiny': models.ResNetTiny}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# Populations with seeds of their own, as multiples of N past config.seed;
# the originals and every method's own randomness use stream 0.
SEED_STREAMS = {'retrain': 1, 'oracle': 2}


class ConfigError(ValueError):
  """A config value that cannot work; the message says which and why."""


def make_model(config: ml_collections.ConfigDict, num_outputs: int):
  if config.model.name not in MODELS:
    raise ConfigError(f'config.model.name={config.model.name!r}: choose one '
                      f'of {sorted(MODELS)}.')
  if config.model.dtype not in DTYPES:
    raise ConfigError(f'config.model.dtype={config.model.dtype!r}: choose one '
                      f'of {sorted(DTYPES)}.')
  kwargs = {'num_outputs': num_outputs, 'dtype': DTYPES[config.model.dtype]}
  if config.model.num_filters:
    kwargs['num_filters'] = config.model.num_filters
  return MODELS[config.model.name](**kwargs)


def seeds_of(config, kind: str = 'method') -> tuple[int, ...]:
  """The population's seeds: config.seed + 0..N-1 for the originals and the
  methods (the original's alone, config.seed, when every member unlearns
  from one shared original); N..2N-1 for retraining and 2N..3N-1 for the
  oracle.

  Retrained model k never shares an initialisation, data order or
  augmentation draw with original k: a seed-paired retrained population
  would look like its unlearned twins and flatter F and the attack
  (docs/evaluation.md §1).
  """
  if kind == 'original' and config.population.shared_original:
    return (config.seed,)
  n = config.population.size
  first = config.seed + n * SEED_STREAMS.get(kind, 0)
  return tuple(first + k for k in range(n))


def method_names(config) -> list[str]:
  """`config.methods` as a list: `all` is the paper's table, `extended`
  that and every other registered method."""
  paper = unlearning.PAPER_TABLE
  if config.population.size > 1:
    # With seeds, the oracle that F is read against.
    paper = paper[:2] + ('oracle',) + paper[2:]
  groups = {'all': paper,
            'extended': paper + tuple(n for n in unlearning.METHODS
                                      if n not in paper + ('oracle',))}
  names = []
  for name in (m.strip() for m in config.methods.split(',')):
    for n in groups.get(name, (name,) if name else ()):
      if n not in names:
        names.append(n)
  known = list(dict.fromkeys(groups['extended'] + ('oracle',)))
  unknown = [n for n in names if n not in known]
  if unknown or not names:
    raise ConfigError(
        f'config.methods={config.methods!r}: unknown method(s) {unknown}; '
        f'choose from {", ".join(known)}, all or extended'
        + ('' if config.plugins else
           ' (a method of your own: config.plugins)') + '.')
  return names


def check_config(config) -> list[str]:
  """Loads the plugins, refuses values that cannot work, and returns the
  methods to run."""
  try:
    plugins.load(config.plugins)
  except plugins.PluginError as e:
    raise ConfigError(str(e)) from e
  try:
    metrics.nomus_lambda(config.lam)
  except ValueError as e:
    raise ConfigError(f'config.lam={config.lam}: the NoMUS weight λ must lie '
                      'in [0, 1].') from e
  if config.protocol not in ('paper', 'clean'):
    raise ConfigError(f'config.protocol={config.protocol!r}: choose paper or '
                      'clean.')
  if not config.population.size >= 1:
    raise ConfigError(f'config.population.size={config.population.size} '
                      'must be at least 1.')
  if (config.original.checkpoint and config.population.size > 1
      and not config.population.shared_original):
    raise ConfigError(
        f'config.original.checkpoint={config.original.checkpoint} is one '
        'model: with config.population.size > 1 set '
        'config.population.shared_original=true.')
  if config.engine.executor not in executors.EXECUTORS:
    raise ConfigError(f'config.engine.executor={config.engine.executor!r}: '
                      f'choose one of {", ".join(executors.EXECUTORS)}.')
  if not config.population.members_per_call >= 0:
    raise ConfigError('config.population.members_per_call='
                      f'{config.population.members_per_call} must be at least '
                      '0 (0: the device\'s default).')
  try:
    unlearning.check_config(config.unlearn.to_dict())
    if config.sweep.methods:
      sweep.check_config(config)
    if config.requests.count:
      deletion_requests.check_config(config)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  return method_names(config)
