"""TFDS builders of the benchmark's datasets.

Importing this package registers every builder with TFDS, so that `tfds.builder`
and `tfds.data_source` find them by name (`mufac/paper`, `mucac/gender`, ...).
"""

from datasets_builders.mucac import mucac_dataset_builder
from datasets_builders.mufac import mufac_dataset_builder
from datasets_builders.synthetic_faces import synthetic_faces_dataset_builder

BUILDERS = (
    mufac_dataset_builder.Mufac,
    mucac_dataset_builder.Mucac,
    synthetic_faces_dataset_builder.SyntheticFaces,
)
