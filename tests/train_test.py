"""Training populations: members equal single models, devices equal one
device, device-gathered batches equal host-gathered ones, the compiled loop
equals steps dispatched one by one, resuming, refusing; SGD and Adam as
torch's."""

import os

import jax
import ml_collections
import numpy as np
import optax
import torch
from absl.testing import absltest

import trees_testing

from mufax import compilation
from mufax import engine
from mufax import executors
from mufax import models
from mufax import objectives
from mufax import optimizers
from mufax import plans
from mufax import sharding
from mufax import train

IMAGE_SIZE = 16


def random_split(n: int, *, size: int = IMAGE_SIZE, outputs: int = 3,
                 loss: str = 'softmax', seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  labels = (rng.integers(0, outputs, n) if loss == 'softmax'
            else rng.integers(0, 2, (n, outputs)))
  return {'image': rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
          'label': labels}


def make_engine(devices=None, loss_kind='softmax', **kwargs):
  # 22 examples in batches of 8: two full batches, then 6, which the task's
  # objective pads to 8 (so that it shards over 4 devices).
  splits = {'train': random_split(22, loss=loss_kind, seed=3),
            'test': random_split(9, loss=loss_kind, seed=4)}
  return engine.Engine(models.ResNetTiny(num_outputs=3), loss_kind=loss_kind,
                       splits=splits, log_every_s=1e9, devices=devices,
                       **kwargs)


RECIPE = train.Recipe(learning_rate=0.05, momentum=0.9, epochs=3,
                      decay_epochs=(1, 2), batch_size=8)
# For comparisons across layouts: one epoch, as every step amplifies the
# float32 rounding by which a convolution over another number of members (or
# on another device) differs.
SHORT = train.Recipe(learning_rate=0.05, momentum=0.9, epochs=1,
                     batch_size=8)


def fit(eng, directory, seeds, recipe=RECIPE, **kwargs):
  return train.fit(recipe, engine=eng, split='train', seeds=seeds,
                   eval_split='test', checkpoint_dir=directory, **kwargs)


def kill_after_second_epoch(epoch, record):
  """An `on_epoch_end` that stops a run as a kill would, after epoch 2."""
  del record
  if epoch == 1:
    raise KeyboardInterrupt


def assert_trees_close(test, a, b, tol):
  paths_a = jax.tree_util.tree_flatten_with_path(a)[0]
  paths_b = jax.tree_util.tree_leaves(b)
  test.assertLen(paths_b, len(paths_a))
  for (path, x), y in zip(paths_a, paths_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tol,
                               rtol=tol, err_msg=jax.tree_util.keystr(path))


def moved(test, before, after, tol=1e-3):
  """Training moved the parameters well beyond the comparison tolerance."""
  test.assertGreater(trees_testing.largest_difference(before, after), tol)


class PopulationTest(absltest.TestCase):

  def test_every_member_equals_the_single_model_of_its_seed(self):
    eng = make_engine(jax.devices()[:1])
    seeds = (5, 6)
    alone = [sharding.member(fit(eng, self.create_tempdir().full_path, (seed,),
                                 SHORT)[0].variables, 0) for seed in seeds]
    # All members in one vmapped program, and one by one (one CPU device's
    # default).
    for per_call in (2, 1):
      population, history = fit(make_engine(jax.devices()[:1],
                                            members_per_call=per_call),
                                self.create_tempdir().full_path, seeds,
                                SHORT)
      self.assertEqual(np.asarray(population.step).tolist(), [3, 3])
      self.assertGreater(history[0]['flops'], 0)
      for k in range(len(seeds)):
        # Two members in one program convolve as XLA's grouped convolution,
        # whose rounding differs by CPU model; three BatchNorm-train steps
        # amplify it to ~1e-5 on some (a wrong seed or order gives ~1e-2).
        assert_trees_close(self, sharding.member(population.variables, k),
                           alone[k], 1e-4)
    # Members differ from each other (each has its own init and data
    # order), and moved from their start.
    moved(self, alone[0], alone[1])
    fresh = sharding.member(eng.init(optimizers.sgd(), (6,)).variables, 0)
    moved(self, fresh['params'], alone[1]['params'])

  def test_masked_member_trains_on_its_subset(self):
    eng = make_engine(jax.devices()[:1])
    masks = np.ones((2, 22), bool)
    masks[1, :6] = False  # member 1 never sees examples 0..5
    masks[0, -6:] = False
    population, _ = fit(eng, self.create_tempdir().full_path, (5, 6),
                        masks=masks)
    self.assertEqual(np.asarray(population.step).tolist(), [6, 6])
    with self.assertRaisesRegex(ValueError, 'same, non-zero number'):
      train.member_pools(22, np.eye(2, 22, dtype=bool) | masks, 2)

  def test_four_devices_equal_one(self):
    if jax.device_count() < 4:
      self.fail('needs 4 devices: XLA_FLAGS=--xla_force_host_platform_'
                'device_count=4 (conftest.py sets it)')
    recipe = SHORT
    for seeds in ((5, 6, 7, 8), (5,)):
      # 4 members: one per device; 1 member: its batch over the 4 devices.
      one, history_one = fit(make_engine(jax.devices()[:1]),
                             self.create_tempdir().full_path, seeds, recipe)
      four_engine = make_engine(jax.devices()[:4])
      four, history_four = fit(four_engine, self.create_tempdir().full_path,
                               seeds, recipe)
      mesh = four_engine.mesh(len(seeds)).shape
      self.assertEqual((mesh['model'], mesh['data']),
                       (4, 1) if len(seeds) == 4 else (1, 4))
      self.assertLen(jax.tree.leaves(four.params)[0].addressable_shards, 4)
      start = make_engine(jax.devices()[:1]).init(optimizers.sgd(),
                                                  seeds).variables
      trees_testing.assert_equal_up_to_rounding(self, start, one.variables,
                                                four.variables, rel=1e-3)
      self.assertEqual([h['test_accuracy'] for h in history_one],
                       [h['test_accuracy'] for h in history_four])
      eval_one = make_engine(jax.devices()[:1]).predict(one.variables,
                                                        'test')
      eval_four = four_engine.predict(four.variables, 'test')
      np.testing.assert_allclose(eval_one['loss'], eval_four['loss'],
                                 rtol=1e-5, atol=1e-5)

  def test_resident_epoch_equals_host_gathered_batches(self):
    """One member's epoch through `train.fit`, its batches gathered on the
    device from the resident splits, equals the host's gathered batches fed
    to the population step one at a time, with the same order and draws
    (on CPU both run step by step; the compiled loop has its own test)."""
    eng = make_engine(jax.devices()[:1])
    seeds = (6,)
    resident, _ = train.fit(
        train.Recipe(0.05, 0.9, epochs=1, batch_size=8), engine=eng,
        split='train', seeds=seeds,
        checkpoint_dir=self.create_tempdir().full_path)

    state = optimizers.with_learning_rate(
        eng.init(optimizers.sgd(0.05, 0.9), seeds), 0.05)
    step = eng.programs.population_step(
        objectives.Update(objectives.TASK_OBJECTIVE, optimizers.SGD),
        eng.mesh(1))
    rngs = train.augmentation_keys(seeds)
    data = eng.splits['train']
    plan = plans.Plan.stack(plans.epoch_plan(
        [np.arange(22)], batch_size=8, seeds=seeds, epoch=0))
    for _, indices in plan.steps:
      idx = indices['train'][0]
      batch = {'image': data['image'][idx], 'label': data['label'][idx]}
      state, _ = step(state, batch, {'train': np.arange(len(idx))[None]},
                      rngs, None, None)
    assert_trees_close(self, resident.variables, state.variables, 1e-6)


  def test_short_batch_padded_to_full_equals_it_unpadded(self):
    """An objective that `pads` runs an epoch's short last batch, padded and
    masked, through the full batch's program, to what the short batch gives
    run as it is; a longer plan of the same steps compiles nothing new."""
    seeds = (4, 9)
    exact = objectives.Objective(objectives.TASK_OBJECTIVE.loss)
    self.assertTrue(objectives.TASK_OBJECTIVE.pads)
    self.assertFalse(exact.pads)

    def plan(epochs):
      per_member = [[] for _ in seeds]
      for epoch in range(epochs):
        for steps, more in zip(per_member, plans.epoch_plan(
            [np.arange(22)] * len(seeds), batch_size=8, seeds=seeds,
            epoch=epoch)):
          steps += more
      return plans.Plan.stack(per_member)

    results = {}
    for name, objective in (('padded', objectives.TASK_OBJECTIVE),
                            ('exact', exact)):
      eng = make_engine(jax.devices()[:1])
      state, result = eng.run(
          plan(1), {'train': objectives.Update(objective, optimizers.SGD)},
          optimizers.with_learning_rate(
              eng.init(optimizers.sgd(0.05, 0.9), seeds), 0.05),
          train.augmentation_keys(seeds))
      compiled = len(eng.compiler._cache)
      results[name] = (state, result, compiled)
      if name == 'padded':
        eng.run(plan(2),
                {'train': objectives.Update(objective, optimizers.SGD)},
                state, train.augmentation_keys(seeds))
        self.assertLen(eng.compiler._cache, compiled)
    # The short batch's programs are the ones padding saves.
    self.assertEqual(results['exact'][2], 2 * results['padded'][2])
    assert_trees_close(self, results['exact'][0].variables,
                       results['padded'][0].variables, 1e-5)
    for name in ('loss', 'accuracy'):
      np.testing.assert_allclose(results['padded'][1].measured[name],
                                 results['exact'][1].measured[name],
                                 rtol=1e-5, atol=1e-6)


  def test_cpu_updates_differing_in_augmentation_share_a_program(self):
    """On CPU augmentation lives in the batch program: an update that
    differs only in it compiles a batch program, not a second update."""
    seeds = (2,)
    plan = plans.Plan.stack(plans.epoch_plan(
        [np.arange(16)], batch_size=8, seeds=seeds, epoch=0))
    eng = make_engine(jax.devices()[:1])
    self.assertEqual(eng.executor, executors.HOST)
    state = optimizers.with_learning_rate(
        eng.init(optimizers.sgd(0.05, 0.9), seeds), 0.05)
    compiled = []
    for augment in (True, False):
      state, _ = eng.run(
          plan, {'train': objectives.Update(objectives.TASK_OBJECTIVE,
                                            optimizers.SGD, augment=augment)},
          state, train.augmentation_keys(seeds))
      compiled.append(len(eng.compiler._cache))
    self.assertEqual(compiled[1] - compiled[0], 1)

  def test_loop_executor_equals_host_executor_and_four_devices_one(self):
    """Training from scratch, a population of 2 in one program: accelerators'
    compiled loop and CPU's host dispatch run the same steps (1e-5); the loop
    on four devices sums the batch's gradients in another order (1e-3 of
    the change)."""
    seeds = (3, 8)
    results = {}
    for devices, executor in ((1, executors.HOST), (1, executors.LOOP),
                              (4, executors.LOOP)):
      eng = make_engine(jax.devices()[:devices], executor=executor,
                        members_per_call=len(seeds))
      self.assertEqual(eng.executor, executor)
      state, history = fit(eng, self.create_tempdir().full_path, seeds,
                           SHORT)
      results[devices, executor] = (
          state.variables, [h['train_loss'] for h in history],
          eng.predict(state.variables, 'test')['loss'])
    host_vars, host_loss, host_losses = results[1, executors.HOST]
    loop_vars, loop_loss, loop_losses = results[1, executors.LOOP]
    assert_trees_close(self, host_vars, loop_vars, 1e-5)
    np.testing.assert_allclose(host_losses, loop_losses, rtol=1e-5,
                               atol=1e-6)
    self.assertEqual(host_losses.shape, (2, 9))
    np.testing.assert_allclose(host_loss, loop_loss, rtol=1e-5)
    start = jax.device_get(make_engine(jax.devices()[:1]).init(
        optimizers.SGD, seeds).variables)
    moved(self, start['params'], host_vars['params'])
    trees_testing.assert_equal_up_to_rounding(
        self, start, jax.device_get(host_vars),
        jax.device_get(results[4, executors.LOOP][0]), rel=1e-3)


class FitTest(absltest.TestCase):

  def test_killed_run_resumes_to_the_same_parameters(self):
    eng = make_engine(jax.devices()[:1])
    seeds = (5, 6)
    whole, whole_history = fit(eng, self.create_tempdir().full_path, seeds)

    directory = self.create_tempdir().full_path

    with self.assertRaises(KeyboardInterrupt):
      fit(eng, directory, seeds, on_epoch_end=kill_after_second_epoch)
    epochs_run = []
    resumed, history = fit(
        eng, directory, seeds,
        on_epoch_end=lambda epoch, _: epochs_run.append(epoch))

    self.assertEqual(epochs_run, [2])
    self.assertEqual(np.asarray(resumed.step).tolist(), [9, 9])
    jax.tree_util.tree_map(np.testing.assert_array_equal,
                           jax.device_get(resumed), jax.device_get(whole))
    self.assertEqual([h['epoch'] for h in history], [1, 2, 3])
    self.assertEqual([h['test_accuracy'] for h in history],
                     [h['test_accuracy'] for h in whole_history])

  def test_saves_are_spaced_by_checkpoint_every_s(self):
    eng = make_engine(jax.devices()[:1])
    directory = self.create_tempdir().full_path

    # No epoch but the last is saved: a kill before it loses every epoch.
    with self.assertRaises(KeyboardInterrupt):
      fit(eng, directory, (5,), on_epoch_end=kill_after_second_epoch,
          checkpoint_every_s=1e9)
    epochs_run = []
    fit(eng, directory, (5,), checkpoint_every_s=1e9,
        on_epoch_end=lambda epoch, _: epochs_run.append(epoch))
    self.assertEqual(epochs_run, [0, 1, 2])
    self.assertEqual(sorted(int(d) for d in os.listdir(directory)
                            if d.isdigit()), [3])

  def test_checkpoint_of_another_run_is_refused(self):
    eng = make_engine(jax.devices()[:1])
    directory = self.create_tempdir().full_path
    fit(eng, directory, (5,))
    with self.assertRaisesRegex(ValueError, 'different run'):
      fit(eng, directory, (5, 6))

  def test_population_that_does_not_fit_is_refused(self):
    state_bytes = compilation.tree_bytes(
        make_engine().abstract_state(optimizers.sgd(), 1))
    data_bytes = make_engine().data_bytes()
    # Room for the data and about three members' state.
    eng = make_engine(jax.devices()[:1],
                      memory_limit=data_bytes + 7 * state_bytes)
    with self.assertRaisesRegex(
        compilation.PopulationTooLarge,
        r'population of 8 .* at most 3 member\(s\) fit; set '
        r'config.population.size=3'):
      fit(eng, self.create_tempdir().full_path, tuple(range(8)))
    # A population that fits its state, but not the temporaries of a step
    # of both members at once (one at a time, they would fit).
    eng = make_engine(jax.devices()[:1], members_per_call=2,
                      memory_limit=data_bytes + 4 * state_bytes)
    with self.assertRaisesRegex(compilation.PopulationTooLarge,
                                'population of 2 '):
      fit(eng, self.create_tempdir().full_path, (1, 2))


class RecipeTest(absltest.TestCase):

  def test_optimizer_follows_torch_sgd_with_multistep_lr(self):
    recipe = train.Recipe(learning_rate=0.01, momentum=0.9, epochs=3,
                          decay_epochs=(1, 2))
    grads = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)

    params = np.ones(5, np.float32)
    opt_state = optimizers.sgd(recipe.learning_rate,
                               recipe.momentum).init(params)
    for epoch in range(3):
      opt_state.hyperparams['learning_rate'] = np.float32(
          train.learning_rate(recipe, epoch))
      for g in grads[epoch * 2:(epoch + 1) * 2]:
        updates, opt_state = optimizers.SGD.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)

    weight = torch.nn.Parameter(torch.ones(5))
    sgd = torch.optim.SGD([weight], lr=0.01, momentum=0.9)
    schedule = torch.optim.lr_scheduler.MultiStepLR(sgd, [1, 2], gamma=0.1)
    for epoch in range(3):
      for g in grads[epoch * 2:(epoch + 1) * 2]:
        weight.grad = torch.from_numpy(g)
        sgd.step()
      schedule.step()
    np.testing.assert_allclose(np.asarray(params), weight.detach().numpy(),
                               rtol=1e-6)

  def test_adam_follows_torch_adam(self):
    # Gradients of mixed scales, one of them near ε, so that the bias
    # corrections and ε all enter; Bad Teaching's learning rate and a larger
    # one.
    rng = np.random.default_rng(1)
    grads = (rng.normal(size=(8, 5))
             * np.array([1.0, 1e-3, 1e-8, 10.0, 0.1])).astype(np.float32)
    start = np.linspace(-1, 1, 5, dtype=np.float32)
    for lr in (1e-4, 0.05):
      params = start
      opt_state = optimizers.adam(lr).init(params)
      for g in grads:
        updates, opt_state = optimizers.ADAM.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)

      weight = torch.nn.Parameter(torch.from_numpy(start.copy()))
      adam = torch.optim.Adam([weight], lr=lr)
      for g in grads:
        weight.grad = torch.from_numpy(g)
        adam.step()
      np.testing.assert_allclose(np.asarray(params), weight.detach().numpy(),
                                 rtol=1e-6, atol=1e-7, err_msg=f'lr {lr}')
      # Every weight moved by far more than the tolerance.
      self.assertGreater(np.abs(np.asarray(params) - start).min(), lr / 4)

  def test_recipe_from_config(self):
    config = ml_collections.ConfigDict({
        'learning_rate': 0.01, 'momentum': 0.0, 'epochs': 8,
        'decay_epochs': [], 'batch_size': 64})
    self.assertEqual(train.Recipe.from_config(config),
                     train.Recipe(0.01, 0.0, 8, (), 64))

  def test_unknown_loss_is_refused(self):
    with self.assertRaisesRegex(ValueError, 'hinge'):
      make_engine(loss_kind='hinge')


if __name__ == '__main__':
  absltest.main()
