"""The runner: a config in, results.json, results.md and losses out."""

import importlib
import csv
import errno
import json
import os
import re
import subprocess
import sys
from unittest import mock

import jax
import numpy as np
from absl.testing import absltest
from PIL import Image

from configs import default
from configs import mufac_scrub
from configs import paper
from configs import quickstart
from mufax import checkpoints
from mufax import datasets
from mufax import engine
from mufax import experiment
from mufax import files
from mufax import metrics
from mufax import published
from mufax import results
from mufax import run_config
from mufax import unlearning
from mufax.data.errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def on_one_device(case: absltest.TestCase) -> None:
  """Runs `case` on one device. With 4 fake CPU devices, XLA's in-process
  collectives deadlocked once three engines (a sweep's) shared them (open);
  what these tests check does not depend on the devices."""
  one = jax.devices()[:1]
  patcher = mock.patch.object(jax, 'devices', lambda *_, **__: one)
  patcher.start()
  case.addCleanup(patcher.stop)


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
      # Retraining and the oracle have seed streams of their own.
      seeds = {'retrain': [44, 45], 'oracle': [46, 47]}.get(r['method'],
                                                            [42, 43])
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
    # Only an unlearned row says how far it moved from its original: each
    # NegGrad member from its own original, by its own amount.
    self.assertEqual([r['method'] for r in records
                      if 'moved_from_original' in r], ['neggrad'])
    moved = [m['moved_from_original'] for m in records[3]['members']]
    for m in moved:
      self.assertBetween(m['changed_fraction'], 0.01, 1.0)
      self.assertBetween(m['relative_l2'], 1e-6, 1.0)
    self.assertNotEqual(moved[0], moved[1])
    with open(os.path.join(workdir, 'results.md')) as f:
      self.assertRegex(f.read(), r'moved from the original[^|]*\n\| method '
                       r'.*\n.*\n\| neggrad \| \d+\.\d\d% \| ')
    # Softmax φ > 0 exactly where the true class has more than half the mass,
    # i.e. the loss -log p_y is below log 2.
    np.testing.assert_array_equal(losses['phi_forget'] > 0,
                                  losses['forget'] < np.log(2))
    # The extended evaluation: two models per row are too few for F and the
    # attack (PopulationRunTest has them), so the table says so and leaves
    # them out; per-model columns and costs stay. 400 unseen images reach
    # 1% and 0% false positives.
    for r in saved['records']:
      evaluation = r['evaluation']
      self.assertNotIn('F', evaluation)
      self.assertNotIn('lira_accuracy', evaluation)
      for column in ('tpr_at_1%_fpr', 'tpr_at_0%_fpr', 'relative_seconds',
                     'relative_flops', 'test_accuracy_ci95'):
        self.assertIn(column, evaluation, (r['method'], column))
      self.assertNotIn('tpr_at_0.1%_fpr', evaluation)
      self.assertLen(r['evaluation_per_seed']['test_accuracy'], 2)
      if r['method'] == 'retrain':
        self.assertAlmostEqual(evaluation['relative_seconds'], 1.0)
    with open(os.path.join(workdir, 'results.md')) as f:
      text = f.read()
    for expected in ('| neggrad |', ' ± ', 'Against retraining',
                     'config.population.size=2: F and the likelihood-ratio '
                     'attack need at least 8 models'):
      self.assertIn(expected, text)
    for plot in ('loss_histograms.png', 'accuracy_vs_forgetting.png'):
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
      with self.assertRaisesRegex(run_config.ConfigError, message):
        experiment.run(bad, self.create_tempdir().full_path)
    bad = config.copy_and_resolve_references()
    bad.engine.executor = 'gpu'
    with self.assertRaisesRegex(run_config.ConfigError,
                                r"config\.engine\.executor='gpu': choose one "
                                'of auto, host, loop'):
      experiment.run(bad, self.create_tempdir().full_path)
    for method, name, value, message in (
        ('cf_k', 'k', 9, r'config\.unlearn\.cf_k\.k=9: must be at most 6\.$'),
        ('scrb', 'lr', 0.1,
         r"^config\.unlearn\.scrb: no method 'scrb' is registered; the "
         r'methods with hyperparameters are finetune, .*, unsir \(a method '
         r'of your own: name its file in config\.plugins\)\.$'),
        ('retrain', 'epochs', 3, r'^config\.unlearn\.retrain\.epochs: no such '
         r'hyperparameter; the method has none\.$'),
        ('scrub', 'lrr', 0.1, r'^config\.unlearn\.scrub\.lrr: no such '
         r'hyperparameter; choose from batch_size, lr, epochs, '
         r'temperature\.$'),
        ('scrub', 'lr', 'fast', r"^config\.unlearn\.scrub\.lr='fast': must be "
         r'of type float\.$'),
        ('scrub', 'epochs', 1.5, r'^config\.unlearn\.scrub\.epochs=1\.5: must '
         r'be of type int\.$'),
        ('finetune', 'lr', True, r'^config\.unlearn\.finetune\.lr=True: must '
         r'be of type float\.$')):
      bad = config.copy_and_resolve_references()
      bad.unlearn[method] = {name: value}
      with self.assertRaisesRegex(run_config.ConfigError, message):
        experiment.run(bad, self.create_tempdir().full_path)

  def test_a_hyperparameter_at_its_default_changes_no_setting(self):
    config = tiny_config(self.create_tempdir().full_path)
    digest = results.settings_digest(config)
    # An int for a float, or a default given, changes no result.
    config.unlearn.finetune.lr = 0.001
    config.unlearn.scrub.temperature = 4
    self.assertEqual(results.settings_digest(config), digest)
    config.unlearn.finetune.lr = 0.002
    self.assertNotEqual(results.settings_digest(config), digest)

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
    folder = checkpoints.folder(config, workdir, 'original', (42,))
    wider = config.copy_and_resolve_references()
    wider.model.num_filters = 16
    with self.assertRaisesRegex(checkpoints.CheckpointError,
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
    with self.assertRaisesRegex(checkpoints.CheckpointError,
                                f'{folder}: the checkpoint of epoch 1 is '
                                'corrupt or unreadable'):
      experiment.run(config, workdir)

  def test_places_that_cannot_be_written_are_named_and_lose_nothing(self):
    data_dir = self.create_tempdir().full_path
    config = tiny_config(data_dir)
    config.methods = 'original'
    config.original.epochs = 1
    config.original.decay_epochs = ()
    a_file = self.create_tempfile().full_path
    with self.assertRaisesRegex(files.Unwritable,
                                f'The workdir {a_file}/run cannot be written'):
      experiment.run(config, os.path.join(a_file, 'run'))

    larger = config.copy_and_resolve_references()
    larger.data.image_size = 64
    with self.assertRaisesRegex(run_config.ConfigError,
                                'image_size=64 is larger than the stored '
                                '32x32 images'):
      experiment.run(larger, self.create_tempdir().full_path)

    workdir = self.create_tempdir().full_path
    experiment.run(config, workdir)
    with open(os.path.join(workdir, 'results.json')) as f:
      before = f.read()
    full = OSError(errno.ENOSPC, 'No space left on device')
    config.methods = 'original,finetune'
    # The disk fills while results.json is written, then while a checkpoint
    # is.
    with mock.patch.object(results.json, 'dump', side_effect=full):
      with self.assertRaisesRegex(
          files.Unwritable, f'{workdir}/results.json could not be written '
          r'\(No space left on device\); it keeps what it held'):
        experiment.run(config, workdir)
    with open(os.path.join(workdir, 'results.json')) as f:
      self.assertEqual(f.read(), before)
    config.methods = 'original,retrain'
    # Saved after every epoch: the first save is the one the full disk fails.
    config.checkpoint_every_s = 0.0
    with mock.patch.object(checkpoints.ocp.CheckpointManager, 'save',
                           side_effect=full):
      with self.assertRaisesRegex(
          checkpoints.CheckpointError, r'-retrain-paper-seed43: checkpoint 1 '
          r'could not be written \(OSError: .*No space left on device\); the '
          'ones before it are kept'):
        experiment.run(config, workdir)
    # Run again with room: the rows written are reused.
    config.methods = 'original,finetune'
    records = experiment.run(config, workdir)
    self.assertEqual([r['method'] for r in records], ['original', 'finetune'])
    with open(os.path.join(workdir, 'results.json')) as f:
      self.assertEqual(json.load(f)['records'][0], json.loads(before)[
          'records'][0])

  def test_a_converted_reference_model_is_the_original_if_it_fits(self):
    import torch  # pylint: disable=g-import-not-at-top
    from mufax import convert  # pylint: disable=g-import-not-at-top
    from mufax import torch_resnet  # pylint: disable=g-import-not-at-top
    data_dir = self.create_tempdir().full_path
    config = tiny_config(data_dir)
    config.methods = 'original'

    def converted(num_classes, image_size, width=4):
      torch.manual_seed(0)
      net = torch_resnet.ResNet((1, 1, 1, 1), num_classes=num_classes,
                                width=width)
      folder = os.path.join(self.create_tempdir().full_path, 'ckpt')
      arch, variables = convert.convert(
          {k: v.numpy() for k, v in net.state_dict().items()})
      convert.save(folder, arch, variables, image_size=image_size)
      return folder

    for folder, message in (
        (converted(3, 32), 'its head has 3 outputs, and synthetic_faces/small '
         r'\(age\) needs 8'),
        (converted(8, 128), 'trained on 128x128 images and this run feeds it '
         '32x32: set config.data.image_size=128'),
        (converted(8, 32, width=8), r'a ResNet with stages \[1, 1, 1, 1\] and '
         'width 8'),
        ('/no/such/folder', 'config.original.checkpoint=/no/such/folder')):
      config.original.checkpoint = folder
      with self.assertRaisesRegex(run_config.ConfigError, message):
        experiment.run(config, self.create_tempdir().full_path)

    config.original.checkpoint = converted(8, 32)
    (record,) = experiment.run(config, self.create_tempdir().full_path)
    self.assertEqual(record['update_steps'], 0)
    self.assertEqual(record['config'],
                     {'checkpoint': config.original.checkpoint})
    self.assertGreater(record['accuracy'], 0)

  def test_command_line_error_exits_non_zero_with_a_message(self):
    result = subprocess.run(
        [sys.executable, 'run_main.py', '--config=configs/quickstart.py',
         '--config.data.dataset=mufac/tidy',
         f'--workdir={self.create_tempdir().full_path}'],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    self.assertEqual(result.returncode, 1)
    self.assertIn("Unknown dataset 'mufac/tidy'", result.stderr)


class PopulationRunTest(absltest.TestCase):

  def test_eight_seeds_score_the_oracle_at_chance(self):
    workdir = self.create_tempdir().full_path
    config = tiny_config(self.create_tempdir().full_path)
    config.methods = 'original,retrain,oracle'
    config.population.size = 8
    # One epoch is enough for two retrainings to be alike.
    for kind in ('original', 'retrain'):
      config[kind].epochs = 1
      config[kind].decay_epochs = ()
    experiment.run(config, workdir)
    with open(os.path.join(workdir, 'results.json')) as f:
      saved = {r['method']: r for r in json.load(f)['records']}
    self.assertNotIn('F', saved['retrain']['evaluation'])
    for name in ('original', 'oracle'):
      evaluation = saved[name]['evaluation']
      for column in ('F', 'F_N', 'final_score', 'lira_accuracy',
                     'lira_accuracy_ci95', 'lira_auc', 'F_ci95', 'F_identity',
                     'lira_accuracy_identity'):
        self.assertIn(column, evaluation, (name, column))
      self.assertEqual(evaluation['F_N'], 8)
      self.assertBetween(evaluation['F'], 0, 1)
      for table, header, lines in (
          ('identities', ['identity', 'images', 'epsilon', 'attack_accuracy'],
           None),
          ('least_forgotten', ['identity', 'images', 'epsilon',
                               'attack_accuracy'], 5),
          ('examples', ['example', 'identity', 'epsilon'], 400)):
        with open(os.path.join(workdir, table, f'{name}.csv')) as f:
          rows = list(csv.reader(f))
        self.assertEqual(rows[0], header)
        if lines:
          self.assertLen(rows, lines + 1)
    # Two retrainings of separate seeds cannot be told apart: the attack on
    # the oracle is at chance, within its bootstrap interval of 0.5.
    oracle = saved['oracle']['evaluation']
    self.assertAlmostEqual(oracle['lira_accuracy'], 0.5, delta=0.05)
    self.assertLess(abs(oracle['lira_accuracy'] - 0.5),
                    2 * oracle['lira_accuracy_ci95'] + 0.01)
    with open(os.path.join(workdir, 'results.md')) as f:
      text = f.read()
    for expected in ('| F (N = 8, oracle ', 'least-forgotten',
                     '- **original**: '):
      self.assertIn(expected, text)
    for plot in ('epsilon_distributions.png', 'accuracy_vs_forget_score.png'):
      with Image.open(os.path.join(workdir, plot)) as image:
        self.assertEqual(image.format, 'PNG')


class KillAndResumeTest(absltest.TestCase):
  """A run killed with SIGKILL and started again ends as an unkilled run."""

  def command(self, data_dir, workdir):
    # One compilation cache for every start: the later ones compile nothing.
    cache = os.path.join(data_dir, 'jax_cache')
    return [sys.executable, 'run_main.py', '--config=configs/quickstart.py',
            f'--config.compilation_cache_dir={cache}',
            # Saved after every epoch, so that each kill point has one.
            '--config.checkpoint_every_s=0',
            '--config.model.name=resnet_tiny', '--config.model.num_filters=0',
            '--config.original.epochs=2', '--config.original.decay_epochs=(1,)',
            '--config.retrain.epochs=6', '--config.retrain.decay_epochs=(3,)',
            '--config.methods=original,retrain,msg',
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

  # Where the run is killed, as the first line printed after that point, and
  # what the next start must print: it resumes there, not from zero.
  KILL_POINTS = (
      # Inside the original's training, once an epoch is saved.
      (r'^epoch 2/2', r'resuming from the checkpoint of epoch [12]'),
      # Inside retraining.
      (r'^epoch 3/6', r'original: reusing the results(.|\n)*resuming from '
       r'the checkpoint of epoch [23]'),
      # Between two methods: retrain's row is written, MSG has begun.
      (r'^retain_gradients: ', r'retrain: reusing the results'),
      # Inside a method, after one of its stages.
      (r'msg epoch 2/\d+: progress saved', r'msg: resuming after stage 4 of'),
      # After the last row: its losses, results.json, the evaluation against
      # retraining and the plots are being written.
      (r'^msg: accuracy', r'msg: (reusing the results|resuming after stage)'),
  )

  def test_killed_anywhere_resumes_to_the_same_results(self):
    data_dir = self.create_tempdir().full_path
    whole = self.create_tempdir().full_path
    # Compiling the programs takes minutes on a loaded 2-core machine.
    subprocess.run(self.command(data_dir, whole), cwd=REPO, check=True,
                   capture_output=True, timeout=1800)

    workdir = self.create_tempdir().full_path
    expected = None
    for kill_at, resumes_from in self.KILL_POINTS + ((None, None),):
      written = [r['method'] for r in self.results(workdir)] if os.path.exists(
          os.path.join(workdir, 'results.json')) else []
      started = subprocess.Popen(self.command(data_dir, workdir), cwd=REPO,
                                 stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
      seen = []
      try:
        for line in started.stdout:
          seen.append(line)
          if kill_at and re.search(kill_at, line):
            started.kill()
            break
      finally:
        started.wait(timeout=1800)
      output = ''.join(seen)
      if kill_at:
        self.assertTrue(any(re.search(kill_at, l) for l in seen), output)
      else:
        self.assertEqual(started.returncode, 0, output)
      if expected:
        self.assertRegex(output, expected)
      # Rows written before this start are reused, never recomputed.
      for name in written:
        self.assertIn(f'{name}: reusing the results', output)
        self.assertNotIn(f'{name}: accuracy', output)
      expected = resumes_from
    self.assertEqual(self.results(workdir), self.results(whole))


class ConfigsTest(absltest.TestCase):

  def test_every_config_names_known_methods(self):
    names = [f[:-3] for f in os.listdir(os.path.join(REPO, 'configs'))
             if f.endswith('.py') and f not in ('__init__.py', 'default.py')]
    for name in names:
      config = importlib.import_module(f'configs.{name}').get_config()
      self.assertTrue(run_config.method_names(config), name)
    self.assertEqual(run_config.method_names(paper.get_config()),
                     list(unlearning.PAPER_TABLE))

  def test_paper_gives_each_one_line_config_it_replaced(self):
    # configs/<family>_<rows>.py[:<task>] was the base config on the
    # family's paper dataset (MUCAC's task from the argument) with these
    # methods.
    replaced = {'original': 'original', 'retrain': 'retrain',
                'finetune': 'original,finetune', 'cf3': 'original,cf_k',
                'neggrad': 'original,neggrad',
                'advanced_neggrad': 'original,advanced_neggrad',
                'unsir': 'original,unsir', 'scrub': 'original,scrub',
                'all': 'all'}
    for rows, methods in replaced.items():
      for family, dataset in (('mufac', 'mufac/paper'),
                              ('mucac', 'mucac/multilabel'),
                              ('mucac/gender', 'mucac/gender'),
                              ('mucac/young', 'mucac/young')):
        expected = default.get_config()
        expected.data.dataset = dataset
        expected.methods = methods
        self.assertEqual(paper.get_config(f'{family},{methods}').to_dict(),
                         expected.to_dict(), f'{family}_{rows}')
    self.assertEqual(mufac_scrub.get_config().to_dict(),
                     paper.get_config('mufac,original,scrub').to_dict())
    self.assertEqual(paper.get_config('mucac').methods, 'all')

  def test_an_unknown_dataset_is_named(self):
    with self.assertRaisesRegex(DataError, "Unknown dataset 'mucac/age'.*"
                                           'mucac/smiling'):
      experiment.run(paper.get_config('mucac/age,original,scrub'),
                     self.create_tempdir().full_path)

  def test_a_method_section_is_made_by_naming_it_not_by_reading(self):
    config = default.get_config()
    self.assertIsNone(config.unlearn.get('scrub'))
    self.assertNotIn('scrub', config.unlearn)
    config.unlearn.scrub.lr = 0.002
    self.assertEqual(config.unlearn.to_dict(), {'scrub': {'lr': 0.002}})
    config.lock()
    with self.assertRaises(AttributeError):
      config.unlearn.finetune  # pylint: disable=pointless-statement


class TableTest(absltest.TestCase):

  def test_published_numbers_sit_beside_ours(self):
    record = {'method': 'scrub', 'accuracy': 0.5, 'top2_accuracy': 0.7,
              'mia': 0.6, 'forgetting_score': 0.1, 'nomus': 0.65,
              'loss_auc': 0.55, 'update_steps': 316, 'wall_seconds': 12.0,
              'published': published.published(
                  datasets.task_of('mufac/paper'), 'scrub')}
    table = results.format_table([record])
    header, _, row = table.splitlines()
    self.assertIn('paper NoMUS', header)
    self.assertTrue(row.endswith('| 0.5984 | 0.8745 | 0.1415 | 0.6576 |'))

if __name__ == '__main__':
  absltest.main()
