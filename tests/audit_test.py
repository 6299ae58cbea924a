"""Perceptual hashes, the near-duplicate audit and its command."""

import csv
import json
import os
import subprocess
import sys

from absl.testing import absltest
import numpy as np
from PIL import Image

import data_testing
from mufax.data import audit
from mufax.data import phash
from mufax.data import prepare
from mufax.datasets import mufac

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PerceptualHashTest(absltest.TestCase):

  def test_hash_survives_small_edits_and_separates_pictures(self):
    rng = np.random.default_rng(0)
    base = (rng.random((8, 8, 3)) * 255).astype(np.uint8).repeat(16, 0).repeat(16, 1)
    brighter = np.clip(base.astype(int) + 12, 0, 255).astype(np.uint8)
    other = base[::-1].copy()
    hashes = phash.perceptual_hash([base, brighter, other])
    self.assertEqual(hashes.dtype, np.uint64)
    distance = lambda a, b: int(np.bitwise_count(hashes[a] ^ hashes[b]))
    self.assertLessEqual(distance(0, 1), phash.DEFAULT_MAX_DISTANCE)
    self.assertGreater(distance(0, 2), 16)

  def test_pairs_within_and_across_splits(self):
    hashes = {'a': np.array([0b0, 0b1, 0b1111_1111], np.uint64),
              'b': np.array([0b11, 0b1111_0000_0000], np.uint64)}
    pairs = phash.near_duplicate_pairs(hashes, max_distance=2)
    self.assertCountEqual(
        [(p.split_a, p.index_a, p.split_b, p.index_b, p.distance) for p in pairs],
        [('a', 0, 'a', 1, 1), ('a', 0, 'b', 0, 2), ('a', 1, 'b', 0, 1)])
    summary = audit.summarize(pairs, {'a': ['x', 'x', 'y'], 'b': ['x', 'z']})
    self.assertEqual(summary['a/a'], {'pairs': 1, 'different_identity': 0})
    self.assertEqual(summary['a/b'], {'pairs': 2, 'different_identity': 0})
    self.assertEqual(summary['b/b'], {'pairs': 0, 'different_identity': 0})


def plant_near_copy(root: str, source: str, target: str) -> None:
  """Writes image `source` over `target` (paths under the MUFAC fixture's
  folder), brightened and JPEG-encoded again: another file, other pixels,
  the same picture."""
  folder = os.path.join(root, 'custom_korean_family_dataset_resolution_128')
  with Image.open(os.path.join(folder, source)) as image:
    pixels = np.asarray(image.convert('RGB'), np.int16)
  Image.fromarray(np.clip(pixels + 8, 0, 255).astype(np.uint8)).save(
      os.path.join(folder, target), quality=90)


def replace_with_new_face(root: str, target: str) -> None:
  """A picture of its own over `target`, in the fixture's style (a 4x4 grid
  of flat colours)."""
  grid = np.random.default_rng(7).integers(0, 256, (4, 4, 3), dtype=np.uint8)
  Image.fromarray(grid).resize((128, 128), Image.NEAREST).save(
      os.path.join(root, 'custom_korean_family_dataset_resolution_128',
                   target), quality=50)


# The fixture's byte copy of a retain image among the unseen images
# (tests/fixtures/make_fixtures.py).
EXACT = ('train_images/F0004_AGE_M_30_f1.jpg',
         'test_images/F0851_AGE_M_30_f1.JPG')
# Planted here: a forget image as a test image, brightened and re-encoded.
NEAR = ('train_images/F0001_AGE_D_30_a1.jpg',
        'val_images/F0801_AGE_F_30_e1.jpg')


class AuditDatasetTest(absltest.TestCase):

  def audit_fixture(self, edit):
    """The audit of the MUFAC fixture (forget: its first 5 rows) after
    `edit(manual_dir)`, at the default distance: (summary, CSV rows)."""
    tmp = self.create_tempdir().full_path
    manual = data_testing.copy_fixture('mufac', tmp)
    edit(manual)
    config = mufac.MufacConfig(name='audit_fixture', num_forget_rows=5)
    builder = data_testing.build(
        mufac.Mufac(config=config, data_dir=os.path.join(tmp, 'tfds'),
                    file_format='array_record'), manual)
    pairs, files, identities = audit.audit(builder)
    out = os.path.join(tmp, 'pairs.csv')
    audit.write_pairs(out, pairs, files, identities)
    with open(out) as f:
      return audit.summarize(pairs, identities), list(csv.DictReader(f))

  def test_finds_the_exact_and_the_near_copy_across_splits(self):
    summary, rows = self.audit_fixture(
        lambda manual: plant_near_copy(manual, *NEAR))
    found = {key: entry for key, entry in summary.items() if entry['pairs']}
    self.assertEqual(found, {
        'retain/unseen': {'pairs': 1, 'different_identity': 1},
        'forget/test': {'pairs': 1, 'different_identity': 1}})
    self.assertEqual([(r['file_a'], r['file_b']) for r in rows],
                     [EXACT, NEAR])
    # The brightened copy's hash moved, not beyond the default distance.
    self.assertEqual(rows[0]['distance'], '0')
    self.assertBetween(int(rows[1]['distance']), 1,
                       phash.DEFAULT_MAX_DISTANCE)

  def test_clean_data_reports_no_pair(self):
    summary, rows = self.audit_fixture(
        lambda manual: replace_with_new_face(manual, EXACT[1]))
    self.assertEqual({entry['pairs'] for entry in summary.values()}, {0})
    self.assertEmpty(rows)


class LightImportTest(absltest.TestCase):

  def test_hashing_and_the_mufac_builder_do_not_import_jax(self):
    # Building a dataset (and hashing its images) needs neither JAX nor the
    # input pipeline; a fresh interpreter shows what the imports pull in.
    code = ('import sys\n'
            'import mufax.data.phash\n'
            'import mufax.datasets.mufac\n'
            'print(sorted(m for m in sys.modules if m.split(".")[0] in '
            '("jax", "mufax")))\n')
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO,
                            capture_output=True, text=True, timeout=120,
                            check=True)
    loaded = result.stdout.strip()
    self.assertNotIn("'jax", loaded)
    self.assertNotIn("'mufax.input_pipeline'", loaded)
    self.assertNotIn("'mufax.data.audit'", loaded)
    self.assertIn("'mufax.data.phash'", loaded)


class CommandTest(absltest.TestCase):

  def test_help_lists_the_audit_and_the_dataset_flags(self):
    # absl prints the help to stdout and exits with status 1.
    result = subprocess.run(
        [sys.executable, '-m', 'mufax.data.audit', '--help'], cwd=REPO,
        capture_output=True, text=True, timeout=120, check=False)
    self.assertNotIn('Traceback', result.stderr)
    for flag in ('--dataset', '--data_dir', '--manual_dir', '--out',
                 '--max_distance'):
      self.assertIn(flag, result.stdout)

  def test_cli_writes_the_pairs_and_a_json_summary(self):
    tmp = self.create_tempdir().full_path
    out = os.path.join(tmp, 'pairs.csv')
    result = subprocess.run(
        [sys.executable, '-m', 'mufax.data.audit',
         '--dataset=synthetic_faces/small', f'--data_dir={tmp}',
         f'--out={out}'],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    report = json.loads(result.stdout.strip().splitlines()[-1])
    self.assertEqual((report['dataset'], report['max_distance'], report['csv']),
                     ('synthetic_faces/small', phash.DEFAULT_MAX_DISTANCE,
                      out))
    # The command reports what the audit finds in the data it built: at the
    # default distance the synthetic faces of one person, and a few of two,
    # come out alike.
    pairs, _, identities = audit.audit(prepare.prepare(
        'synthetic_faces/small', data_dir=tmp))
    self.assertEqual(report['pairs'], audit.summarize(pairs, identities))
    self.assertGreater(
        sum(e['different_identity'] for e in report['pairs'].values()), 0)
    with open(out) as f:
      rows = list(csv.DictReader(f))
    self.assertLen(rows, len(pairs))

if __name__ == '__main__':
  absltest.main()
