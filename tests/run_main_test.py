"""run_main.py's command line: only its own flags and the config's."""

import os
import subprocess
import sys

from absl.testing import absltest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CommandLineTest(absltest.TestCase):

  def test_a_flag_of_another_command_is_refused(self):
    # --manual_dir belongs to `python -m mufax.data.prepare`; run_main.py takes
    # it as --config.data.manual_dir. An unknown methods value makes the run
    # stop at once should the flag ever be accepted again.
    # --torch_checkpoint is `python -m mufax.convert`'s, a module the runner
    # imports.
    for flag in ('manual_dir', 'torch_checkpoint'):
      result = self.run_main(f'--{flag}=/nonexistent',
                             '--config.methods=none_such')
      self.assertNotEqual(result.returncode, 0)
      self.assertIn(f"Unknown command line flag '{flag}'", result.stderr)

  def run_main(self, *overrides, config='configs/quickstart.py'):
    return subprocess.run(
        [sys.executable, 'run_main.py', f'--config={config}', *overrides,
         f'--workdir={self.create_tempdir().full_path}'],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)

  def test_a_misspelt_field_is_refused_in_one_line(self):
    for override, line in (
        ('--config.data.imag_size=64', 'error: config.data.imag_size: no '
         'such field in configs/default.py; did you mean '
         'config.data.image_size?'),
        ('--config.sed=1', 'error: config.sed: no such field in '
         'configs/default.py; did you mean config.seed?'),
        ('--config.unlearn.scrb.lr=0.1', "error: config.unlearn.scrb: no "
         "method 'scrb' is registered; the methods with hyperparameters are "
         'finetune, ')):
      result = self.run_main(override)
      self.assertEqual(result.returncode, 1, result.stderr)
      self.assertTrue(result.stderr.startswith(line), result.stderr)
      self.assertEqual(result.stderr.count('\n'), 1, result.stderr)

  def test_a_method_hyperparameter_reaches_the_run(self):
    # The documented command's form; the run refuses epochs=0 once its
    # value reached SCRUB's own Hparams, before anything is prepared.
    result = self.run_main('--config.unlearn.scrub.lr=0.002',
                           '--config.unlearn.scrub.epochs=0',
                           config='configs/mufac_scrub.py')
    self.assertEqual(result.returncode, 1, result.stderr)
    self.assertEqual(result.stderr, 'error: config.unlearn.scrub.epochs=0: '
                     'must be at least 1.\n')


if __name__ == '__main__':
  absltest.main()
