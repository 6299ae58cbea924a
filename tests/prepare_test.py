"""The prepare command: dataset names, clear errors, its JSON report."""

import importlib
import json
import os
import subprocess
import sys

from absl import flags
from absl.testing import absltest

import data_testing
from mufax import datasets
from mufax.data import prepare
from mufax.data.errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_prepare(*args):
  return subprocess.run(
      [sys.executable, '-m', 'mufax.data.prepare', *args], cwd=REPO,
      capture_output=True, text=True, timeout=300, check=False)


class PrepareTest(absltest.TestCase):

  def test_every_dataset_of_the_benchmark_is_named(self):
    self.assertContainsSubset(
        ['mufac/paper', 'mufac/clean', 'mucac/multilabel', 'mucac/gender',
         'mucac/smiling', 'mucac/young'], datasets.dataset_names())
    self.assertTrue(any(n.startswith('synthetic_faces/')
                        for n in datasets.dataset_names()))

  def test_unknown_dataset(self):
    with self.assertRaisesRegex(DataError, "Unknown dataset 'mufac/tidy'"):
      prepare.get_builder('mufac/tidy', data_dir=self.create_tempdir().full_path)

  def test_missing_manual_dir(self):
    data_dir = self.create_tempdir().full_path
    with self.assertRaisesRegex(DataError, 'pass their folder as --manual_dir'):
      prepare.prepare('mufac/paper', data_dir=data_dir)
    with self.assertRaisesRegex(DataError, '/nonexistent/mufac does not exist'):
      prepare.prepare('mufac/paper', data_dir=data_dir,
                      manual_dir='/nonexistent/mufac')

  def test_cli_reports_counts_as_json_on_its_last_line(self):
    data_dir = self.create_tempdir().full_path
    result = run_prepare('--dataset=synthetic_faces', f'--data_dir={data_dir}')
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    report = json.loads(result.stdout.strip().splitlines()[-1])
    self.assertStartsWith(report['dataset'], 'synthetic_faces/')
    splits = report['splits']
    self.assertEqual(splits['train']['images'],
                     splits['forget']['images'] + splits['retain']['images'])
    self.assertEqual(sum(splits['test']['class_counts']),
                     splits['test']['images'])
    self.assertEqual(set(report['identity_overlap'].values()), {0})
    self.assertIsNotNone(report['build_seconds'])
    again = run_prepare('--dataset=synthetic_faces', f'--data_dir={data_dir}')
    self.assertIsNone(json.loads(again.stdout.strip().splitlines()[-1])
                      ['build_seconds'])

  def test_importing_the_commands_defines_no_flags(self):
    # Flags are defined when the command runs, so that a program importing
    # these modules (run_main.py) does not accept and then ignore them.
    importlib.import_module('mufax.data.audit')
    for name in ('dataset', 'data_dir', 'manual_dir', 'max_distance'):
      self.assertNotIn(name, flags.FLAGS)

  def test_help_lists_the_flags(self):
    # absl prints the help to stdout and exits with status 1.
    result = run_prepare('--help')
    self.assertNotIn('Traceback', result.stderr)
    for flag in ('--dataset', '--data_dir', '--manual_dir'):
      self.assertIn(flag, result.stdout)

  def test_cli_bad_input_is_one_clear_line(self):
    # The fixture has 16 train rows: too few to forget the real 1,500.
    manual = data_testing.copy_fixture('mufac', self.create_tempdir().full_path)
    result = run_prepare('--dataset=mufac/paper', f'--manual_dir={manual}',
                         f'--data_dir={self.create_tempdir().full_path}')
    self.assertEqual(result.returncode, 1)
    self.assertIn('error: The train CSV has 16 rows', result.stderr)
    self.assertNotIn('Traceback', result.stderr)


if __name__ == '__main__':
  absltest.main()
