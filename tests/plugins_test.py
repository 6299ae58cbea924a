"""A method of one's own: a file named in config.plugins, run as a row."""

import os
import subprocess
import sys

import numpy as np
from absl.testing import absltest

import experiment_test

from mufax import evaluators
from mufax import experiment
from mufax import plugins
from mufax import run_config
from mufax import unlearning

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, 'examples', 'uniform_forget.py')


def registries_restorer():
  """A function that unregisters every method and evaluator registered, and
  forgets every plugin module loaded, after this call: so that a plugin a
  test loads is not seen by the tests after it, in whatever order they
  run."""
  registries = (unlearning.METHODS, evaluators.EVALUATORS)
  before = [set(r) for r in registries] + [set(sys.modules)]

  def restore():
    for registry, names in zip(registries, before):
      for name in set(registry) - names:
        del registry[name]
    for name in set(sys.modules) - before[-1]:
      if name.startswith('mufax_plugin_'):
        del sys.modules[name]

  return restore


class PluginTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.addCleanup(registries_restorer())

  def test_the_example_runs_as_a_row(self):
    config = experiment_test.tiny_config(self.create_tempdir().full_path)
    config.plugins = EXAMPLE
    plugins.load(config.plugins)
    # Loading it again (a second run's) is a no-op.
    plugins.load(config.plugins)
    config.unlearn.uniform_forget.weight = 2
    config.methods = 'original,uniform_forget'
    workdir = self.create_tempdir().full_path
    records = experiment.run(config, workdir)
    self.assertEqual([r['method'] for r in records],
                     ['original', 'uniform_forget'])
    row = records[1]
    self.assertEqual(row['config']['weight'], 2.0)
    # 600 retain and 400 forget images, zipped full batches of 64: 6 steps
    # an epoch, 2 epochs.
    self.assertEqual(row['update_steps'], 12)
    # The row's model is not the original's.
    forget = [np.load(os.path.join(workdir, 'losses', f'{r}.npz'))['forget']
              for r in ('original', 'uniform_forget')]
    self.assertGreater(np.abs(forget[0] - forget[1]).max(), 1e-3)
    extended = config.copy_and_resolve_references()
    extended.methods = 'extended'
    self.assertIn('uniform_forget', run_config.method_names(extended))

  def test_a_loaded_plugin_is_gone_after_its_test(self):
    restore = registries_restorer()
    plugins.load(EXAMPLE)
    self.assertIn('uniform_forget', unlearning.METHODS)
    restore()
    self.assertNotIn('uniform_forget', unlearning.METHODS)
    # Loaded again, it registers again rather than finding its module.
    plugins.load(EXAMPLE)
    self.assertIn('uniform_forget', unlearning.METHODS)

  def test_the_docs_show_the_example_whole(self):
    methods_md = os.path.join(REPO, 'docs', 'methods.md')
    with open(EXAMPLE) as f, open(methods_md) as doc:
      self.assertIn(f.read(), doc.read())

  def test_command_line_sets_a_plugin_hyperparameter(self):
    # The value reaches the plugin's own Hparams, loaded when the run
    # starts, which refuse it (the command line gives an int: -1).
    result = subprocess.run(
        [sys.executable, 'run_main.py', '--config=configs/quickstart.py',
         f'--config.plugins={EXAMPLE}',
         '--config.methods=original,uniform_forget',
         '--config.unlearn.uniform_forget.weight=-1',
         f'--workdir={self.create_tempdir().full_path}'],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    self.assertEqual(result.returncode, 1, result.stderr)
    self.assertIn('error: config.unlearn.uniform_forget.weight=-1.0: must be '
                  'at least 0.', result.stderr)

  def test_a_row_named_twice_is_refused_before_anything_trains(self):

    @unlearning.register('twice')
    class Twice(unlearning.SGDMethod):  # pylint: disable=unused-variable
      """Both stages given the method's name, as a plugin author might."""

      def stages(self, ctx):
        plan = unlearning.step_plan('retain', unlearning.passes(
            'retain', ctx.size('retain'), 64, epochs=1, seed=ctx.seed))
        return [unlearning.Stage(self.name, plan,
                                 {'retain': unlearning.RETAIN_LOSS}, 0.01,
                                 bn_train=True, epochs=1)] * 2

    config = experiment_test.tiny_config(self.create_tempdir().full_path)
    config.methods = 'original,twice'
    workdir = self.create_tempdir().full_path
    with self.assertRaises(run_config.ConfigError) as refused:
      experiment.run(config, workdir)
    self.assertEqual(
        str(refused.exception),
        "config.methods: twice: row 'twice' is also written by another of "
        'its stages; give each stage that reports a row a name of its own.')
    # Refused before the original trained: no checkpoint, no results.
    self.assertFalse(os.path.exists(os.path.join(workdir, 'results.json')))
    self.assertFalse(os.path.exists(os.path.join(workdir, 'checkpoints')))

  def test_a_missing_plugin_is_named(self):
    config = experiment_test.tiny_config(self.create_tempdir().full_path)
    config.plugins = 'no/such_method.py'
    with self.assertRaisesRegex(run_config.ConfigError,
                                "no file 'no/such_method.py'"):
      experiment.run(config, self.create_tempdir().full_path)
    config.plugins = 'no_such_module'
    with self.assertRaisesRegex(run_config.ConfigError,
                                "cannot import 'no_such_module'"):
      experiment.run(config, self.create_tempdir().full_path)


if __name__ == '__main__':
  absltest.main()
