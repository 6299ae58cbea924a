"""MUCAC builder: metadata logic on real and fixture files, images, bad input."""

import os

from absl.testing import absltest
import numpy as np

import data_testing
from mufax.data import prepare
from mufax.data import splits as splits_lib
from mufax.data.errors import DataError
from mufax.datasets import mucac


def read_texts(folder):
  texts = []
  for name in (mucac.IDENTITY_FILE, mucac.ATTRIBUTE_FILE):
    with open(os.path.join(folder, name)) as f:
      texts.append(f.read())
  return texts


class MucacRealMetadataTest(absltest.TestCase):

  def test_split_counts_and_labels(self):
    identity_text, attribute_text = read_texts(data_testing.shared_data('mucac'))
    index = mucac.split_by_identity(
        mucac.read_metadata(identity_text, attribute_text))
    self.assertEqual({s: len(r) for s, r in index.items()},
                     {'test': 2065, 'forget': 10183, 'retain': 15750,
                      'unseen': 2002, 'train': 25933})
    # Labels as counted straight from the attribute file: tokens 21/32/40.
    rows = [line.split() for line in attribute_text.splitlines()[2:]]
    expected = {r[0]: tuple(int(r[t] == '1') for t in (21, 32, 40))
                for r in rows}
    for split, records in index.items():
      self.assertEqual({r.file_name: r.attributes for r in records},
                       {r.file_name: expected[r.file_name] for r in records})
    totals = np.sum([r.attributes for r in index['train']], axis=0)
    self.assertEqual(totals.tolist(), [9642, 12108, 20139])
    ids = {s: {r.identity for r in records} for s, records in index.items()}
    for a, b in splits_lib.ALWAYS_DISJOINT + (splits_lib.FORGET_RETAIN,):
      self.assertEmpty(ids[a] & ids[b], f'{a}/{b}')


class MucacFixtureTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = self.create_tempdir().full_path
    self.manual = data_testing.copy_fixture('mucac', self.tmp)

  def builder(self, config):
    return mucac.Mucac(config=config, data_dir=os.path.join(self.tmp, 'tfds'),
                       file_format='array_record')

  def edit(self, name, edit):
    path = os.path.join(self.manual, name)
    with open(path) as f:
      lines = f.read().splitlines()
    with open(path, 'w') as f:
      f.write('\n'.join(edit(lines)) + '\n')

  def assert_fails(self, *fragments):
    with self.assertRaises(DataError) as caught:
      data_testing.build(self.builder('multilabel'), self.manual)
    for fragment in fragments:
      self.assertIn(fragment, str(caught.exception))
    self.assertFalse(self.builder('multilabel').is_prepared())

  def test_multilabel_splits_by_identity_thresholds(self):
    builder = data_testing.build(self.builder('multilabel'), self.manual)
    ids = {s: sorted({int(i) for i, in data_testing.read_split(builder, s, 'identity')})
           for s in splits_lib.SPLITS}
    self.assertEqual(ids['test'], [0, 189])
    self.assertEqual(ids['forget'], [190, 1249])
    self.assertEqual(ids['retain'], [1250, 3000, 4854])
    self.assertEqual(ids['unseen'], [4855, 6216])
    record = builder.as_data_source('forget')[0]
    self.assertEqual(record['image'].shape, (128, 128, 3))
    self.assertEqual(record['file_name'], b'CelebA-HQ-img/2.jpg')
    _, attribute_text = read_texts(self.manual)
    tokens = attribute_text.splitlines()[4].split()  # 2.jpg
    self.assertEqual(record['label'].tolist(),
                     [int(tokens[t] == '1') for t in (21, 32, 40)])
    self.assertEqual(builder.info.features['label'].shape, (3,))

  def test_binary_task_takes_one_attribute(self):
    multi = data_testing.build(self.builder('multilabel'), self.manual)
    young = data_testing.build(self.builder('young'), self.manual)
    self.assertEqual(young.info.features['label'].names, ['not_young', 'young'])
    for split in splits_lib.SPLITS:
      self.assertEqual(
          [int(l[2]) for l, in data_testing.read_split(multi, split, 'label')],
          [l for l, in data_testing.read_split(young, split, 'label')])

  def test_images_resized_like_torchvision(self):
    # A source with detail at every scale (noise over a fine checkerboard):
    # a filter without antialiasing, or another filter, gives other pixels.
    from PIL import Image  # pylint: disable=g-import-not-at-top
    path = os.path.join(self.manual, 'CelebA-HQ-img', '0.jpg')
    size = Image.open(path).size[0]
    rng = np.random.default_rng(0)
    board = (np.indices((size, size)).sum(axis=0) % 2 * 160)[..., None]
    detail = np.clip(board + rng.integers(0, 96, (size, size, 3)), 0, 255)
    Image.fromarray(detail.astype(np.uint8)).save(path, quality=95)
    builder = data_testing.build(self.builder('gender'), self.manual)
    stored = builder.as_data_source('test')[0]['image'].astype(np.int32)
    source = Image.open(path).convert('RGB')
    target = stored.shape[0]
    # torchvision's Resize on a PIL image: PIL's antialiased bilinear.
    expected = np.asarray(source.resize((target, target), Image.BILINEAR),
                          np.int32)
    np.testing.assert_array_equal(stored, expected)
    for other in (Image.NEAREST, Image.BICUBIC):
      self.assertGreater(np.abs(stored - np.asarray(
          source.resize((target, target), other), np.int32)).mean(), 2)
    # Bilinear without antialiasing: sample the 2x2 neighbourhood only.
    step = size / target
    centres = (np.arange(target) + 0.5) * step - 0.5
    nearby = np.asarray(source, np.int32)[np.ix_(
        np.floor(centres).astype(int), np.floor(centres).astype(int))]
    self.assertGreater(np.abs(stored - nearby).mean(), 10)

  def test_reads_the_reference_notebooks_layout(self):
    nested = os.path.join(self.tmp, 'nested')
    os.makedirs(nested)
    os.rename(self.manual, os.path.join(nested, mucac.RELEASE_DIR))
    builder = data_testing.build(self.builder('smiling'), nested)
    self.assertEqual(builder.info.splits['train'].num_examples, 7)

  def test_wrong_attribute_columns(self):
    self.edit(mucac.ATTRIBUTE_FILE,
              lambda lines: [lines[0], lines[1].replace('Male', 'Female')]
              + lines[2:])
    self.assert_fails(mucac.ATTRIBUTE_FILE, 'line 2', "'Male'")

  def test_unknown_attribute_value(self):
    def edit(lines):
      tokens = lines[5].split()
      tokens[32] = '0'
      lines[5] = ' '.join(tokens)
      return lines
    self.edit(mucac.ATTRIBUTE_FILE, edit)
    self.assert_fails(mucac.ATTRIBUTE_FILE, 'line 6', 'Smiling', "'0'")

  def test_malformed_identity_line(self):
    self.edit(mucac.IDENTITY_FILE,
              lambda lines: lines[:3] + ['3.jpg'] + lines[4:])
    self.assert_fails(mucac.IDENTITY_FILE, 'line 4')

  def test_image_listed_but_absent(self):
    os.remove(os.path.join(self.manual, 'CelebA-HQ-img', '7.jpg'))
    self.assert_fails('7.jpg', f'{mucac.IDENTITY_FILE} line 8', 'missing')

  def test_image_that_does_not_decode(self):
    with open(os.path.join(self.manual, 'CelebA-HQ-img', '5.jpg'), 'wb') as f:
      f.write(b'\xff\xd8 truncated')
    self.assert_fails('5.jpg', 'does not decode')

  def test_non_square_image(self):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    Image.new('RGB', (160, 120)).save(
        os.path.join(self.manual, 'CelebA-HQ-img', '9.jpg'))
    self.assert_fails('9.jpg', '160x120', 'square')

  def test_missing_text_file(self):
    os.remove(os.path.join(self.manual, mucac.IDENTITY_FILE))
    self.assert_fails(mucac.IDENTITY_FILE, 'is missing')

  def test_prepare_reports_positives_per_attribute(self):
    builder = data_testing.build(self.builder('multilabel'), self.manual)
    summary = prepare.describe(builder)
    labels = np.array([l for l, in data_testing.read_split(builder, 'train', 'label')])
    self.assertEqual(summary['splits']['train']['class_counts'],
                     labels.sum(axis=0).tolist())
    self.assertEqual(summary['splits']['train']['images'], 7)


if __name__ == '__main__':
  absltest.main()
