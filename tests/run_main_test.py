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
      result = subprocess.run(
          [sys.executable, 'run_main.py', '--config=configs/quickstart.py',
           f'--{flag}=/nonexistent', '--config.methods=none_such',
           f'--workdir={self.create_tempdir().full_path}'],
          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
      self.assertNotEqual(result.returncode, 0)
      self.assertIn(f"Unknown command line flag '{flag}'", result.stderr)


if __name__ == '__main__':
  absltest.main()
