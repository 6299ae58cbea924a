"""Hyperparameter sweeps: the rehearsal request, candidates as members of one
program, and selection that never reads the answer."""

import dataclasses
import json
import os
from unittest import mock

import jax
import numpy as np
from absl.testing import absltest

import experiment_test
import unlearning_test

from mufax import experiment
from mufax import models
from mufax import rehearsal
from mufax import run_config
from mufax import search_spaces
from mufax import sharding
from mufax import sweep
from mufax import train
from mufax import unlearning


def identities(people, images_per_person, seed):
  rng = np.random.default_rng(seed)
  return np.repeat(people, rng.integers(1, images_per_person,
                                        len(people)))


class RehearsalTest(absltest.TestCase):

  def test_rehearsal_people_are_retain_people_as_many_as_forget(self):
    retain = identities(np.arange(100, 160), 20, 0)
    forget = identities(np.arange(10), 20, 1)
    people = rehearsal.rehearsal_people(retain, forget, seed=3)
    self.assertLen(people, 10)
    self.assertEmpty(np.intersect1d(people, forget))
    self.assertTrue(np.isin(people, retain).all())
    np.testing.assert_array_equal(
        people, rehearsal.rehearsal_people(retain, forget, seed=3))
    self.assertFalse(np.array_equal(
        people, rehearsal.rehearsal_people(retain, forget, seed=4)))
    # Images as close in number as the draws allow: within one person's
    # images of the forget set's count.
    self.assertLess(abs(np.isin(retain, people).sum() - len(forget)), 5)
    with self.assertRaisesRegex(ValueError, 'needs 10 people'):
      rehearsal.rehearsal_people(retain[:30], forget, seed=0)

  def test_splits_divide_people_never_images(self):
    rng = np.random.default_rng(0)
    split = lambda ids: {'identity': ids, 'label': rng.integers(0, 8, len(ids))}
    data = {'train': split(identities(np.arange(40), 9, 0)),
            'retain': split(identities(np.arange(10, 40), 9, 1)),
            'forget': split(identities(np.arange(10), 9, 2)),
            'test': split(identities(np.arange(50, 70), 9, 3)),
            'unseen': split(identities(np.arange(80, 91), 9, 4))}
    rehearsing, held_out = rehearsal.request_splits(data, seed=0)
    self.assertEmpty(np.intersect1d(rehearsing['forget']['identity'],
                                    data['forget']['identity']))
    self.assertEmpty(np.intersect1d(rehearsing['forget']['identity'],
                                    rehearsing['retain']['identity']))
    self.assertEqual(len(rehearsing['forget']['label'])
                     + len(rehearsing['retain']['label']),
                     len(data['retain']['label']))
    for name in ('test', 'unseen'):
      self.assertEmpty(np.intersect1d(rehearsing[name]['identity'],
                                      held_out[name]['identity']))
      self.assertEqual(len(rehearsing[name]['label'])
                       + len(held_out[name]['label']),
                       len(data[name]['label']))
    self.assertIs(held_out['forget'], data['forget'])


class ConfigTest(absltest.TestCase):

  def config(self, **sweep_values):
    config = experiment_test.tiny_config('unused')
    config.population.size = 2
    config.sweep.update(sweep_values)
    return config

  def test_bad_sweeps_stop_with_one_line_naming_them(self):
    for values, named in (
        ({'methods': 'finetune,nosuch'}, 'nosuch: cannot be swept, no such'),
        ({'methods': 'retrain'}, 'retrain: cannot be swept'),
        ({'methods': 'finetune', 'criteria': 'nomus,best'}, 'criteria'),
        ({'methods': 'finetune', 'criteria': 'peek'}, 'peek alone'),
        ({'methods': 'finetune', 'search': 'bayes'}, 'search'),
        ({'methods': 'finetune', 'max_cost': -1.0}, 'max_cost'),
        ({'methods': 'finetune', 'seeds': 3}, 'sweep.seeds=3'),
        ({'methods': 'finetune', 'seeds': 1}, 'at least 2 seeds')):
      with self.assertRaisesRegex(run_config.ConfigError, named) as e:
        run_config.check_config(self.config(**values))
      self.assertNotIn('\n', str(e.exception))

  def test_malformed_ranges_are_refused_where_declared(self):
    with self.assertRaisesRegex(ValueError, 'both > 0'):
      search_spaces.LogUniform(0, 1)
    with self.assertRaisesRegex(ValueError, 'low < high'):
      search_spaces.Uniform(2.0, 1.0)

    @dataclasses.dataclass(frozen=True)
    class Reaching(unlearning.SGDHparams):
      lr: float = unlearning.hparam(
          0.1, source='test', maximum=1.0,
          search=search_spaces.LogUniform(0.1, 10.0), search_source='test')

    class Method(unlearning.SGDMethod):
      Hparams = Reaching

    with self.assertRaisesRegex(ValueError, "'reaching'.*lr"):
      unlearning.register('reaching')(Method)
    self.assertNotIn('reaching', unlearning.METHODS)

  def test_candidates_start_at_the_defaults_and_redraw_the_same(self):
    config = self.config(methods='scrub', candidates=5)
    config.unlearn.scrub.temperature = 2.0
    cands = sweep.candidates('scrub', config)
    self.assertLen(cands, 5)
    self.assertEqual(cands[0], {'temperature': 2.0})
    self.assertEqual(cands, sweep.candidates('scrub', config))
    for cand in cands[1:]:
      self.assertEqual(set(cand), {'lr', 'epochs', 'temperature'})
    config.sweep.search = 'grid'
    config.sweep.grid_points = 2
    self.assertLen(sweep.candidates('scrub', config), 1 + 2 ** 3)

  def test_candidates_that_differ_in_learning_rates_alone_share_a_program(
      self):
    self.assertEqual(sweep.programs('finetune', [
        {'lr': 0.001}, {'lr': 0.01, 'epochs': 3}, {}, {'lr': 0.5}]),
                     [[0, 2, 3], [1]])

  def test_candidates_that_differ_in_values_alone_share_a_program(self):
    self.assertEqual(sweep.programs('scrub', [
        {'lr': 0.001}, {'lr': 0.01, 'temperature': 2.0},
        {'temperature': 2.0, 'epochs': 3}, {'temperature': 7.5}]),
                     [[0, 1, 3], [2]])
    self.assertEqual(sweep.programs('ssd', [
        {'alpha': 1.0}, {'alpha': 3.0, 'dampening': 0.5},
        {'batch_size': 32}]), [[0, 1], [2]])
    # The retain fraction decides the plan's steps; the temperature only
    # the loss.
    self.assertEqual(sweep.programs('bad_teaching', [
        {'temperature': 2.0}, {'temperature': 3.0, 'lr': 1e-3},
        {'retain_fraction': 0.5}]), [[0, 1], [2]])
    # UNSIR's noise steps and CF-k's trainable groups shape the program;
    # the noise's learning rate does not.
    self.assertEqual(sweep.programs('unsir', [
        {'noise_steps': 4}, {'noise_steps': 8},
        {'noise_steps': 4, 'noise_lr': 0.1}]), [[0, 2], [1]])
    self.assertEqual(sweep.programs('cf_k', [{'k': 2}, {'k': 3}]),
                     [[0], [1]])

  def test_peek_moves_with_the_answer_and_honest_criteria_never_read_it(
      self):
    state = {'candidates': [
        {'index': 0, 'rehearsal': {'nomus': 0.6, 'final_score': 0.3},
         'real': {'final_score': 0.2}},
        {'index': 1, 'rehearsal': {'nomus': 0.5, 'final_score': 0.4},
         'real': {'final_score': 0.9}}]}
    choose = lambda request, criterion: sweep.Sweep._choose(
        None, state, request, criterion)
    self.assertEqual(choose('rehearsal', 'nomus'), 0)
    self.assertEqual(choose('rehearsal', 'retrain'), 1)
    self.assertEqual(choose('real', 'peek'), 1)
    state['candidates'][0]['real']['final_score'] = 0.95
    self.assertEqual(choose('real', 'peek'), 0)
    self.assertEqual(choose('rehearsal', 'retrain'), 1)


class MembersTest(absltest.TestCase):

  def assert_members_equal_candidates_alone(self, method, cands,
                                            seeds=(42, 43)):
    """Runs candidates `cands` (overrides) of `method` as one program of S =
    len(seeds) members each, and each candidate alone: member i * S + k of
    the program equals seed k of candidate i alone within 1e-5. On one
    device: SalUn's mask, a threshold, turns the rounding of other layouts
    into flipped elements (unlearning_test compares layouts)."""
    self.assertEqual(sweep.programs(method, cands), [list(range(len(cands)))])
    ctx, original = unlearning_test.tiny_context(jax.devices()[:1],
                                                 seeds=seeds)
    tiled = jax.tree.map(
        lambda x: np.concatenate([np.asarray(x)] * len(cands)), original)
    group = dataclasses.replace(
        ctx, seeds=seeds * len(cands), member_hparams=tuple(
            ctx.hparams | cand for cand in cands for _ in seeds))
    *_, together = unlearning.METHODS[method].run(group, tiled)
    for i, cand in enumerate(cands):
      alone_ctx = dataclasses.replace(ctx, hparams=ctx.hparams | cand)
      *_, alone = unlearning.METHODS[method].run(alone_ctx, original)
      for k in range(len(seeds)):
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
            sharding.member(alone.variables, k),
            sharding.member(together.variables, i * len(seeds) + k))
    # The candidates did move apart.
    params = jax.tree.leaves(together.variables['params'])
    for i in range(1, len(cands)):
      self.assertGreater(max(
          np.abs(np.asarray(x[0]) - np.asarray(x[i * len(seeds)])).max()
          for x in params), 1e-4, (method, cands[i]))

  def test_a_candidate_member_equals_the_candidate_alone(self):
    # One optimizer of each kind: SGD, masked SGD, Adam.
    rates = {'finetune': (0.01, 0.05), 'salun': (0.01, 0.05),
             'bad_teaching': (1e-4, 1e-3)}
    for method, lrs in rates.items():
      self.assert_members_equal_candidates_alone(
          method, [{'lr': lr} for lr in lrs])

  def test_candidates_that_differ_in_values_are_one_program_each_as_alone(
      self):
    # A loss's temperature (with a learning rate beside it), an edit's
    # alpha and lambda, a gradient mask's fraction, an edit's and a mask's
    # per-layer counts.
    values = {
        'scrub': [{'epochs': 1, 'temperature': 1.0},
                  {'epochs': 1, 'temperature': 6.0},
                  {'epochs': 1, 'temperature': 2.5, 'lr': 0.01}],
        'ssd': [{'alpha': 0.5, 'dampening': 1.0},
                {'alpha': 2.0, 'dampening': 0.3}],
        'salun': [{'epochs': 1, 'mask_ratio': 0.2},
                  {'epochs': 1, 'mask_ratio': 0.9}],
        'msg': [{'epochs': 1, 'init_rate': 0.1},
                {'epochs': 1, 'init_rate': 0.6, 'kept_gradient_scale': 0.5}]}
    for method, cands in values.items():
      self.assert_members_equal_candidates_alone(method, cands)

  def test_members_that_differ_beyond_learning_rates_are_refused(self):
    ctx, original = unlearning_test.tiny_context(seeds=(42, 43))
    group = dataclasses.replace(ctx, member_hparams=(
        {'batch_size': unlearning_test.BATCH, 'epochs': 1},
        {'batch_size': unlearning_test.BATCH, 'epochs': 2}))
    with self.assertRaisesRegex(ValueError, 'more than the learning rate'):
      list(unlearning.METHODS['finetune'].run(group, original))


class SelectionIsBlindTest(absltest.TestCase):
  """Garbage in the real forget set, the held-out halves and the real
  retrained population changes no honest choice."""

  def sweep_once(self, config, workdir, garbage):
    task, data = experiment.load_task(config)
    if garbage:
      data = self.garbled(config, data)
    engine = experiment.make_engine(config, task, data)
    seeds = run_config.seeds_of(config)
    ctx = unlearning.Context(task=task, protocol=config.protocol, data=data,
                             engine=engine, seeds=seeds)
    original = train.from_scratch('original', config, task=task,
                                  engine=engine, workdir=self.originals)
    real_retain = len(data['retain']['label'])
    from_scratch = train.from_scratch

    def retrained(kind, config, *, task, engine, workdir):
      row = from_scratch(kind, config, task=task, engine=engine,
                         workdir=workdir)
      if garbage and len(engine.splits['retain']['label']) == real_retain:
        noise = jax.vmap(lambda k: models.init_variables(
            engine.model, jax.random.key(k), engine.input_size))(
                np.arange(len(seeds)) + 1000)
        row = dataclasses.replace(row, variables=noise)
      return row

    with mock.patch.object(train, 'from_scratch', retrained):
      experiment.run_sweep(config, workdir, ctx, data, lambda: original)
    with open(os.path.join(workdir, 'sweep', 'finetune.json')) as f:
      return json.load(f)

  def garbled(self, config, data):
    rng = np.random.default_rng(7)
    data = {name: dict(split) for name, split in data.items()}
    data['forget']['image'] = rng.integers(
        0, 256, data['forget']['image'].shape, dtype=np.uint8)
    for name, half in rehearsal.validation_halves(
        data, config.sweep.seed).items():
      held = ~half
      labels = data[name]['label'].copy()
      labels[held] = rng.permutation(labels[held])
      images = data[name]['image'].copy()
      images[held] = rng.integers(0, 256, images[held].shape, dtype=np.uint8)
      data[name] = data[name] | {'label': labels, 'image': images}
    return data

  def setUp(self):
    super().setUp()
    experiment_test.on_one_device(self)

  def test_honest_choices_ignore_the_answer(self):
    config = experiment_test.tiny_config(self.create_tempdir().full_path)
    # 3 seeds: the fewest for which F has a bucket to earn.
    config.population.size = 3
    config.sweep.methods = 'finetune'
    config.sweep.candidates = 4
    config.unlearn.finetune.epochs = 1
    self.originals = self.create_tempdir().full_path
    workdir = self.create_tempdir().full_path
    clean = self.sweep_once(config, workdir, False)
    dirty = self.sweep_once(config, self.create_tempdir().full_path, True)
    # Started again, a finished sweep reads its JSON and runs nothing.
    with mock.patch.object(unlearning.METHODS['finetune'], 'run',
                           side_effect=AssertionError('ran again')):
      self.assertEqual(self.sweep_once(config, workdir, False), clean)
    for criterion in ('nomus', 'retrain'):
      self.assertEqual(clean['chosen'][criterion],
                       dirty['chosen'][criterion], criterion)
    # The retrain criterion had something to choose from.
    self.assertLen({c['rehearsal']['final_score']
                    for c in clean['candidates']}, 4)
    for a, b in zip(clean['candidates'], dirty['candidates']):
      self.assertEqual(a['rehearsal'], b['rehearsal'])
      if 'real' in a:
        # The answer did change: peek reads it.
        self.assertNotEqual(a['real'], b['real'])


if __name__ == '__main__':
  absltest.main()
