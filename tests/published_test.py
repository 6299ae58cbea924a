"""The published protocol §7 tables: lookups and their internal consistency."""

from __future__ import annotations

from absl.testing import absltest
from absl.testing import parameterized

from mufax import datasets
from mufax import published


def published_on(dataset, method):
  return published.published(datasets.task_of(dataset), method)


TABLES = ('mufac/paper', 'mucac/multilabel', 'mucac/gender', 'mucac/smiling',
          'mucac/young')
ROWS = [
    dict(testcase_name=f'{dataset.replace("/", "_")}_{method}',
         dataset=dataset, method=method)
    for dataset in TABLES for method in published.METHODS
]


class ConsistencyTest(parameterized.TestCase):

  @parameterized.named_parameters(*ROWS)
  def test_nomus_agrees_with_accuracy_and_forgetting(self, dataset, method):
    row = published_on(dataset, method)
    recomputed = (0.5 * row['accuracy'] +
                  0.5 * (1.0 - 2.0 * row['forgetting_score']))
    # Each number is rounded to 4 digits: accuracy and forgetting move the
    # recomputed NoMUS by up to 0.5·5e-5 + 0.5·2·5e-5 = 7.5e-5, the printed
    # NoMUS is off by up to 5e-5. Every row of §7 lands within that, so a
    # mistyped digit anywhere in a row shows up here.
    self.assertLessEqual(abs(recomputed - row['nomus']), 1.25e-4 + 1e-12)

  @parameterized.named_parameters(*ROWS)
  def test_values_in_range(self, dataset, method):
    row = published_on(dataset, method)
    self.assertBetween(row['accuracy'], 0.0, 1.0)
    self.assertBetween(row['forgetting_score'], 0.0, 0.5)
    self.assertBetween(row['nomus'], 0.0, 1.0)
    if 'top2_accuracy' in row:
      self.assertBetween(row['top2_accuracy'], row['accuracy'], 1.0)

  def test_no_two_rows_of_a_table_are_the_same(self):
    # Catches a row pasted twice. (Single cells do repeat in §7: gender
    # NegGrad and SCRUB both have accuracy .1762, smiling both .5549.)
    for dataset in TABLES:
      rows = [tuple(published_on(dataset, m).values())
              for m in published.METHODS]
      self.assertLen(set(rows), len(rows), dataset)


class LookupTest(parameterized.TestCase):

  def test_mufac(self):
    self.assertEqual(
        published_on('mufac/paper', 'original'),
        dict(accuracy=0.5951, top2_accuracy=0.8804, forgetting_score=0.2136,
             nomus=0.5839))
    self.assertEqual(
        published_on('mufac/paper', 'advanced_neggrad'),
        dict(accuracy=0.5633, top2_accuracy=0.8557, forgetting_score=0.0953,
             nomus=0.6863))

  def test_every_mufac_config_has_the_one_table(self):
    for method in published.METHODS:
      for dataset in ('mufac/clean', 'mufac'):
        self.assertEqual(published_on(dataset, method),
                         published_on('mufac/paper', method))

  def test_bare_mucac_is_its_default_multilabel_config(self):
    self.assertEqual(published_on('mucac', 'scrub'),
                     published_on('mucac/multilabel', 'scrub'))

  def test_mucac_multilabel(self):
    self.assertEqual(published_on('mucac/multilabel', 'scrub'),
                     dict(accuracy=0.9073, forgetting_score=0.0478,
                          nomus=0.9058))
    self.assertEqual(published_on('mucac/multilabel', 'retrain'),
                     dict(accuracy=0.8135, forgetting_score=0.0436,
                          nomus=0.8631))

  @parameterized.parameters(
      # §7 prints these tables transposed (one line per metric); cells from
      # several columns check that methods and metrics were not swapped.
      ('gender', 'unsir_stage1', 0.9481, 0.0638, 0.9102),
      ('smiling', 'scrub', 0.5549, 0.4680, 0.3094),
      ('smiling', 'retrain', 0.6518, 0.0182, 0.8077),
      ('young', 'advanced_neggrad', 0.5573, 0.0139, 0.7647),
      ('young', 'neggrad', 0.1733, 0.0513, 0.5353),
  )
  def test_mucac_binary(self, attribute, method, acc, forgetting, nomus):
    self.assertEqual(published_on(f'mucac/{attribute}', method),
                     dict(accuracy=acc, forgetting_score=forgetting,
                          nomus=nomus))

  def test_returns_a_copy(self):
    row = published_on('mucac/gender', 'original')
    row['accuracy'] = 0.0
    self.assertEqual(published_on('mucac/gender', 'original')
                     ['accuracy'], 0.9835)

  @parameterized.parameters(
      ('synthetic_faces/small', 'original'),
      ('synthetic_faces/large', 'scrub'),
      ('mufac/paper', 'cf2'),
      ('mucac/young', 'unknown'),
      ('mufac/paper', 'Original'),
  )
  def test_none(self, dataset, method):
    self.assertIsNone(published_on(dataset, method))

  def test_every_task_of_a_benchmark_has_its_table(self):
    for dataset in datasets.dataset_names():
      with self.subTest(dataset):
        has_table = published_on(dataset, 'original') is not None
        self.assertEqual(has_table,
                         datasets.task_of(dataset).benchmark is not None)

  def test_source(self):
    self.assertIn('Choi & Na', published.SOURCE)
    self.assertIn('§7', published.SOURCE)
    self.assertIn('0.5', published.SOURCE)


if __name__ == '__main__':
  absltest.main()
