"""MUFAC: Machine Unlearning for Facial Age Classifier (Choi & Na, 2023).

Reads the release archive `custom_korean_family_dataset_resolution_128.zip`
(or the folder it unzips to) from the manual directory; no download. Labels are
the eight age classes a..h. The benchmark's splits (docs/protocol.md §2.1)
rename the release's CSVs: `custom_val_dataset.csv` is `test` (utility), and
`custom_test_dataset.csv` is `unseen` (the MIA's non-members).

Configs:
  paper: forget is exactly the first 1,500 rows of the train CSV, as in the
    reference code; this cuts one person between forget and retain.
  clean: forget is every person whose first train row is among those 1,500,
    with all of their images; and every image in a near-duplicate pair that
    crosses two of forget/retain/test/unseen (64-bit DCT perceptual hash,
    Hamming distance <= `near_duplicate_distance`) is dropped.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import zipfile

import tensorflow_datasets as tfds

from mufax import tasks
from mufax.data import face_builder
from mufax.data import images
from mufax.data import phash
from mufax.data.errors import DataError

ARCHIVE = 'custom_korean_family_dataset_resolution_128.zip'
ROOT = 'custom_korean_family_dataset_resolution_128'
COLUMNS = ('family_id', 'person_id', 'age_class', 'image_path')
AGE_CLASSES = 'abcdefgh'
AGE_NAMES = ('0-6', '7-12', '13-19', '20-30', '31-45', '46-55', '56-66',
             '67-80')
IMAGE_SIZE = 128
NUM_FORGET_ROWS = 1500
# Benchmark split -> (CSV, image folder) of the release.
SOURCES = {
    'train': ('custom_train_dataset.csv', 'train_images'),
    'test': ('custom_val_dataset.csv', 'val_images'),
    'unseen': ('custom_test_dataset.csv', 'test_images'),
}

_INSTRUCTIONS = f"""
Put the MUFAC release archive `{ARCHIVE}` (or the folder `{ROOT}/` it unzips
to) into the manual directory, e.g. `--manual_dir=DIR` with `DIR/{ARCHIVE}`.
It is published with the reference code at
https://github.com/ndb796/MachineUnlearning (see its README for the link).
"""


# What every config asks: the age group, trained and unlearnt as the paper's
# MUFAC notebook does (protocol §4, §5).
AGE = tasks.Task(name='age', family='mufac', loss_kind='softmax',
                 label_names=AGE_NAMES, benchmark='mufac')


@dataclasses.dataclass(eq=False)
class MufacConfig(face_builder.FaceConfig):
  task: tasks.Task = dataclasses.field(default=AGE, kw_only=True)
  num_forget_rows: int = NUM_FORGET_ROWS
  whole_identities: bool = False
  drop_near_duplicates: bool = False
  near_duplicate_distance: int = phash.DEFAULT_MAX_DISTANCE


class Release:
  """The release's files, inside the zip archive or an unzipped folder."""

  def __init__(self, manual_dir: os.PathLike | str):
    manual_dir = os.fspath(manual_dir)
    archive = os.path.join(manual_dir, ARCHIVE)
    self._zip = None
    if os.path.isfile(archive):
      try:
        self._zip = zipfile.ZipFile(archive)
      except zipfile.BadZipFile as e:
        raise DataError(
            f'{archive} is not a readable zip archive ({e}); download it '
            'again.' + _INSTRUCTIONS) from e
      self._names = set(self._zip.namelist())
      self._prefix = f'{ROOT}/' if f'{ROOT}/{SOURCES["train"][0]}' in self._names else ''
      self.location = archive
    else:
      nested = os.path.join(manual_dir, ROOT)
      self.location = nested if os.path.isdir(nested) else manual_dir
    if not self.exists(SOURCES['train'][0]):
      raise DataError(f'No MUFAC release found in {manual_dir}.' + _INSTRUCTIONS)

  def describe(self, relpath: str) -> str:
    if self._zip is not None:
      return f'{self.location}:{self._prefix}{relpath}'
    return os.path.join(self.location, relpath)

  def exists(self, relpath: str) -> bool:
    if self._zip is not None:
      return self._prefix + relpath in self._names
    return os.path.isfile(os.path.join(self.location, relpath))

  def read(self, relpath: str) -> bytes:
    if not self.exists(relpath):
      raise DataError(
          f'{self.describe(relpath)} is missing; the release is incomplete. '
          'Unpack or download the archive again.' + _INSTRUCTIONS)
    if self._zip is not None:
      return self._zip.read(self._prefix + relpath)
    with open(os.path.join(self.location, relpath), 'rb') as f:
      return f.read()


def read_list(release: Release, split: str) -> list[face_builder.FaceRecord]:
  """Parses and validates one CSV of the release; images are checked to exist."""
  csv_name, folder = SOURCES[split]
  where = release.describe(csv_name)
  rows = csv.DictReader(io.StringIO(release.read(csv_name).decode('utf-8-sig')))
  missing = [c for c in COLUMNS if c not in (rows.fieldnames or ())]
  if missing:
    raise DataError(
        f'{where} has columns {rows.fieldnames}; the columns {missing} are '
        f'missing (expected {", ".join(COLUMNS)}). Use the CSV of the original '
        'release, or rename the columns.')
  records = []
  for line, row in enumerate(rows, start=2):
    origin = f'{csv_name} line {line}'
    empty = [c for c in COLUMNS if not (row[c] or '').strip()]
    if empty:
      raise DataError(f'{where} line {line}: empty {empty}. Fill in or delete '
                      'the row.')
    if row['age_class'] not in AGE_CLASSES:
      raise DataError(
          f'{where} line {line}: unknown age_class {row["age_class"]!r}; '
          f'expected one of {", ".join(AGE_CLASSES)}. Correct or delete the row.')
    image_path = f'{folder}/{row["image_path"]}'
    if not release.exists(image_path):
      raise DataError(
          f'{where} line {line} lists image {row["image_path"]!r}, but '
          f'{release.describe(image_path)} does not exist. Restore the image '
          'from the original release, or delete the row.')
    records.append(face_builder.FaceRecord(
        file_name=image_path,
        identity=f'{row["family_id"]}/{row["person_id"]}',
        label=AGE_CLASSES.index(row['age_class']),
        origin=origin))
  if not records:
    raise DataError(f'{where} lists no images.')
  return records


def split_forget(train: list[face_builder.FaceRecord], *, num_rows: int,
                 whole_identities: bool) -> tuple[list, list]:
  """Forget = the first rows; under `whole_identities`, all of those people."""
  if len(train) <= num_rows:
    raise DataError(
        f'The train CSV has {len(train)} rows; the benchmark forgets its first '
        f'{num_rows}, so it needs more. Use the complete release.')
  if whole_identities:
    people = {r.identity for r in train[:num_rows]}
    in_forget = [r.identity in people for r in train]
  else:
    in_forget = [i < num_rows for i in range(len(train))]
  return ([r for r, f in zip(train, in_forget) if f],
          [r for r, f in zip(train, in_forget) if not f])


class Mufac(face_builder.FaceDatasetBuilder):
  """MUFAC age classification with identity-keyed unlearning splits."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  # The release's JPEG bytes are stored as they are, so pixels decode exactly
  # as in the reference's PIL loader.
  IMAGE_ENCODING = 'jpeg'
  BUILDER_CONFIGS = [
      MufacConfig(name='paper', description=(
          'Forget = first 1,500 train rows, as the reference code.')),
      MufacConfig(name='clean', whole_identities=True,
                  drop_near_duplicates=True, description=(
                      'Forget by whole identities; cross-split near-duplicate '
                      'images dropped.')),
  ]

  def _image_size(self):
    return IMAGE_SIZE

  def _forget_retain_disjoint(self):
    return self.builder_config.whole_identities

  def _read_index(self, dl_manager):
    self._release = Release(self._manual_dir(dl_manager))
    train, test, unseen = (read_list(self._release, s) for s in SOURCES)
    forget, retain = split_forget(
        train, num_rows=self.builder_config.num_forget_rows,
        whole_identities=self.builder_config.whole_identities)
    index = {'forget': forget, 'retain': retain, 'test': test,
             'unseen': unseen}
    if self.builder_config.drop_near_duplicates:
      index = self._drop_near_duplicates(index)
    kept = {r.file_name for r in index['forget'] + index['retain']}
    index['train'] = [r for r in train if r.file_name in kept]
    return index

  def _drop_near_duplicates(self, index):
    hashes = {split: phash.perceptual_hash(
        [self._decode(r) for r in records]) for split, records in index.items()}
    pairs = phash.near_duplicate_pairs(
        hashes, max_distance=self.builder_config.near_duplicate_distance)
    dropped = {(p.split_a, p.index_a) for p in pairs if p.split_a != p.split_b}
    dropped |= {(p.split_b, p.index_b) for p in pairs if p.split_a != p.split_b}
    return {split: [r for i, r in enumerate(records)
                    if (split, i) not in dropped]
            for split, records in index.items()}

  def _load(self, record):
    data = self._release.read(record.file_name)
    where = f'{self._release.describe(record.file_name)} ({record.origin})'
    image = images.decode_rgb(data, where=where)
    images.check_size(image, IMAGE_SIZE, where=where)
    return data, image

  def _decode(self, record):
    return images.to_array(self._load(record)[1])

  def _image(self, record):
    data, image = self._load(record)
    return data if image.format == 'JPEG' else image
