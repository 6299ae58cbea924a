"""docs/protocol.md's hyperparameter table is what the methods declare."""

import dataclasses
import os

from absl.testing import absltest

from mufax import datasets
from mufax import hparams_table
from mufax import unlearning
from mufax.unlearning import hparams

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class _Hparams(hparams.SGDHparams):
  lr: float | None = hparams.hparam(None, source='a test', positive=True,
                                 per_task={'mufac': 0.1, 'binary': 0.2})
  mode: str = hparams.hparam('a', source='a test', choices=('a', 'b'))


class _Method:
  Hparams = _Hparams


class HparamsTableTest(absltest.TestCase):

  def test_the_document_holds_the_table_the_methods_make(self):
    with open(os.path.join(REPO, 'docs', 'protocol.md')) as f:
      text = f.read()
    self.assertEqual(
        text, hparams_table.replace_table(
            text, hparams_table.markdown(unlearning.METHODS)),
        'docs/protocol.md §5.2 is out of date: run python -m '
        'mufax.hparams_table docs/protocol.md')

  def test_rows_say_default_allowed_values_and_source(self):
    table = hparams_table.markdown({'mine': _Method()})
    self.assertIn('| `mine` | `batch_size` | `64` | ≥ 1 |', table)
    self.assertIn('| `mine` | `lr` | mufac: `0.1`; binary: `0.2` | > 0 | '
                  'a test |', table)
    self.assertIn('| `mine` | `mode` | `a` | one of `a`, `b` | a test |',
                  table)
    # A changed default changes the table.
    changed = dataclasses.make_dataclass(
        'Changed', [('mode', str, hparams.hparam('b', source='a test'))],
        bases=(hparams.SGDHparams,), frozen=True)
    self.assertNotEqual(
        table, hparams_table.markdown({'mine': type('M', (), {
            'Hparams': changed})()}))

  def test_per_task_defaults_fill_only_what_is_unset(self):
    binary = datasets.task_of('mucac/gender')
    self.assertEqual(_Hparams().for_task(binary).lr, 0.2)
    self.assertEqual(_Hparams(lr=0.5).for_task(binary).lr, 0.5)
    self.assertEqual(unlearning.METHODS['scrub'].Hparams().for_task(
        binary).epochs, 1)

  def test_a_family_without_a_value_is_refused(self):
    with self.assertRaisesRegex(
        ValueError, "'multilabel' is of family 'multilabel', which has no "
        r'value here \(only mufac, binary have\)'):
      _Hparams().for_task(datasets.task_of('mucac/multilabel'))

  def test_a_document_without_the_markers_is_named(self):
    with self.assertRaisesRegex(ValueError, 'notes.md has no'):
      hparams_table.replace_table('no table', '| |', 'notes.md')


if __name__ == '__main__':
  absltest.main()
