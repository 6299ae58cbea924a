"""The base of every face dataset builder: one schema, one set of split rules.

A concrete builder lists its examples per split (`_read_index`) and turns one
listed example into an image (`_image`); each of its configs declares its
task, from which the `label` feature follows. This base writes the five splits
with the common features, in listed order, after proving the splits are
disjoint by identity. Validation happens before anything is written, and TFDS
writes into an `incomplete.*` folder that it deletes on failure, so a failed
build leaves nothing that looks complete.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from mufax import tasks
from mufax.data import splits as splits_lib
from mufax.data.errors import DataError

Label = int | tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class FaceRecord:
  """One listed example, before its image is read."""
  file_name: str
  identity: str
  label: Label
  origin: str  # Where it was listed, e.g. `custom_train_dataset.csv line 7`.


def face_features(label: tfds.features.FeatureConnector, image_size: int,
                  encoding_format: str = 'png') -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(image_size, image_size, 3),
                                   encoding_format=encoding_format),
      'label': label,
      'identity': tfds.features.Text(),
      'file_name': tfds.features.Text(),
  })


@dataclasses.dataclass(eq=False)
class FaceConfig(tfds.core.BuilderConfig):
  """A config of a face dataset: `name/config` is a dataset of the benchmark,
  and `task` is what it asks the model to predict."""
  task: tasks.Task = dataclasses.field(kw_only=True)


class FaceDatasetBuilder(tfds.core.GeneratorBasedBuilder, abc.ABC):
  """Writes `train`, `retain`, `forget`, `test`, `unseen` with common features.

  Every config in BUILDER_CONFIGS is a FaceConfig.
  """

  IMAGE_ENCODING = 'png'

  def _label_feature(self) -> tfds.features.FeatureConnector:
    """The `label` feature of the config's task."""
    task = self.builder_config.task
    if task.loss_kind == 'sigmoid':
      return tfds.features.Tensor(shape=(task.num_outputs,), dtype=np.int64)
    return tfds.features.ClassLabel(names=task.label_names)

  @abc.abstractmethod
  def _image_size(self) -> int:
    """Height and width of the stored images."""

  @abc.abstractmethod
  def _forget_retain_disjoint(self) -> bool:
    """Whether forget and retain must not share a person under this config."""

  @abc.abstractmethod
  def _read_index(
      self, dl_manager: tfds.download.DownloadManager
  ) -> Mapping[str, Sequence[FaceRecord]]:
    """Every split's examples, in order, fully validated except the images."""

  @abc.abstractmethod
  def _image(self, record: FaceRecord) -> Any:
    """What the `image` feature stores for `record`: encoded bytes or PIL."""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=face_features(self._label_feature(), self._image_size(),
                               self.IMAGE_ENCODING),
        supervised_keys=('image', 'label'),
        # Evaluation order, and the seeded MIA subsample that depends on it,
        # follow the source lists.
        disable_shuffling=True,
    )

  def _manual_dir(self, dl_manager: tfds.download.DownloadManager) -> str:
    """The manual directory, or DataError saying what to put there."""
    try:
      return os.fspath(dl_manager.manual_dir)
    except AssertionError as e:  # TFDS asserts on a missing or empty folder.
      raise DataError(f'{e}'.split('Create it')[0].strip() + '\n'
                      + self.MANUAL_DOWNLOAD_INSTRUCTIONS) from e

  def _split_generators(self, dl_manager):
    index = self._read_index(dl_manager)
    check_index(index, forget_retain_disjoint=self._forget_retain_disjoint())
    return {split: self._generate_examples(index[split])
            for split in splits_lib.SPLITS}

  def _generate_examples(self, records: Sequence[FaceRecord]):
    for i, record in enumerate(records):
      yield i, {
          'image': self._image(record),
          'label': record.label,
          'identity': record.identity,
          'file_name': record.file_name,
      }


def check_index(index: Mapping[str, Sequence[FaceRecord]], *,
                forget_retain_disjoint: bool) -> None:
  """Raises DataError unless the splits obey the benchmark's rules."""
  missing = [s for s in splits_lib.SPLITS if s not in index]
  if missing:
    raise DataError(f'Builder produced no split(s) {missing}.')
  if (collections.Counter(r.file_name for r in index['train']) !=
      collections.Counter(r.file_name for r in index['forget']) +
      collections.Counter(r.file_name for r in index['retain'])):
    raise DataError('Split train must be exactly forget + retain.')
  pairs = list(splits_lib.ALWAYS_DISJOINT)
  if forget_retain_disjoint:
    pairs.append(splits_lib.FORGET_RETAIN)
  splits_lib.check_disjoint(
      {s: [r.identity for r in records] for s, records in index.items()},
      {s: [r.origin for r in records] for s, records in index.items()},
      pairs)
