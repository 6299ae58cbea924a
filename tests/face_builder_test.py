"""The split rules every builder's index must obey."""

from absl.testing import absltest

from mufax.data import face_builder
from mufax.data.errors import DataError


def record(file_name, identity, origin=None):
  return face_builder.FaceRecord(file_name, identity, 0,
                                 origin or f'list line {file_name}')


def index(**splits):
  full = {'forget': [record('1', 'A')], 'retain': [record('2', 'B')],
          'test': [record('3', 'C')], 'unseen': [record('4', 'D')]}
  full.update(splits)
  full.setdefault('train', full['forget'] + full['retain'])
  return full


class CheckIndexTest(absltest.TestCase):

  def test_valid_index_passes(self):
    face_builder.check_index(index(), forget_retain_disjoint=True)

  def test_person_in_forget_and_retain(self):
    shared = index(retain=[record('2', 'A', 'train.csv line 3')])
    face_builder.check_index(shared, forget_retain_disjoint=False)
    with self.assertRaisesRegex(
        DataError, r"'A'.*'forget' \(list line 1\).*'retain' \(train.csv line 3\)"):
      face_builder.check_index(shared, forget_retain_disjoint=True)

  def test_person_in_test_and_unseen(self):
    with self.assertRaisesRegex(DataError, "'C'.*'test'.*'unseen'"):
      face_builder.check_index(index(unseen=[record('4', 'C')]),
                               forget_retain_disjoint=False)

  def test_train_must_be_forget_plus_retain(self):
    with self.assertRaisesRegex(DataError, 'forget \\+ retain'):
      face_builder.check_index(index(train=[record('1', 'A')]),
                               forget_retain_disjoint=False)

  def test_missing_split(self):
    broken = index()
    del broken['unseen']
    with self.assertRaisesRegex(DataError, 'unseen'):
      face_builder.check_index(broken, forget_retain_disjoint=False)


if __name__ == '__main__':
  absltest.main()
