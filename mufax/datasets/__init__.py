"""The benchmark's datasets, one module each, and the lookup of their tasks.

A dataset is a `FaceDatasetBuilder` whose configs each declare their task
(`face_builder.FaceConfig`); `name/config` names one, as TFDS does. Importing
this package imports every module in it, which registers each builder with
TFDS, so that `tfds.builder` and `tfds.data_source` find them by name: a new
dataset is a new module here, and nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil

from mufax import tasks
from mufax.data import face_builder
from mufax.data.errors import DataError

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f'{__name__}.{_module.name}')


def builders() -> dict[str, type[face_builder.FaceDatasetBuilder]]:
  """Every face dataset builder defined so far, by TFDS name."""
  found, pending = {}, [face_builder.FaceDatasetBuilder]
  while pending:
    for cls in pending.pop().__subclasses__():
      found[cls.name] = cls
      pending.append(cls)
  return found


def dataset_names() -> list[str]:
  """Every `name/config` the builders provide."""
  return sorted(f'{name}/{config.name}'
                for name, cls in builders().items()
                for config in cls.BUILDER_CONFIGS)


def config_of(dataset: str) -> face_builder.FaceConfig:
  """The config `dataset` names: `name/config`, or a bare `name` for the
  builder's default config, as `tfds.builder` reads it (`mucac` is
  `mucac/multilabel`).

  Raises:
    DataError: no builder provides `dataset`.
  """
  name, _, config = dataset.partition('/')
  cls = builders().get(name)
  configs = {c.name: c for c in cls.BUILDER_CONFIGS} if cls else {}
  if cls and not config and cls.default_builder_config:
    config = cls.default_builder_config.name
  if config not in configs:
    raise DataError(f'Unknown dataset {dataset!r}; choose one of '
                    f'{", ".join(dataset_names())}.')
  return configs[config]


def task_of(dataset: str) -> tasks.Task:
  """The task `dataset` declares (`config_of`)."""
  return config_of(dataset).task
