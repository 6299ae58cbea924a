"""Base config of every run; variants import it and override fields."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.data = ml_collections.ConfigDict()
  # A name/config of mufax.data.prepare.dataset_names(), e.g. mufac/paper.
  config.data.dataset = 'synthetic_faces/small'
  # Empty means $TFDS_DATA_DIR, else ~/tensorflow_datasets.
  config.data.data_dir = ''
  # Folder with the source files of datasets that need them (MUFAC, MUCAC).
  config.data.manual_dir = ''
  config.seed = 42
  return config
