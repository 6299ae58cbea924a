"""Deletion requests one after another: disjoint, reproducible requests,
references that never saw a requested person, earlier requests evaluated on
their own, and one request equal to the ordinary table."""

import json
import os
from unittest import mock

import numpy as np
from absl.testing import absltest

import experiment_test

from mufax import deletion_requests
from mufax import experiment
from mufax import run_config
from mufax import train


def split(identities, rng):
  return {'identity': identities, 'label': rng.integers(0, 8, len(identities)),
          'image': rng.integers(0, 256, (len(identities), 2, 2, 3))}


def fake_data(seed=0):
  rng = np.random.default_rng(seed)
  people = lambda a, b: np.repeat(np.arange(a, b), rng.integers(1, 6, b - a))
  forget, retain = people(0, 10), people(10, 70)
  data = {'forget': split(forget, rng), 'retain': split(retain, rng),
          'test': split(people(100, 110), rng),
          'unseen': split(people(200, 210), rng)}
  data['train'] = {k: np.concatenate([data['forget'][k], data['retain'][k]])
                   for k in data['forget']}
  return data


class DrawTest(absltest.TestCase):

  def test_requests_are_disjoint_sized_and_reproducible(self):
    data = fake_data()
    for first in deletion_requests.FIRST:
      people = deletion_requests.draw_requests(
          data, count=4, people=7, seed=3, first=first, excluded=[11, 12])
      self.assertLen(people, 4)
      every = np.concatenate(people)
      self.assertLen(np.unique(every), len(every))
      self.assertEmpty(np.intersect1d(every, [11, 12]))
      for request in people[first == 'forget':]:
        self.assertLen(request, 7)
      again = deletion_requests.draw_requests(
          data, count=4, people=7, seed=3, first=first, excluded=[11, 12])
      for a, b in zip(people, again):
        np.testing.assert_array_equal(a, b)
      other = deletion_requests.draw_requests(
          data, count=4, people=7, seed=4, first=first, excluded=[11, 12])
      self.assertFalse(all(np.array_equal(a, b)
                           for a, b in zip(people, other)))
    forget_first = deletion_requests.draw_requests(
        data, count=2, people=7, seed=3, first='forget')
    np.testing.assert_array_equal(forget_first[0], np.arange(10))
    with self.assertRaisesRegex(ValueError, 'requests of 7 people need 63'):
      deletion_requests.draw_requests(data, count=10, people=7, seed=0,
                                      first='forget')

  def test_each_retain_lacks_every_requested_person_so_far(self):
    data = fake_data()
    for first in deletion_requests.FIRST:
      people = deletion_requests.draw_requests(
          data, count=3, people=5, seed=0, first=first)
      splits = deletion_requests.request_splits(data, people, first)
      sizes = set()
      for r, s in enumerate(splits):
        self.assertEmpty(np.intersect1d(s['retain']['identity'],
                                        np.concatenate(people[:r + 1])))
        np.testing.assert_array_equal(np.unique(s['forget']['identity']),
                                      people[r])
        if r:
          np.testing.assert_array_equal(
              np.unique(s['earlier']['identity']),
              np.sort(np.concatenate(people[:r])))
        # The same number of images in all: the engines share programs.
        sizes.add(sum(len(v['label']) for v in s.values()))
      self.assertLen(sizes, 1)
      batch = deletion_requests.batch_splits(splits[-1])
      np.testing.assert_array_equal(np.unique(batch['forget']['identity']),
                                    np.sort(np.concatenate(people)))
    # Request 1 of the forget set is the stored split, as the table's.
    first = deletion_requests.request_splits(data, people, 'forget')[0]
    self.assertIs(first['retain'], data['retain'])

  def test_break_even(self):
    self.assertEqual(deletion_requests.break_even([0.3, 0.6, 0.9]),
                     {'request': None, 'projected': 4})
    self.assertEqual(deletion_requests.break_even([0.5, 1.0]),
                     {'request': 2, 'projected': 2})


class Killed(Exception):
  """A kill, as the run sees it."""


class RequestsRunTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    # Several engines in one process, as a sweep's.
    experiment_test.on_one_device(self)
    self.data_dir = self.create_tempdir().full_path

  def config(self):
    config = experiment_test.tiny_config(self.data_dir)
    config.population.size = 2
    config.unlearn.finetune.epochs = 1
    config.requests.methods = 'finetune'
    return config

  def read(self, workdir, name='requests/requests.json'):
    with open(os.path.join(workdir, name)) as f:
      return json.load(f)

  def test_one_request_equals_the_tables_row(self):
    config = self.config()
    config.methods = 'original,finetune'
    config.requests.count = 1
    workdir = self.create_tempdir().full_path
    experiment.run(config, workdir)
    row = {r['method']: r for r in self.read(workdir, 'results.json')[
        'records']}['finetune']
    state = self.read(workdir)
    entry = state['methods']['finetune']
    for served in (entry['sequential'][0], entry['batch']):
      for key in ('accuracy', 'retain_accuracy', 'mia', 'nomus'):
        self.assertEqual(served[key], row[key], key)
      self.assertEqual(served['moved_from_original'],
                       row['moved_from_original'])
      self.assertEqual(served['update_steps'], row['update_steps'])
    self.assertIn('## Deletion requests', open(
        os.path.join(workdir, 'results.md')).read())

  def test_references_never_saw_a_requested_person_and_a_noop_stays(self):
    config = self.config()
    # 3 seeds: the fewest for which F has a bucket to earn.
    config.population.size = 3
    config.methods = 'original'
    config.requests.count = 3
    config.requests.people = 8
    config.requests.first = 'drawn'
    # A method that does nothing (a learning rate must be > 0; this one
    # changes no parameter, as the test checks): every request stays as the
    # original left it.
    config.unlearn.finetune.lr = 1e-30
    workdir = self.create_tempdir().full_path
    seen = []
    from_scratch = train.from_scratch

    def recorded(kind, config, *, task, engine, workdir):
      seen.append(np.unique(engine.splits['retain']['identity']))
      return from_scratch(kind, config, task=task, engine=engine,
                          workdir=workdir)

    with mock.patch.object(train, 'from_scratch', recorded):
      experiment.run(config, workdir)
    state = self.read(workdir)
    people = [np.asarray(r['people']) for r in state['requests']]
    retrained = seen[1:]  # the first trained the original
    self.assertLen(retrained, 3)
    for r, retain in enumerate(retrained):
      self.assertEmpty(np.intersect1d(retain, np.concatenate(people[:r + 1])))
    sequence = state['methods']['finetune']['sequential']
    for r, (served, original) in enumerate(zip(sequence, state['original'])):
      self.assertEqual(served['moved_from_original']['changed_fraction'], 0)
      self.assertEqual(served['F'], original['F'])
      self.assertLen(served['earlier'], r)
      for mine, theirs in zip(served['earlier'], original['earlier']):
        self.assertEqual(mine['F'], theirs['F'])
        self.assertEqual(mine['attack'], theirs['attack'])
    # Earlier requests are read on their own people, not copied from the
    # newest.
    last = sequence[-1]
    self.assertNotEqual([e['attack'] for e in last['earlier']],
                        [last['attack']] * 2)
    self.assertTrue(any(e['F'] > 0 for s in sequence for e in s['earlier']))
    self.assertEqual(sequence[-1]['cumulative_cost'],
                     sum(s['cost'] for s in sequence))

  def test_a_run_killed_between_requests_resumes_after_the_last(self):
    config = self.config()
    config.methods = 'original'
    config.requests.count = 2
    config.requests.people = 8
    config.requests.first = 'drawn'
    whole = self.create_tempdir().full_path
    experiment.run(config, whole)
    killed = self.create_tempdir().full_path
    unlearn = experiment.deletion_requests.Requests._unlearn
    calls, resumed = [], False

    def dies_at_the_second(self, name, engine, progress, variables):
      calls.append(progress)
      if len(calls) == 2 and not resumed:
        raise Killed
      return unlearn(self, name, engine, progress, variables)

    with mock.patch.object(deletion_requests.Requests, '_unlearn',
                           dies_at_the_second):
      with self.assertRaises(Killed):
        experiment.run(config, killed)
    calls.clear()
    resumed = True
    with mock.patch.object(deletion_requests.Requests, '_unlearn',
                           dies_at_the_second):
      experiment.run(config, killed)
    self.assertEqual(calls, ['request2', 'batch'])
    measured = lambda entry: {k: v for k, v in entry.items()
                              if k != 'seconds'}
    resumed = self.read(killed)['methods']['finetune']
    uninterrupted = self.read(whole)['methods']['finetune']
    for a, b in zip(resumed['sequential'] + [resumed['batch']],
                    uninterrupted['sequential'] + [uninterrupted['batch']]):
      np.testing.assert_equal(measured(a), measured(b))


class ConfigTest(absltest.TestCase):

  def test_bad_requests_stop_with_one_line(self):
    for key, value, message in (
        ('first', 'last', 'config.requests.first'),
        ('methods', 'nothing', 'nothing: no such method'),
        ('methods', 'retrain', 'does not start from a model'),
        ('count', -1, 'config.requests.count')):
      config = experiment_test.tiny_config('unused')
      config.requests.count = 2
      config.requests[key] = value
      with self.assertRaisesRegex(run_config.ConfigError, message):
        run_config.check_config(config)


if __name__ == '__main__':
  absltest.main()
