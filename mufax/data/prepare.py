r"""Builds a benchmark dataset if needed and reports its splits.

  python -m mufax.data.prepare --dataset=mufac/paper \
      --manual_dir=../shared/data/mufac --data_dir=runs/tfds

The last line of standard output is one JSON object: per split the number of
images, of identities and the class counts, and the number of identities
shared by each split pair.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow_datasets as tfds

from mufax import datasets
from mufax import input_pipeline
from mufax.data import splits as splits_lib
from mufax.data.errors import DataError
from mufax.data.face_builder import FaceDatasetBuilder

DEFAULT_DATA_DIR = os.environ.get(
    'TFDS_DATA_DIR', os.path.join(os.path.expanduser('~'), 'tensorflow_datasets'))


def get_builder(dataset: str, *, data_dir: str) -> FaceDatasetBuilder:
  """The TFDS builder of `dataset` (`name` or `name/config`), array_record.

  Raises:
    DataError: `dataset` is unknown (`datasets.config_of`).
  """
  datasets.config_of(dataset)  # One line, where TFDS would raise many.
  return tfds.builder(dataset, data_dir=data_dir, file_format='array_record')


def prepare(dataset: str, *, data_dir: str,
            manual_dir: str | None = None) -> FaceDatasetBuilder:
  """Returns the builder of `dataset`, building it first if it is not built."""
  builder = get_builder(dataset, data_dir=data_dir)
  ensure_built(builder, manual_dir=manual_dir)
  return builder


def ensure_built(builder: FaceDatasetBuilder, *,
                 manual_dir: str | None = None) -> None:
  """Builds `builder`'s dataset unless it is already built."""
  if builder.is_prepared():
    return
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS and not manual_dir:
    raise DataError(
        f'Building {builder.info.full_name.rsplit("/", 1)[0]} needs its source '
        'files: pass their folder as --manual_dir (to run_main.py: '
        '--config.data.manual_dir).'
        + builder.MANUAL_DOWNLOAD_INSTRUCTIONS)
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS and not os.path.isdir(manual_dir):
    raise DataError(f'The manual directory {manual_dir} does not exist.'
                    + builder.MANUAL_DOWNLOAD_INSTRUCTIONS)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))


def describe(builder: FaceDatasetBuilder) -> dict:
  """Images, identities and class counts per split, and identity overlaps."""
  label = builder.info.features['label']
  multilabel = not isinstance(label, tfds.features.ClassLabel)
  stats, identities = {}, {}
  for split in splits_lib.SPLITS:
    meta = input_pipeline.read_split(
        builder.as_data_source(
            split, decoders={'image': tfds.decode.SkipDecoding()}),
        images=False)
    identities[split] = meta['identity']
    if multilabel:  # Positives per attribute.
      counts = meta['label'].reshape(-1, label.shape[0]).sum(axis=0)
    else:
      counts = np.bincount(meta['label'], minlength=label.num_classes)
    stats[split] = {'images': int(len(meta['identity'])),
                    'identities': int(len(set(meta['identity']))),
                    'class_counts': [int(c) for c in counts]}
  return {
      'dataset': builder.info.full_name.rsplit('/', 1)[0],
      'label_names': list(builder.builder_config.task.label_names),
      'splits': stats,
      'identity_overlap': splits_lib.identity_overlap(identities),
  }


def format_splits(summary: dict) -> str:
  """The per-split lines of `describe`'s summary, for people."""
  return '\n'.join(
      f'{split:>7}: {s["images"]:6d} images {s["identities"]:5d} identities  '
      f'class counts {s["class_counts"]}'
      for split, s in summary['splits'].items())


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags: --dataset, --data_dir and --manual_dir.

  Called only when a command runs (this one, or the audit that shares them),
  never on import: a program importing this module, such as run_main.py, must
  not accept flags that it would then ignore.
  """
  flags.DEFINE_string('dataset', 'synthetic_faces',
                      'Dataset as name/config, e.g. mufac/paper, mucac/gender.')
  flags.DEFINE_string('data_dir', DEFAULT_DATA_DIR,
                      'Where prepared datasets live ($TFDS_DATA_DIR).')
  flags.DEFINE_string(
      'manual_dir', None,
      'Folder holding the source files (MUFAC archive, CelebA-HQ).')


def main(argv):
  del argv
  start = time.perf_counter()
  try:
    builder = get_builder(FLAGS.dataset, data_dir=FLAGS.data_dir)
    built_now = not builder.is_prepared()
    ensure_built(builder, manual_dir=FLAGS.manual_dir)
    build_seconds = time.perf_counter() - start
    summary = describe(builder)
  except DataError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  summary['data_dir'] = builder.data_dir
  # Null when the dataset was already built.
  summary['build_seconds'] = round(build_seconds, 2) if built_now else None
  print(format_splits(summary))
  print(json.dumps(summary))


if __name__ == '__main__':
  define_flags()
  app.run(main)
