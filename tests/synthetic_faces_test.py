"""Tests of the built-in synthetic_faces dataset."""

import collections
import shutil
import tempfile

from absl.testing import absltest
import numpy as np

from mufax.datasets import synthetic_faces as sf

# A tiny config keeps the builds fast; it exercises the same code as `small`.
TINY = dict(image_size=16, forget_identities=3, retain_identities=5,
            test_identities=2, unseen_identities=4, images_per_identity=6)
SPLITS = ('train', 'retain', 'forget', 'test', 'unseen')


def build(data_dir, **overrides):
  config = sf.SyntheticFacesConfig(name='tiny', **{**TINY, **overrides})
  builder = sf.SyntheticFaces(config=config, data_dir=data_dir,
                              file_format='array_record')
  builder.download_and_prepare()
  source = builder.as_data_source()
  return {s: [source[s][i] for i in range(len(source[s]))] for s in SPLITS}


class SyntheticFacesTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir = tempfile.mkdtemp(prefix='synthetic_faces-')
    cls.data = build(cls.data_dir)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.data_dir, ignore_errors=True)
    super().tearDownClass()

  def identities(self, split):
    return [e['identity'].decode() for e in self.data[split]]

  def test_split_sizes_follow_config(self):
    m = TINY['images_per_identity']
    expected = {'forget': 3 * m, 'retain': 5 * m, 'train': 8 * m,
                'test': 2 * m, 'unseen': 4 * m}
    self.assertEqual({s: len(self.data[s]) for s in expected}, expected)
    for split in expected:
      counts = collections.Counter(self.identities(split))
      self.assertEqual(set(counts.values()), {m}, split)

  def test_identities_disjoint(self):
    sets = {s: set(self.identities(s))
            for s in ('forget', 'retain', 'test', 'unseen')}
    for a in sets:
      for b in sets:
        if a < b:
          self.assertEmpty(sets[a] & sets[b], f'{a}/{b}')

  def test_train_is_forget_then_retain(self):
    def key(e):
      return e['file_name'], e['identity'], e['label'], e['image'].tobytes()
    self.assertEqual([key(e) for e in self.data['train']],
                     [key(e) for e in self.data['forget'] + self.data['retain']])

  def test_names(self):
    example = self.data['test'][0]
    identity, name = example['identity'].decode(), example['file_name'].decode()
    self.assertRegex(identity, r'^S\d{4}/P$')
    self.assertRegex(name, r'^S\d{4}_P_\d{2}\.png$')
    self.assertEqual(name[:7], identity.replace('/', '_'))

  def test_image_shape_and_dtype(self):
    for split in SPLITS:
      for example in self.data[split]:
        self.assertEqual(example['image'].shape, (16, 16, 3))
        self.assertEqual(example['image'].dtype, np.uint8)
    images = np.stack([e['image'] for e in self.data['train']])
    self.assertGreater(images.std(), 20)  # Not blank.

  def test_images_differ_within_identity(self):
    images = [e['image'] for e in self.data['forget'][:TINY['images_per_identity']]]
    for a in images[1:]:
      self.assertFalse(np.array_equal(images[0], a))

  def test_deterministic(self):
    again = build(self.create_tempdir().full_path)
    for split in SPLITS:
      for a, b in zip(self.data[split], again[split], strict=True):
        np.testing.assert_array_equal(a['image'], b['image'])
        self.assertEqual(a['label'], b['label'])

  def test_seed_changes_images(self):
    other = build(self.create_tempdir().full_path, seed=1)
    self.assertFalse(np.array_equal(self.data['test'][0]['image'],
                                     other['test'][0]['image']))

  def test_labels_cover_classes_independent_of_identity(self):
    config = sf.SyntheticFacesConfig(name='default_like')
    _, shots = sf.draw(config)
    labels = shots['label'].reshape(-1, config.images_per_identity)
    self.assertEqual(set(labels.ravel()), set(range(sf.NUM_CLASSES)))
    distinct = np.array([len(set(row)) for row in labels])
    self.assertGreater(distinct.mean(), 4)  # 8 uniform draws: about 5.3.
    labels = [e['label'] for e in self.data['train']]
    self.assertTrue(all(0 <= l < sf.NUM_CLASSES for l in labels))
    per_identity = collections.defaultdict(set)
    for e in self.data['train']:
      per_identity[e['identity']].add(e['label'])
    self.assertTrue(all(len(v) > 1 for v in per_identity.values()))

  def test_default_config_is_small(self):
    config = sf.SyntheticFaces.BUILDER_CONFIGS[0]
    self.assertEqual(config.name, 'small')
    self.assertEqual(config.image_size, 32)
    total = sum(config.identities(s) for s in sf.SPLIT_ORDER)
    self.assertLessEqual(total * config.images_per_identity, 5000)


if __name__ == '__main__':
  absltest.main()
