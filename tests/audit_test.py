"""Perceptual hashes, the near-duplicate audit and its command."""

import csv
import json
import os
import subprocess
import sys

from absl.testing import absltest
import numpy as np

import data_testing
from datasets_builders.mufac import mufac_dataset_builder as mufac
from mufax.data import audit
from mufax.data import phash

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


class AuditDatasetTest(absltest.TestCase):

  def test_finds_the_planted_cross_split_copy(self):
    tmp = self.create_tempdir().full_path
    manual = data_testing.copy_fixture('mufac', tmp)
    config = mufac.MufacConfig(name='audit_fixture', num_forget_rows=5)
    builder = data_testing.build(
        mufac.Mufac(config=config, data_dir=os.path.join(tmp, 'tfds'),
                    file_format='array_record'), manual)
    pairs, files, identities = audit.audit(builder, max_distance=0)
    summary = audit.summarize(pairs, identities)
    self.assertEqual(summary['retain/unseen']['pairs'], 1)
    self.assertEqual(sum(e['pairs'] for e in summary.values()), 1)
    out = os.path.join(tmp, 'pairs.csv')
    audit.write_pairs(out, pairs, files, identities)
    with open(out) as f:
      rows = list(csv.DictReader(f))
    self.assertEqual(
        [(r['file_a'], r['file_b'], r['distance']) for r in rows],
        [('train_images/F0004_AGE_M_30_f1.jpg',
          'test_images/F0851_AGE_M_30_f1.JPG', '0')])


class LightImportTest(absltest.TestCase):

  def test_hashing_and_the_mufac_builder_do_not_import_jax(self):
    # Building a dataset (and hashing its images) needs neither JAX nor the
    # input pipeline; a fresh interpreter shows what the imports pull in.
    code = ('import sys\n'
            'import mufax.data.phash\n'
            'import datasets_builders.mufac.mufac_dataset_builder\n'
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
         f'--out={out}', '--max_distance=1'],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    report = json.loads(result.stdout.strip().splitlines()[-1])
    self.assertEqual((report['dataset'], report['max_distance'], report['csv']),
                     ('synthetic_faces/small', 1, out))
    self.assertCountEqual(
        report['pairs'],
        [f'{a}/{b}' for i, a in enumerate(audit.AUDITED_SPLITS)
         for b in audit.AUDITED_SPLITS[i:]])
    with open(out) as f:
      rows = list(csv.DictReader(f))
    self.assertLen(rows, sum(e['pairs'] for e in report['pairs'].values()))

if __name__ == '__main__':
  absltest.main()
