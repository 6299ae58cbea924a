"""Result files are replaced whole or not at all."""

import os

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


if __name__ == '__main__':
  absltest.main()
