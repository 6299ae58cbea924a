"""Shared helpers of the data tests: fixture paths and the reference data."""

import os
import shutil
import unittest

import tensorflow_datasets as tfds

from mufax import input_pipeline

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')
# `.ci/run` points this at ../shared/data; tests that need it skip where it is
# not set, and fail where it is set but wrong (CI asked for them).
SHARED_DATA_ENV = 'MUFAX_SHARED_DATA'


def shared_data(subdir: str) -> str:
  root = os.environ.get(SHARED_DATA_ENV)
  if not root:
    raise unittest.SkipTest(
        f'Set {SHARED_DATA_ENV} to the reference data folder (../shared/data) '
        'to run the tests on real data.')
  path = os.path.join(root, subdir)
  if not os.path.isdir(path):
    raise AssertionError(f'{path} (from ${SHARED_DATA_ENV}) does not exist: '
                         f'point {SHARED_DATA_ENV} at the reference data '
                         'folder, or unset it to skip the real-data tests.')
  return path


def copy_fixture(name: str, destination: str) -> str:
  """A writable copy of fixture `name`, to corrupt in a test."""
  target = os.path.join(destination, name)
  shutil.copytree(os.path.join(FIXTURES, name), target)
  return target


def build(builder, manual_dir):
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def read_split(builder, split, *keys):
  """Values of `keys` of every example of `split`, in stored order."""
  data = input_pipeline.read_split(builder.as_data_source(split))
  return list(zip(*(data[k].tolist() for k in keys)))
