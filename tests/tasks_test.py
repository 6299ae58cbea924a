"""Datasets and their tasks: each declared once, looked up by name, refused
when unknown; the tables keyed by task family cover every family."""

import dataclasses
import os

from absl.testing import absltest
from absl.testing import parameterized
from etils import epath
from PIL import Image
import tensorflow_datasets as tfds

from mufax import datasets
from mufax import recipes
from mufax import tasks
from mufax import unlearning
from mufax.data import face_builder
from mufax.data.errors import DataError
from mufax.datasets import mucac
from mufax.unlearning import advanced_neggrad
from mufax.unlearning import core
from mufax.unlearning import neggrad
from mufax.unlearning import scrub

TOY_TASK = tasks.Task(name='toy', family='binary', loss_kind='softmax',
                      label_names=('no', 'yes'))


class TasksTestToyFaces(face_builder.FaceDatasetBuilder):
  """A dataset of its own, declared in this one place and nowhere else."""

  VERSION = tfds.core.Version('1.0.0')
  # Where TFDS looks for README/CITATIONS; the default is this module's file.
  pkg_dir_path = epath.Path(os.path.dirname(os.path.abspath(__file__)))
  BUILDER_CONFIGS = [face_builder.FaceConfig(name='plain', task=TOY_TASK)]

  def _image_size(self):
    return 4

  def _forget_retain_disjoint(self):
    return True

  def _read_index(self, dl_manager):
    del dl_manager
    index = {split: [face_builder.FaceRecord(f'{split}.png', split, 1, split)]
             for split in ('forget', 'retain', 'test', 'unseen')}
    index['train'] = index['forget'] + index['retain']
    return index

  def _image(self, record):
    return Image.new('RGB', (4, 4))


class TaskOfTest(parameterized.TestCase):

  @parameterized.parameters(
      ('mufac/paper', 'age', 'mufac', 'softmax', 8, 'mufac'),
      ('mufac/clean', 'age', 'mufac', 'softmax', 8, 'mufac'),
      ('mufac', 'age', 'mufac', 'softmax', 8, 'mufac'),
      # The stand-in trains and unlearns as MUFAC, but has no published table.
      ('synthetic_faces/small', 'age', 'mufac', 'softmax', 8, None),
      ('synthetic_faces/large', 'age', 'mufac', 'softmax', 8, None),
      ('mucac/multilabel', 'multilabel', 'multilabel', 'sigmoid', 3, 'mucac'),
      # A bare name is the builder's default config, as tfds.builder reads it.
      ('mucac', 'multilabel', 'multilabel', 'sigmoid', 3, 'mucac'),
      ('mucac/gender', 'gender', 'binary', 'softmax', 2, 'mucac'),
      ('mucac/smiling', 'smiling', 'binary', 'softmax', 2, 'mucac'),
      ('mucac/young', 'young', 'binary', 'softmax', 2, 'mucac'),
  )
  def test_task(self, dataset, name, family, loss, num_outputs, benchmark):
    task = datasets.task_of(dataset)
    self.assertEqual(
        (task.name, task.family, task.loss_kind, task.num_outputs,
         task.benchmark),
        (name, family, loss, num_outputs, benchmark))

  def test_label_names(self):
    self.assertEqual(datasets.task_of('mucac/multilabel').label_names,
                     ('gender', 'smiling', 'young'))
    self.assertEqual(datasets.task_of('mucac/young').label_names,
                     ('not_young', 'young'))
    self.assertEqual(datasets.task_of('mufac/paper').label_names[0], '0-6')

  @parameterized.parameters('mucac/age', 'mucac/male', 'celeba/young', '',
                            'MUFAC/paper', 'mufac/paper/1.0.0')
  def test_unknown_dataset_is_refused_in_one_line(self, dataset):
    with self.assertRaisesRegex(
        DataError, f"^Unknown dataset {dataset!r}; choose one of .*"
        'mucac/smiling.*synthetic_faces/small') as caught:
      datasets.task_of(dataset)
    self.assertNotIn('\n', str(caught.exception))

  def test_task_is_frozen(self):
    with self.assertRaises(AttributeError):
      datasets.task_of('mufac/paper').name = 'gender'

  def test_each_mucac_config_is_named_after_its_task(self):
    for config in mucac.Mucac.BUILDER_CONFIGS:
      with self.subTest(config.name):
        self.assertEqual(config.task.name, config.name)

  def test_every_builder_writes_the_label_of_its_task(self):
    data_dir = self.create_tempdir().full_path
    for dataset in datasets.dataset_names():
      with self.subTest(dataset):
        task = datasets.task_of(dataset)
        label = tfds.builder(dataset, data_dir=data_dir).info.features['label']
        if task.loss_kind == 'softmax':
          self.assertEqual(tuple(label.names), task.label_names)
        else:
          self.assertEqual(label.shape, (task.num_outputs,))


class DeclaredOnceTest(absltest.TestCase):

  def test_a_new_builder_is_a_dataset_with_its_task(self):
    self.assertIn('tasks_test_toy_faces/plain', datasets.dataset_names())
    self.assertIs(datasets.task_of('tasks_test_toy_faces/plain'), TOY_TASK)
    self.assertIs(datasets.task_of('tasks_test_toy_faces'), TOY_TASK)

  def test_a_new_dataset_builds_and_reads_by_name(self):
    data_dir = self.create_tempdir().full_path
    TasksTestToyFaces(data_dir=data_dir,
                      file_format='array_record').download_and_prepare()
    source = tfds.data_source('tasks_test_toy_faces/plain', split='forget',
                              data_dir=data_dir)
    self.assertEqual(source.dataset_info.features['label'].names,
                     ['no', 'yes'])
    self.assertEqual(source[0]['label'], 1)


class TaskTest(absltest.TestCase):

  def test_unknown_family_or_loss_is_refused(self):
    with self.assertRaisesRegex(
        ValueError, "Task 'toy': unknown family 'celeba'; choose one of "
        'mufac, multilabel, binary.'):
      tasks.Task(name='toy', family='celeba', loss_kind='softmax',
                 label_names=('no', 'yes'))
    with self.assertRaisesRegex(ValueError, "unknown loss_kind 'hinge'"):
      tasks.Task(name='toy', family='binary', loss_kind='hinge',
                 label_names=('no', 'yes'))

  def test_a_value_missing_for_the_family_is_refused(self):
    self.assertEqual(TOY_TASK.per_family({'binary': 1, 'mufac': 2}), 1)
    with self.assertRaisesRegex(
        ValueError, r"^Task 'toy' is of family 'binary', which has no value "
        r'here \(only mufac, multilabel have\)\.$'):
      TOY_TASK.per_family({'mufac': 2, 'multilabel': 3})

  def test_every_table_keyed_by_family_has_every_family(self):
    tables = {'recipes': recipes.RECIPES,
              'bn_train': core.REFERENCE_EVAL_MODE,
              'neggrad': neggrad.FORGET_LOOP,
              'advanced_neggrad': advanced_neggrad.RETAIN_DRIVEN,
              'scrub': scrub.FORGET_PASS}
    for name, method in unlearning.METHODS.items():
      for field in dataclasses.fields(method.Hparams):
        if field.metadata.get('per_task'):
          tables[f'{name}.{field.name}'] = field.metadata['per_task']
    for name, table in tables.items():
      with self.subTest(name):
        self.assertCountEqual(table, tasks.FAMILIES)


if __name__ == '__main__':
  absltest.main()
