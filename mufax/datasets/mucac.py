"""MUCAC: Machine Unlearning for Celebrity Attribute Classifier (Choi & Na, 2023).

Built from CelebA-HQ in the manual directory: the images `CelebA-HQ-img/N.jpg`
(1024x1024, resized here to 128x128 as torchvision's `Resize(128)` does) and the
two text files `CelebA-HQ-identity.txt` and `CelebA-HQ-attribute.txt`. Splits
follow the identity number (docs/protocol.md §2.2): test < 190 <= forget < 1250
<= retain < 4855 <= unseen. Configs: `multilabel` (label = one 0/1 value per
attribute of ATTRIBUTES) and one binary task per attribute, named after it.

`read_metadata` and `split_by_identity` are pure functions of the two text
files, so splits and labels can be checked without the images.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow_datasets as tfds

from mufax import tasks
from mufax.data import face_builder
from mufax.data import images
from mufax.data.errors import DataError

IDENTITY_FILE = 'CelebA-HQ-identity.txt'
ATTRIBUTE_FILE = 'CelebA-HQ-attribute.txt'
IMAGE_DIR = 'CelebA-HQ-img'
# The folder the reference notebooks read the three from, if present.
RELEASE_DIR = 'CelebAMask-HQ'
IMAGE_SIZE = 128
NUM_ATTRIBUTES = 40


@dataclasses.dataclass(frozen=True)
class Attribute:
  """A CelebA attribute that MUCAC predicts."""
  celeba_name: str
  # Its index among the attribute file's names; the reference reads token
  # position + 1 of a row, whose token 0 is the file name.
  position: int
  # The classes of its binary task, label 0 then 1.
  class_names: tuple[str, str]


# Task name -> attribute, in the order of the multi-label task's outputs.
ATTRIBUTES = {
    'gender': Attribute('Male', 20, ('female', 'male')),
    'smiling': Attribute('Smiling', 31, ('not_smiling', 'smiling')),
    'young': Attribute('Young', 39, ('not_young', 'young')),
}
# Lowest identity number of each split after `test` (docs/protocol.md §2.2).
SPLIT_STARTS = (('forget', 190), ('retain', 1250), ('unseen', 4855))

_INSTRUCTIONS = f"""
Put CelebA-HQ into the manual directory, or into its subfolder `{RELEASE_DIR}/`
as the reference notebooks do: the folder `{IMAGE_DIR}/` with the 30,000
images `0.jpg` .. `29999.jpg` (from the CelebAMask-HQ release,
https://github.com/switchablenorms/CelebAMask-HQ), and the files
`{IDENTITY_FILE}` and `{ATTRIBUTE_FILE}` that the MUCAC benchmark
(https://github.com/ndb796/MachineUnlearning) reads.
"""


@dataclasses.dataclass(frozen=True)
class MucacRow:
  file_name: str
  identity: int
  attributes: tuple[int, ...]  # 0/1 per attribute of ATTRIBUTES, in order.
  origin: str


def read_metadata(identity_text: str, attribute_text: str, *,
                  identity_origin: str = IDENTITY_FILE,
                  attribute_origin: str = ATTRIBUTE_FILE) -> list[MucacRow]:
  """Joins the identity and attribute files; rows in identity-file order."""
  identities = _read_identities(identity_text, identity_origin)
  attributes = _read_attributes(attribute_text, attribute_origin)
  rows = []
  for file_name, (identity, line_no) in identities.items():
    if file_name not in attributes:
      raise DataError(
          f'{identity_origin} line {line_no} lists {file_name}, which has no '
          f'row in {attribute_origin}. Use matching releases of both files.')
    rows.append(MucacRow(file_name, identity, attributes[file_name][0],
                         f'{identity_origin} line {line_no}'))
  extra = sorted(set(attributes) - set(identities))
  if extra:
    raise DataError(
        f'{attribute_origin} line {attributes[extra[0]][1]} lists {extra[0]} '
        f'(and {len(extra) - 1} more), which {identity_origin} does not list. '
        'Use matching releases of both files.')
  return rows


def _read_identities(text: str, origin: str) -> dict[str, tuple[int, int]]:
  """File name -> (identity, line number) of CelebA's identity file."""
  identities = {}
  for line_no, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue
    tokens = line.split()
    if len(tokens) != 2 or not tokens[1].isdigit():
      raise DataError(
          f'{origin} line {line_no}: expected "FILE IDENTITY" (e.g. '
          f'"0.jpg 0"), got {line.strip()!r}. Correct or delete the line.')
    if tokens[0] in identities:
      raise DataError(f'{origin} line {line_no}: {tokens[0]} is listed '
                      'twice. Delete one of the lines.')
    identities[tokens[0]] = (int(tokens[1]), line_no)
  return identities


def _read_attributes(text: str, origin: str
                     ) -> dict[str, tuple[tuple[int, ...], int]]:
  """File name -> (0/1 value of each of ATTRIBUTES, line number) of
  CelebA-HQ's attribute file, its count and names lines checked."""
  lines = text.splitlines()
  if len(lines) < 2:
    raise DataError(f'{origin} is too short: it needs a count line, '
                    'a line of attribute names and one row per image.')
  names = lines[1].split()
  for attribute in ATTRIBUTES.values():
    if (len(names) != NUM_ATTRIBUTES
        or names[attribute.position] != attribute.celeba_name):
      raise DataError(
          f'{origin} line 2: expected {NUM_ATTRIBUTES} attribute '
          f'names with {attribute.celeba_name!r} as name '
          f'{attribute.position + 1}, got {len(names)} names. Use the '
          'CelebA-HQ attribute file as released.')
  attributes = {}
  for line_no, line in enumerate(lines[2:], start=3):
    tokens = line.split()
    if not tokens:
      continue
    if len(tokens) != NUM_ATTRIBUTES + 1:
      raise DataError(
          f'{origin} line {line_no}: expected a file name and '
          f'{NUM_ATTRIBUTES} values, got {len(tokens)} tokens. Correct or '
          'delete the line.')
    values = []
    for attribute in ATTRIBUTES.values():
      value = tokens[attribute.position + 1]
      if value not in ('1', '-1'):
        raise DataError(
            f'{origin} line {line_no}: {attribute.celeba_name} is '
            f'{value!r}; attribute values must be 1 or -1. Correct the value.')
      values.append(int(value == '1'))
    attributes[tokens[0]] = (tuple(values), line_no)
  declared = lines[0].strip()
  if declared.isdigit() and int(declared) != len(attributes):
    raise DataError(f'{origin} line 1 declares {declared} rows but '
                    f'the file has {len(attributes)}. Use the complete file.')
  return attributes


def split_of(identity: int) -> str:
  split = 'test'
  for name, start in SPLIT_STARTS:
    if identity >= start:
      split = name
  return split


def split_by_identity(rows: list[MucacRow]) -> dict[str, list[MucacRow]]:
  """test / forget / retain / unseen by identity number, plus train."""
  index = {'test': [], 'forget': [], 'retain': [], 'unseen': []}
  for row in rows:
    index[split_of(row.identity)].append(row)
  index['train'] = [r for r in rows if split_of(r.identity) in ('forget',
                                                                 'retain')]
  return index


class Mucac(face_builder.FaceDatasetBuilder):
  """MUCAC celebrity attribute classification with identity-keyed splits."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  BUILDER_CONFIGS = [
      face_builder.FaceConfig(
          name='multilabel', description=(
              'Three binary labels: gender (male), smiling, young.'),
          task=tasks.Task(name='multilabel', family='multilabel',
                          loss_kind='sigmoid', label_names=tuple(ATTRIBUTES),
                          benchmark='mucac'))
  ] + [face_builder.FaceConfig(
      name=name, description=(
          f'Binary {name} ({attribute.celeba_name}) classification.'),
      task=tasks.Task(name=name, family='binary', loss_kind='softmax',
                      label_names=attribute.class_names, benchmark='mucac'))
       for name, attribute in ATTRIBUTES.items()]

  def _image_size(self):
    return IMAGE_SIZE

  def _forget_retain_disjoint(self):
    return True

  def _read_index(self, dl_manager):
    manual_dir = self._manual_dir(dl_manager)
    if os.path.isdir(os.path.join(manual_dir, RELEASE_DIR)):
      manual_dir = os.path.join(manual_dir, RELEASE_DIR)
    texts = {}
    for name in (IDENTITY_FILE, ATTRIBUTE_FILE):
      path = os.path.join(manual_dir, name)
      if not os.path.isfile(path):
        raise DataError(f'{path} is missing.' + _INSTRUCTIONS)
      with open(path, encoding='utf-8') as f:
        texts[name] = f.read()
    rows = read_metadata(
        texts[IDENTITY_FILE], texts[ATTRIBUTE_FILE],
        identity_origin=os.path.join(manual_dir, IDENTITY_FILE),
        attribute_origin=os.path.join(manual_dir, ATTRIBUTE_FILE))
    self._image_dir = os.path.join(manual_dir, IMAGE_DIR)
    absent = [r for r in rows
              if not os.path.isfile(os.path.join(self._image_dir, r.file_name))]
    if absent:
      raise DataError(
          f'{os.path.join(self._image_dir, absent[0].file_name)}, listed in '
          f'{absent[0].origin}, is missing ({len(absent)} of {len(rows)} '
          'listed images are).' + _INSTRUCTIONS)
    task = self.builder_config.task
    label_of = ((lambda a: a) if task.loss_kind == 'sigmoid' else
                (lambda a: a[list(ATTRIBUTES).index(task.name)]))
    return {split: [face_builder.FaceRecord(
        file_name=f'{IMAGE_DIR}/{r.file_name}', identity=str(r.identity),
        label=label_of(r.attributes), origin=r.origin) for r in split_rows]
            for split, split_rows in split_by_identity(rows).items()}

  def _image(self, record):
    path = os.path.join(os.path.dirname(self._image_dir), record.file_name)
    where = f'{path} ({record.origin})'
    with open(path, 'rb') as f:
      image = images.decode_rgb(f.read(), where=where)
    return images.resize_square(image, IMAGE_SIZE, where=where)
