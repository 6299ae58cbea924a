"""The dataset -> task mapping, and its agreement with recipes and builders."""

from absl.testing import absltest
from absl.testing import parameterized

from datasets_builders.mucac import mucac_dataset_builder as mucac
from mufax import recipes
from mufax import tasks
from mufax.data import prepare
from mufax.data.errors import DataError


class TaskOfTest(parameterized.TestCase):

  @parameterized.parameters(
      ('mufac/paper', 'age', 'mufac', 'mufac'),
      ('mufac/clean', 'age', 'mufac', 'mufac'),
      ('mufac', 'age', 'mufac', 'mufac'),
      # The stand-in trains and unlearns as MUFAC, but has no published table.
      ('synthetic_faces/small', 'age', 'mufac', None),
      ('synthetic_faces/large', 'age', 'mufac', None),
      ('mucac/multilabel', 'multilabel', 'multilabel', 'mucac'),
      # A bare name is the builder's default config, as tfds.builder reads it.
      ('mucac', 'multilabel', 'multilabel', 'mucac'),
      ('mucac/gender', 'gender', 'binary', 'mucac'),
      ('mucac/smiling', 'smiling', 'binary', 'mucac'),
      ('mucac/young', 'young', 'binary', 'mucac'),
  )
  def test_task(self, dataset, name, family, benchmark):
    self.assertEqual(tasks.task_of(dataset),
                     tasks.Task(name=name, family=family, benchmark=benchmark))

  @parameterized.parameters('mucac/age', 'mucac/male', 'celeba/young', '',
                            'MUFAC/paper')
  def test_unknown_dataset(self, dataset):
    with self.assertRaisesRegex(
        DataError, f"Unknown dataset {dataset!r}.*mucac/smiling"):
      tasks.task_of(dataset)

  def test_task_is_frozen(self):
    with self.assertRaises(AttributeError):
      tasks.task_of('mufac/paper').name = 'gender'

  def test_every_built_dataset_has_a_task_with_a_recipe(self):
    for dataset in prepare.dataset_names():
      with self.subTest(dataset):
        family = tasks.task_of(dataset).family
        self.assertEqual(set(recipes.RECIPES[family]), {'original', 'retrain'})

  def test_mucac_builder_configs_are_the_mucac_tasks(self):
    # Each MUCAC config is named after its task, so the task of `mucac/<c>`
    # is what the builder labels.
    for config in mucac.Mucac.BUILDER_CONFIGS:
      with self.subTest(config.name):
        self.assertEqual(tasks.task_of(f'mucac/{config.name}').name,
                         config.task)


if __name__ == '__main__':
  absltest.main()
