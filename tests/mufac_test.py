"""MUFAC builder: fixture layouts, the paper/clean protocols, bad input, real data."""

import csv
import os
import shutil
import tempfile

from absl.testing import absltest
import numpy as np
from PIL import Image

import data_testing
from mufax.data import audit
from mufax.data import prepare
from mufax.data import splits as splits_lib
from mufax.data.errors import DataError
from mufax.datasets import mufac

ROOT = mufac.ROOT


def fixture_config(name):
  """The fixture's train CSV has 16 rows; forget its first 5 (a person cut)."""
  base = {c.name: c for c in mufac.Mufac.BUILDER_CONFIGS}[name]
  return mufac.MufacConfig(
      name=f'{name}_fixture', num_forget_rows=5, whole_identities=base.whole_identities,
      drop_near_duplicates=base.drop_near_duplicates)


class MufacFixtureTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = self.create_tempdir().full_path
    self.manual = data_testing.copy_fixture('mufac', self.tmp)

  def builder(self, config='paper'):
    return mufac.Mufac(config=fixture_config(config),
                       data_dir=os.path.join(self.tmp, 'tfds'),
                       file_format='array_record')

  def rewrite_csv(self, csv_name, edit):
    path = os.path.join(self.manual, ROOT, csv_name)
    with open(path, newline='') as f:
      rows = list(csv.reader(f))
    rows = edit(rows)
    with open(path, 'w', newline='') as f:
      csv.writer(f, lineterminator='\n').writerows(rows)

  def assert_build_fails(self, *fragments):
    builder = self.builder()
    with self.assertRaises(DataError) as caught:
      data_testing.build(builder, self.manual)
    for fragment in fragments:
      self.assertIn(fragment, str(caught.exception))
    self.assertFalse(builder.is_prepared())
    # Nothing that looks like a finished dataset is left behind.
    for _, _, files in os.walk(os.path.join(self.tmp, 'tfds')):
      self.assertNotIn('dataset_info.json', files)

  def test_paper_splits_follow_the_csv_rows(self):
    builder = data_testing.build(self.builder('paper'), self.manual)
    files = {s: [f for f, in data_testing.read_split(builder, s, 'file_name')]
             for s in splits_lib.SPLITS}
    self.assertEqual(
        {s: len(f) for s, f in files.items()},
        {'train': 16, 'forget': 5, 'retain': 11, 'test': 5, 'unseen': 5})
    self.assertEqual(files['train'], files['forget'] + files['retain'])
    self.assertEqual(files['forget'][-1], 'train_images/F0002_AGE_D_30_b1.jpg')
    self.assertEqual(files['retain'][0], 'train_images/F0002_AGE_D_30_b2.jpg')
    summary = prepare.describe(builder)
    # The paper's cut splits one person, as it does on the real data.
    self.assertEqual(summary['identity_overlap']['retain/forget'], 1)
    self.assertEqual(summary['identity_overlap']['train/test'], 0)
    self.assertEqual(summary['splits']['train']['identities'], 7)
    self.assertEqual(summary['splits']['forget']['class_counts'],
                     [2, 1, 0, 0, 2, 0, 0, 0])

  def test_images_and_labels_read_back(self):
    builder = data_testing.build(self.builder('paper'), self.manual)
    record = builder.as_data_source('unseen')[0]
    self.assertEqual(record['image'].shape, (128, 128, 3))
    with open(os.path.join(self.manual, ROOT, 'test_images',
                           'F0851_AGE_D2_30_a1.JPG'), 'rb') as f:
      np.testing.assert_array_equal(record['image'],
                                    np.asarray(Image.open(f).convert('RGB')))
    self.assertEqual(record['identity'], b'F0851/D2')
    self.assertEqual(record['label'], 0)

  def test_reads_the_zip_archive_as_the_folder(self):
    folder = data_testing.build(self.builder('paper'), self.manual)
    zipped = os.path.join(self.tmp, 'zipped')
    os.makedirs(zipped)
    shutil.make_archive(os.path.join(zipped, ROOT), 'zip', self.manual, ROOT)
    builder = mufac.Mufac(config=fixture_config('paper'),
                          data_dir=os.path.join(self.tmp, 'tfds_zip'),
                          file_format='array_record')
    data_testing.build(builder, zipped)
    for split in splits_lib.SPLITS:
      self.assertEqual(
          data_testing.read_split(folder, split, 'file_name', 'label'),
          data_testing.read_split(builder, split, 'file_name', 'label'))

  def test_clean_forgets_whole_people_and_drops_duplicates(self):
    builder = data_testing.build(self.builder('clean'), self.manual)
    ids = {s: {i for i, in data_testing.read_split(builder, s, 'identity')}
           for s in splits_lib.SPLITS}
    files = {s: {f for f, in data_testing.read_split(builder, s, 'file_name')}
             for s in splits_lib.SPLITS}
    self.assertIn('F0002/D', ids['forget'])
    self.assertNotIn('F0002/D', ids['retain'])
    overlap = prepare.describe(builder)['identity_overlap']
    self.assertIn('retain/forget', overlap)
    self.assertEqual(set(overlap.values()), {0})
    # F0004's image f1 is duplicated in unseen: both copies go.
    self.assertNotIn('train_images/F0004_AGE_M_30_f1.jpg', files['retain'])
    self.assertNotIn('test_images/F0851_AGE_M_30_f1.JPG', files['unseen'])
    self.assertLen(files['forget'], 7)
    self.assertLen(files['retain'], 8)
    self.assertLen(files['unseen'], 4)

  def test_missing_release(self):
    shutil.rmtree(os.path.join(self.manual, ROOT))
    self.assert_build_fails('does not exist or is empty', mufac.ARCHIVE)

  def test_manual_dir_without_the_release(self):
    shutil.rmtree(os.path.join(self.manual, ROOT))
    with open(os.path.join(self.manual, 'notes.txt'), 'w') as f:
      f.write('not the release')
    self.assert_build_fails('No MUFAC release found', mufac.ARCHIVE)

  def test_missing_csv_column(self):
    self.rewrite_csv('custom_val_dataset.csv',
                     lambda rows: [['family_id', 'person_id', 'age', 'image_path']]
                     + rows[1:])
    self.assert_build_fails('custom_val_dataset.csv', "['age_class']")

  def test_unknown_age_class(self):
    def edit(rows):
      rows[3][2] = 'z'
      return rows
    self.rewrite_csv('custom_train_dataset.csv', edit)
    self.assert_build_fails('custom_train_dataset.csv line 4', "'z'")

  def test_listed_image_absent(self):
    os.remove(os.path.join(self.manual, ROOT, 'val_images',
                           'F0801_AGE_F_30_e2.jpg'))
    self.assert_build_fails('custom_val_dataset.csv line 6',
                            'F0801_AGE_F_30_e2.jpg')

  def test_image_that_does_not_decode(self):
    with open(os.path.join(self.manual, ROOT, 'train_images',
                           'F0003_AGE_S_30_c2.jpg'), 'wb') as f:
      f.write(b'not a jpeg')
    self.assert_build_fails('F0003_AGE_S_30_c2.jpg', 'does not decode',
                            'custom_train_dataset.csv line 12')

  def test_image_of_wrong_size(self):
    Image.new('RGB', (100, 128)).save(
        os.path.join(self.manual, ROOT, 'test_images', 'F0851_AGE_M_30_f2.JPG'),
        format='JPEG')
    self.assert_build_fails('F0851_AGE_M_30_f2.JPG', '100x128', '128x128')

  def test_identity_in_two_splits(self):
    self.rewrite_csv('custom_test_dataset.csv',
                     lambda rows: rows[:2] + [['F0801', 'D', 'a',
                                               rows[2][3]]] + rows[3:])
    self.assert_build_fails("'F0801/D'", "'test'", "'unseen'",
                            'custom_test_dataset.csv line 3')


class MufacRealDataTest(absltest.TestCase):
  """The real release gives exactly the counts of protocol §2.1."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.manual = data_testing.shared_data('mufac')
    cls.data_dir = tempfile.mkdtemp()

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.data_dir, ignore_errors=True)
    super().tearDownClass()

  def test_paper_counts(self):
    builder = prepare.prepare('mufac/paper', data_dir=self.data_dir,
                              manual_dir=self.manual)
    summary = prepare.describe(builder)
    counts = {s: (v['images'], v['identities'])
              for s, v in summary['splits'].items()}
    # docs/datasets.md "Split counts".
    self.assertEqual(counts, {'train': (10025, 896), 'retain': (8525, 761),
                              'forget': (1500, 136), 'test': (1539, 161),
                              'unseen': (1504, 159)})
    classes = {s: v['class_counts'] for s, v in summary['splits'].items()}
    self.assertEqual(classes['train'], [2121, 1951, 1728, 1216, 1487, 814, 444, 264])
    self.assertEqual(classes['test'], [375, 367, 270, 239, 173, 79, 32, 4])
    self.assertEqual(classes['unseen'], [398, 360, 274, 214, 166, 63, 24, 5])
    self.assertEqual(classes['forget'], [285, 238, 209, 194, 258, 149, 110, 57])
    overlap = summary['identity_overlap']
    self.assertEqual(overlap.pop('retain/forget'), 1)  # F0046/D (protocol §2.1).
    self.assertEqual(set(overlap.values()), {0})
    straddler = {i for i, in data_testing.read_split(builder, 'forget', 'identity')
                 } & {i for i, in data_testing.read_split(builder, 'retain', 'identity')}
    self.assertEqual(straddler, {'F0046/D'})

  def test_clean_has_no_shared_person(self):
    builder = prepare.prepare('mufac/clean', data_dir=self.data_dir,
                              manual_dir=self.manual)
    summary = prepare.describe(builder)
    self.assertEqual(set(summary['identity_overlap'].values()), {0})
    splits = summary['splits']
    self.assertEqual(splits['train']['images'],
                     splits['forget']['images'] + splits['retain']['images'])
    # docs/datasets.md "Split counts": forget grows to whole people, then
    # every split loses its cross-split duplicates.
    self.assertEqual(
        {s: (v['images'], v['identities']) for s, v in splits.items()},
        {'train': (9900, 887), 'forget': (1473, 134), 'retain': (8427, 753),
         'test': (1519, 159), 'unseen': (1460, 155)})

  def test_audit_finds_the_pairs_the_docs_publish(self):
    builder = prepare.prepare('mufac/paper', data_dir=self.data_dir,
                              manual_dir=self.manual)
    pairs, _, identities = audit.audit(builder)
    summary = audit.summarize(pairs, identities)
    # docs/datasets.md "Near-duplicate audit": every pair joins two identities.
    self.assertEqual(
        {k: (v['pairs'], v['different_identity']) for k, v in summary.items()},
        {k: (n, n) for k, n in {
            'forget/forget': 511, 'forget/retain': 48, 'forget/test': 1,
            'forget/unseen': 0, 'retain/retain': 4137, 'retain/test': 1,
            'retain/unseen': 54, 'test/test': 312, 'test/unseen': 18,
            'unseen/unseen': 359}.items()})


if __name__ == '__main__':
  absltest.main()
