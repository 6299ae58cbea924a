"""The runner: a config in, results.json, results.md and losses out."""

import json
import os
import subprocess
import sys

import numpy as np
from absl.testing import absltest

from configs import quickstart
from mufax import experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir: str):
  config = quickstart.get_config()
  config.data.data_dir = data_dir
  config.model.name = 'resnet_tiny'
  config.model.num_filters = 0
  for kind in ('original', 'retrain'):
    config[kind].epochs = 2
    config[kind].decay_epochs = (1,)
  return config


class RunTest(absltest.TestCase):

  def test_writes_results_and_losses_and_reuses_checkpoints(self):
    data_dir = self.create_tempdir().full_path
    workdir = self.create_tempdir().full_path
    config = tiny_config(data_dir)
    records = experiment.run(config, workdir)

    self.assertEqual([r['model'] for r in records], ['original', 'retrain'])
    with open(os.path.join(workdir, 'results.json')) as f:
      saved = json.load(f)
    self.assertEqual(saved['records'][0]['dataset'], 'synthetic_faces/small')
    self.assertEqual(saved['config']['original']['epochs'], 2)
    for r in saved['records']:
      for key in ('accuracy', 'top2_accuracy', 'mia', 'loss_auc'):
        self.assertBetween(r[key], 0, 1)
      self.assertAlmostEqual(r['forgetting_score'], abs(r['mia'] - 0.5))
      self.assertEqual(r['lam'], 0.5)
    # 1000 train images in batches of 64: 16 steps an epoch; retain 600: 10.
    self.assertEqual([r['update_steps'] for r in records], [32, 20])
    losses = np.load(os.path.join(workdir, 'losses', 'original.npz'))
    self.assertEqual({k: len(losses[k]) for k in losses.files},
                     {'forget': 400, 'unseen': 400, 'test': 320,
                      'retain': 600})
    self.assertTrue(np.all(np.isfinite(losses['forget'])))
    with open(os.path.join(workdir, 'results.md')) as f:
      self.assertIn('| original |', f.read())

    # A second run with the same settings trains nothing again.
    again = experiment.run(config, workdir)
    self.assertEqual(again[0]['accuracy'], records[0]['accuracy'])
    self.assertLess(again[0]['wall_seconds'], records[0]['wall_seconds'])

  def test_bad_config_values_are_refused(self):
    config = tiny_config(self.create_tempdir().full_path)
    config.lam = 1.5
    with self.assertRaisesRegex(experiment.ConfigError, 'λ'):
      experiment.run(config, self.create_tempdir().full_path)
    config.lam = 0.5
    config.models = 'original,scrubbed'
    with self.assertRaisesRegex(experiment.ConfigError, 'scrubbed'):
      experiment.run(config, self.create_tempdir().full_path)

  def test_command_line_error_exits_non_zero_with_a_message(self):
    result = subprocess.run(
        [sys.executable, 'run_main.py', '--config=configs/quickstart.py',
         '--config.data.dataset=mufac/tidy',
         f'--workdir={self.create_tempdir().full_path}'],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    self.assertEqual(result.returncode, 1)
    self.assertIn("Unknown dataset 'mufac/tidy'", result.stderr)


if __name__ == '__main__':
  absltest.main()
