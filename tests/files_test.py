"""Result files are replaced whole or not at all."""

import os
import signal
import subprocess
import sys

from absl.testing import absltest

from mufax import files


class ReplacedAtomicallyTest(absltest.TestCase):

  def test_writes_and_replaces(self):
    folder = self.create_tempdir().full_path
    path = os.path.join(folder, 'new', 'results.json')
    with files.replaced_atomically(path) as f:
      f.write('{"rows": 1}')
    with files.replaced_atomically(path) as f:
      f.write('{"rows": 2}')
    with open(path) as f:
      self.assertEqual(f.read(), '{"rows": 2}')
    self.assertEqual(os.listdir(os.path.dirname(path)), ['results.json'])
    umask = os.umask(0)
    os.umask(umask)
    self.assertEqual(os.stat(path).st_mode & 0o777, 0o666 & ~umask)

  def test_a_writer_that_fails_leaves_the_old_file(self):
    folder = self.create_tempdir().full_path
    path = os.path.join(folder, 'results.json')
    with files.replaced_atomically(path) as f:
      f.write('whole')
    with self.assertRaisesRegex(RuntimeError, 'killed'):
      with files.replaced_atomically(path) as f:
        f.write('half')
        raise RuntimeError('killed while writing')
    with open(path) as f:
      self.assertEqual(f.read(), 'whole')
    self.assertEqual(os.listdir(folder), ['results.json'])



class ExclusiveTest(absltest.TestCase):

  def test_a_second_run_is_refused_naming_the_first(self):
    workdir = self.create_tempdir().full_path
    with files.exclusive(workdir):
      with self.assertRaisesRegex(files.WorkdirInUse,
                                  f'in use by another run \\(process '
                                  f'{os.getpid()}\\)'):
        with files.exclusive(workdir):
          pass
    with files.exclusive(workdir):  # free again once the first has ended
      pass

  def test_a_killed_run_leaves_the_workdir_free(self):
    workdir = self.create_tempdir().full_path
    holder = subprocess.Popen(
        [sys.executable, '-c',
         'import sys, time; from mufax import files\n'
         f'with files.exclusive({workdir!r}):\n'
         '  print("held", flush=True); time.sleep(600)'],
        stdout=subprocess.PIPE, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
      self.assertEqual(holder.stdout.readline().strip(), 'held')
      with self.assertRaisesRegex(files.WorkdirInUse, str(holder.pid)):
        with files.exclusive(workdir):
          pass
    finally:
      holder.send_signal(signal.SIGKILL)
      holder.wait()
    with files.exclusive(workdir):
      pass

if __name__ == '__main__':
  absltest.main()
