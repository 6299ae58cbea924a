"""The runner: a config in, results.json, results.md and losses out."""

import importlib
import csv
import json
import os
import subprocess
import sys

import numpy as np
from absl.testing import absltest
from PIL import Image

from configs import quickstart
from mufax import engine
from mufax import experiment
from mufax import metrics
from mufax import published
from mufax import train
from mufax import unlearning
from mufax.data.errors import DataError

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

  def test_writes_results_losses_and_plots_and_reuses_work(self):
    data_dir = self.create_tempdir().full_path
    workdir = self.create_tempdir().full_path
    config = tiny_config(data_dir)
    config.methods = 'original,retrain,oracle,neggrad'
    config.population.size = 2
    records = experiment.run(config, workdir)

    self.assertEqual([r['method'] for r in records],
                     ['original', 'retrain', 'oracle', 'neggrad'])
    with open(os.path.join(workdir, 'results.json')) as f:
      saved = json.load(f)
    self.assertEqual(saved['config']['original']['epochs'], 2)
    for r in saved['records']:
      # The oracle retrains with seeds of its own.
      seeds = [44, 45] if r['method'] == 'oracle' else [42, 43]
      self.assertEqual((r['dataset'], r['task'], r['protocol'], r['seed'],
                        r['population'], r['seeds']),
                       ('synthetic_faces/small', 'age', 'paper', seeds[0], 2,
                        seeds))
      # Every member's record, and their means at the top level.
      self.assertEqual([m['seed'] for m in r['members']], seeds)
      for key in ('accuracy', 'top2_accuracy', 'mia', 'loss_auc'):
        for m in r['members']:
          self.assertBetween(m[key], 0, 1)
        self.assertAlmostEqual(r[key],
                               np.mean([m[key] for m in r['members']]))
      for m in r['members']:
        self.assertAlmostEqual(m['forgetting_score'], abs(m['mia'] - 0.5))
      self.assertEqual(r['lam'], 0.5)
      self.assertGreater(r['wall_seconds'], 0)
      self.assertGreaterEqual(r['compile_seconds'], 0)
      self.assertIsNone(r['published'])
    self.assertEqual(saved['records'][3]['config'],
                     {'batch_size': 64, 'lr': 0.001, 'learning_rate': 0.001,
                      'epochs': 2, 'batch_norm': 'train', 'steps': 16})
    # 1000 train images in batches of 64: 16 steps an epoch; retain 600: 10;
    # NegGrad: 20 retain steps less the 4 where one batch is short.
    self.assertEqual([r['update_steps'] for r in records], [32, 20, 20, 16])
    losses = np.load(os.path.join(workdir, 'losses', 'neggrad.npz'))
    sizes = {'forget': 400, 'unseen': 400, 'test': 320, 'retain': 600}
    self.assertEqual({k: losses[k].shape for k in losses.files},
                     {**{k: (2, n) for k, n in sizes.items()},
                      **{f'phi_{k}': (2, n) for k, n in sizes.items()}})
    self.assertTrue(np.all(np.isfinite(losses['forget'])))
    self.assertEqual(losses['phi_forget'].dtype, np.float64)
    # Each member's attack scores, recomputed from the saved losses and the
    # test's λ (0.5): NoMUS = λ·accuracy + (1 − λ)·(1 − 2·|MIA − 0.5|).
    for r in records:
      with np.load(os.path.join(workdir, 'losses', f'{r["method"]}.npz')) as z:
        for k, m in enumerate(r['members']):
          mia = metrics.membership_inference(z['forget'][k], z['unseen'][k])
          self.assertEqual(m['mia'], mia)
          self.assertAlmostEqual(m['nomus'], 0.5 * m['accuracy'] + 0.5 * (
              1 - 2 * abs(mia - 0.5)), places=12)
          self.assertEqual(m['loss_auc'], metrics.loss_auc(z['forget'][k],
                                                           z['unseen'][k]))
    # Softmax φ > 0 exactly where the true class has more than half the mass,
    # i.e. the loss -log p_y is below log 2.
    np.testing.assert_array_equal(losses['phi_forget'] > 0,
                                  losses['forget'] < np.log(2))
    # The extended evaluation against the retrained population: the
    # original (floor) and the oracle (ceiling) are scored like a method.
    for r in saved['records']:
      evaluation = r['evaluation']
      columns = ('F', 'F_N', 'final_score', 'lira_accuracy', 'lira_auc',
                 'F_identity', 'lira_accuracy_identity', 'tpr_at_1%_fpr',
                 'tpr_at_0.1%_fpr', 'relative_seconds', 'relative_flops')
      if r['method'] == 'retrain':
        self.assertNotIn('F', evaluation)
        self.assertAlmostEqual(evaluation['relative_seconds'], 1.0)
        continue
      for column in columns:
        self.assertIn(column, evaluation, (r['method'], column))
      self.assertEqual(evaluation['F_N'], 2)
      self.assertBetween(evaluation['F'], 0, 1)
      self.assertLen(r['evaluation_per_seed']['test_accuracy'], 2)
      self.assertIn('test_accuracy_ci95', evaluation)
      for table, header, lines in (
          ('identities', ['identity', 'images', 'epsilon', 'attack_accuracy'],
           None),
          ('least_forgotten', ['identity', 'images', 'epsilon',
                               'attack_accuracy'], 5),
          ('examples', ['example', 'identity', 'epsilon'], 400)):
        with open(os.path.join(workdir, table, f'{r["method"]}.csv')) as f:
          rows = list(csv.reader(f))
        self.assertEqual(rows[0], header)
        if lines:
          self.assertLen(rows, lines + 1)
    with open(os.path.join(workdir, 'results.md')) as f:
      text = f.read()
    for expected in ('| neggrad |', ' ± ', 'Against retraining',
                     '| F (N = 2, oracle ', 'least-forgotten',
                     '- **neggrad**: '):
      self.assertIn(expected, text)
    for plot in ('loss_histograms.png', 'accuracy_vs_forgetting.png',
                 'epsilon_distributions.png', 'accuracy_vs_forget_score.png'):
      with Image.open(os.path.join(workdir, plot)) as image:
        self.assertEqual(image.format, 'PNG')

    # Asking for one more method keeps the finished rows and trains nothing
    # again.
    config.methods = 'original,retrain,oracle,neggrad,finetune'
    again = experiment.run(config, workdir)
    self.assertEqual(again[:4], json.loads(json.dumps(records)))
    self.assertEqual(again[4]['method'], 'finetune')
    self.assertEqual(again[4]['config']['batch_norm'], 'eval')

    # Another setting invalidates the earlier rows, which are kept aside
    # rather than overwritten.
    config.lam = 0.7
    config.methods = 'original'
    [changed] = experiment.run(config, workdir)
    self.assertEqual(changed['lam'], 0.7)
    self.assertEqual(changed['accuracy'], records[0]['accuracy'])
    self.assertNotAlmostEqual(changed['nomus'], records[0]['nomus'])
    [aside] = os.listdir(os.path.join(workdir, 'previous'))
    with open(os.path.join(workdir, 'previous', aside, 'results.json')) as f:
      self.assertLen(json.load(f)['records'], 5)

  def test_bad_config_values_are_refused(self):
    config = tiny_config(self.create_tempdir().full_path)
    for field, value, message in (
        ('lam', 1.5, 'λ'), ('methods', 'original,scrubbed', 'scrubbed'),
        ('methods', '', 'choose from'), ('protocol', 'tidy', 'tidy')):
      bad = config.copy_and_resolve_references()
      bad[field] = value
      with self.assertRaisesRegex(experiment.ConfigError, message):
        experiment.run(bad, self.create_tempdir().full_path)
    bad = config.copy_and_resolve_references()
    bad.unlearn.cf_k.k = 9
    with self.assertRaisesRegex(experiment.ConfigError,
                                r'config\.unlearn\.cf_k\.k=9: must be at most 6'):
      experiment.run(bad, self.create_tempdir().full_path)

  def test_divergence_is_a_result_and_the_run_goes_on(self):
    data_dir = self.create_tempdir().full_path
    workdir = self.create_tempdir().full_path
    config = tiny_config(data_dir)
    config.methods = 'original,neggrad,finetune'
    # Gradient ascent at this rate overflows within a few steps.
    config.unlearn.neggrad.lr = 1e8
    records = experiment.run(config, workdir)
    self.assertEqual([r['method'] for r in records],
                     ['original', 'neggrad', 'finetune'])
    diverged = records[1]['diverged']
    self.assertGreaterEqual(diverged['step'], 1)
    self.assertLessEqual(diverged['step'], records[1]['update_steps'])
    self.assertEqual(diverged['seeds'], [42])
    self.assertNotIn('accuracy', records[1])
    self.assertGreater(records[2]['accuracy'], 0)
    with open(os.path.join(workdir, 'results.md')) as f:
      self.assertIn(f'neggrad (diverged at step {diverged["step"]})', f.read())
    # Kept as a result: a second run recomputes nothing.
    again = experiment.run(config, workdir)
    self.assertEqual(again[1]['diverged'], diverged)

    config.original.learning_rate = 1e8
    with self.assertRaisesRegex(
        engine.Diverged, r'original: training on train diverged: .* at step '
        r'\d+ of epoch 1 .*config\.original\.learning_rate'):
      experiment.run(config, self.create_tempdir().full_path)

  def test_a_checkpoint_of_another_model_or_corrupt_is_named(self):
    data_dir = self.create_tempdir().full_path
    workdir = self.create_tempdir().full_path
    config = tiny_config(data_dir)
    config.methods = 'original'
    config.original.epochs = 1
    config.original.decay_epochs = ()
    experiment.run(config, workdir)
    folder = experiment.checkpoint_dir(config, workdir, 'original', (42,))
    wider = config.copy_and_resolve_references()
    wider.model.num_filters = 16
    with self.assertRaisesRegex(train.CheckpointError,
                                f'{folder} holds a checkpoint of a different '
                                'run'):
      experiment.run(wider, workdir)
    for root, _, names in os.walk(os.path.join(folder, '1')):
      for name in names:
        with open(os.path.join(root, name), 'wb') as f:
          f.write(b'not a checkpoint')
    # results.json's row is reused without the checkpoint; a new table
    # needs the model and finds it unreadable.
    config.original.epochs = 2
    with self.assertRaisesRegex(train.CheckpointError,
                                f'{folder}: the checkpoint of epoch 1 is '
                                'corrupt or unreadable'):
      experiment.run(config, workdir)

  def test_command_line_error_exits_non_zero_with_a_message(self):
    result = subprocess.run(
        [sys.executable, 'run_main.py', '--config=configs/quickstart.py',
         '--config.data.dataset=mufac/tidy',
         f'--workdir={self.create_tempdir().full_path}'],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    self.assertEqual(result.returncode, 1)
    self.assertIn("Unknown dataset 'mufac/tidy'", result.stderr)


class KillAndResumeTest(absltest.TestCase):
  """A run killed with SIGKILL and started again ends as an unkilled run."""

  def command(self, data_dir, workdir):
    # One compilation cache for the three runs: the second and third compile
    # nothing.
    cache = os.path.join(data_dir, 'jax_cache')
    return [sys.executable, 'run_main.py', '--config=configs/quickstart.py',
            f'--config.compilation_cache_dir={cache}',
            '--config.model.name=resnet_tiny', '--config.model.num_filters=0',
            '--config.original.epochs=2', '--config.original.decay_epochs=(1,)',
            '--config.retrain.epochs=6', '--config.retrain.decay_epochs=(3,)',
            '--config.methods=original,retrain,neggrad',
            f'--config.data.data_dir={data_dir}', f'--workdir={workdir}']

  def results(self, workdir):
    with open(os.path.join(workdir, 'results.json')) as f:
      records = json.load(f)['records']
    for r in records:
      r.pop('wall_seconds')
      r.pop('compile_seconds')
      # Columns derived from the timings (relative_seconds, ...).
      for part in ('evaluation', 'evaluation_per_seed'):
        for key in [k for k in r.get(part, {}) if 'seconds' in k]:
          r[part].pop(key)
    return records

  def test_killed_while_retraining_resumes_to_the_same_results(self):
    data_dir = self.create_tempdir().full_path
    whole = self.create_tempdir().full_path
    # Compiling the programs takes minutes on a loaded 2-core machine.
    subprocess.run(self.command(data_dir, whole), cwd=REPO, check=True,
                   capture_output=True, timeout=1800)

    workdir = self.create_tempdir().full_path
    killed = subprocess.Popen(self.command(data_dir, workdir), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    seen = []
    try:
      # The original row is written before the retrained model trains; kill
      # once retrain has saved its second epoch (the line of epoch 3 comes
      # after that save).
      for line in killed.stdout:
        seen.append(line)
        if line.startswith('epoch 3/6'):
          break
    finally:
      killed.kill()
      killed.wait()
    self.assertTrue(any(l.startswith('original: accuracy') for l in seen),
                    ''.join(seen))
    self.assertEqual([r['method'] for r in self.results(workdir)],
                     ['original'])

    resumed = subprocess.run(self.command(data_dir, workdir), cwd=REPO,
                             capture_output=True, text=True, timeout=1800,
                             check=False)
    self.assertEqual(resumed.returncode, 0, resumed.stdout + resumed.stderr)
    self.assertIn('original: reusing the results', resumed.stdout)
    self.assertRegex(resumed.stdout, 'resuming from the checkpoint of epoch '
                     '[23]')
    self.assertEqual(self.results(workdir), self.results(whole))


class ConfigsTest(absltest.TestCase):

  def test_every_config_names_known_methods(self):
    names = [f[:-3] for f in os.listdir(os.path.join(REPO, 'configs'))
             if f.endswith('.py') and f not in ('__init__.py', 'default.py')]
    for dataset in ('mufac', 'mucac'):
      for method in ('original', 'retrain', 'finetune', 'cf3', 'neggrad',
                     'advanced_neggrad', 'unsir', 'scrub', 'all'):
        self.assertIn(f'{dataset}_{method}', names)
    for name in names:
      config = importlib.import_module(f'configs.{name}').get_config()
      self.assertTrue(experiment.method_names(config), name)
    self.assertEqual(
        experiment.method_names(importlib.import_module(
            'configs.mufac_all').get_config()),
        list(unlearning.PAPER_TABLE))

  def test_mucac_task_argument(self):
    scrub = importlib.import_module('configs.mucac_scrub')
    self.assertEqual(scrub.get_config().data.dataset, 'mucac/multilabel')
    self.assertEqual(scrub.get_config('gender').data.dataset, 'mucac/gender')
    with self.assertRaisesRegex(DataError, "Unknown dataset 'mucac/age'.*"
                                           'mucac/smiling'):
      experiment.run(scrub.get_config('age'), self.create_tempdir().full_path)


class TableTest(absltest.TestCase):

  def test_published_numbers_sit_beside_ours(self):
    record = {'method': 'scrub', 'accuracy': 0.5, 'top2_accuracy': 0.7,
              'mia': 0.6, 'forgetting_score': 0.1, 'nomus': 0.65,
              'loss_auc': 0.55, 'update_steps': 316, 'wall_seconds': 12.0,
              'published': published.published('mufac/paper', 'scrub')}
    table = experiment.format_table([record])
    header, _, row = table.splitlines()
    self.assertIn('paper NoMUS', header)
    self.assertTrue(row.endswith('| 0.5984 | 0.8745 | 0.1415 | 0.6576 |'))

if __name__ == '__main__':
  absltest.main()
