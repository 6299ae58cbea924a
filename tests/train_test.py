"""Train and eval steps: 4 devices equal 1, resuming, the torch optimizer."""

import jax
import ml_collections
import numpy as np
import optax
import torch
from absl.testing import absltest
from absl.testing import parameterized

from mufax import models
from mufax import train


def random_split(n: int, *, size: int = 32, outputs: int = 3,
                 loss: str = 'softmax', seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  labels = (rng.integers(0, outputs, n) if loss == 'softmax'
            else rng.integers(0, 2, (n, outputs)))
  return {'image': rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
          'label': labels}


def assert_trees_close(test, a, b, tol):
  paths_a = jax.tree_util.tree_flatten_with_path(a)[0]
  paths_b = jax.tree_util.tree_leaves(b)
  test.assertLen(paths_b, len(paths_a))
  for (path, x), y in zip(paths_a, paths_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tol,
                               rtol=tol, err_msg=jax.tree_util.keystr(path))


class MultiDeviceTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    if jax.device_count() < 4:
      self.skipTest('needs XLA_FLAGS=--xla_force_host_platform_device_count=4')

  def run_steps(self, mesh, loss, data):
    model = models.ResNetTiny(num_outputs=3)
    tx = optax.sgd(0.05, momentum=0.9)
    state = train.create_train_state(model, tx, jax.random.key(0),
                                     image_size=32, mesh=mesh)
    step = train.make_train_step(model, tx, mesh=mesh, loss=loss)
    rng = train.replicate(jax.random.key(1), mesh)
    # 8 shards over 4 devices; 6 does not, and is replicated instead.
    for start, stop in ((0, 8), (8, 16), (16, 22)):
      batch = train.shard_batch(
          {k: v[start:stop] for k, v in data.items()}, mesh)
      state, measured = step(state, batch, rng)
    eval_step = train.make_eval_step(model, mesh=mesh, loss=loss)
    evaluated = train.evaluate(eval_step, state.variables, data, mesh=mesh,
                               loss=loss, batch_size=8)
    return state, measured, evaluated

  @parameterized.parameters('softmax', 'sigmoid')
  def test_four_devices_give_the_one_device_result(self, loss):
    data = random_split(22, loss=loss)
    one = self.run_steps(train.make_mesh(jax.devices()[:1]), loss, data)
    four = self.run_steps(train.make_mesh(jax.devices()[:4]), loss, data)
    assert_trees_close(self, one[0].params, four[0].params, 1e-5)
    assert_trees_close(self, one[0].batch_stats, four[0].batch_stats, 1e-5)
    assert_trees_close(self, one[1], four[1], 1e-5)
    np.testing.assert_allclose(one[2]['loss'], four[2]['loss'], atol=1e-5,
                               rtol=1e-5)
    self.assertEqual(one[2]['accuracy'], four[2]['accuracy'])
    self.assertEqual(int(four[0].step), 3)
    # Training moved the parameters, so the comparison is not of two inits.
    fresh = train.create_train_state(
        models.ResNetTiny(num_outputs=3), optax.sgd(0.05), jax.random.key(0),
        image_size=32)
    self.assertGreater(
        np.abs(np.asarray(fresh.params['fc']['kernel'])
               - np.asarray(one[0].params['fc']['kernel'])).max(), 1e-3)

  def test_even_batches_are_sharded_over_the_devices(self):
    mesh = train.make_mesh(jax.devices()[:4])
    batch = train.shard_batch(random_split(8), mesh)
    self.assertLen(batch['image'].addressable_shards, 4)
    self.assertEqual(batch['image'].addressable_shards[0].data.shape[0], 2)
    odd = train.shard_batch(random_split(6), mesh)
    self.assertTrue(odd['image'].sharding.is_fully_replicated)


class FitTest(absltest.TestCase):

  recipe = train.Recipe(learning_rate=0.05, momentum=0.9, epochs=3,
                        decay_epochs=(1, 2), batch_size=8)

  def fit(self, directory, **kwargs):
    data = random_split(16, seed=3)
    return train.fit(self.recipe, model=models.ResNetTiny(num_outputs=3),
                     loss='softmax', train_data=data,
                     eval_data={'test': random_split(9, seed=4)},
                     mesh=train.make_mesh(jax.devices()[:1]),
                     checkpoint_dir=directory, seed=42, **kwargs)

  def test_killed_run_resumes_to_the_same_parameters(self):
    whole, whole_history = self.fit(self.create_tempdir().full_path)

    directory = self.create_tempdir().full_path

    def kill_after_second_epoch(epoch, record):
      del record
      if epoch == 1:
        raise KeyboardInterrupt

    with self.assertRaises(KeyboardInterrupt):
      self.fit(directory, on_epoch_end=kill_after_second_epoch)
    epochs_run = []
    resumed, history = self.fit(
        directory, on_epoch_end=lambda epoch, _: epochs_run.append(epoch))

    self.assertEqual(epochs_run, [2])
    self.assertEqual(int(resumed.step), 6)
    jax.tree_util.tree_map(np.testing.assert_array_equal,
                           jax.device_get(resumed), jax.device_get(whole))
    self.assertEqual([h['epoch'] for h in history], [1, 2, 3])
    self.assertEqual([h['test_accuracy'] for h in history],
                     [h['test_accuracy'] for h in whole_history])

  def test_checkpoint_of_another_run_is_refused(self):
    directory = self.create_tempdir().full_path
    self.fit(directory)
    other = train.Recipe(**{**self.recipe.__dict__, 'learning_rate': 0.1})
    with self.assertRaisesRegex(ValueError, 'different run'):
      train.fit(other, model=models.ResNetTiny(num_outputs=3),
                loss='softmax', train_data=random_split(16, seed=3),
                mesh=train.make_mesh(jax.devices()[:1]),
                checkpoint_dir=directory, seed=42)


class RecipeTest(absltest.TestCase):

  def test_optimizer_follows_torch_sgd_with_multistep_lr(self):
    recipe = train.Recipe(learning_rate=0.01, momentum=0.9, epochs=3,
                          decay_epochs=(1, 2))
    steps_per_epoch = 2
    grads = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)

    tx = train.make_optimizer(recipe, steps_per_epoch)
    params = np.ones(5, np.float32)
    opt_state = tx.init(params)
    for g in grads:
      updates, opt_state = tx.update(g, opt_state, params)
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

  def test_recipe_from_config(self):
    config = ml_collections.ConfigDict({
        'learning_rate': 0.01, 'momentum': 0.0, 'epochs': 8,
        'decay_epochs': [], 'batch_size': 64})
    self.assertEqual(train.Recipe.from_config(config),
                     train.Recipe(0.01, 0.0, 8, (), 64))

  def test_unknown_loss_is_refused(self):
    with self.assertRaisesRegex(ValueError, 'hinge'):
      train.make_eval_step(models.ResNetTiny(num_outputs=3),
                           mesh=train.make_mesh(), loss='hinge')


if __name__ == '__main__':
  absltest.main()
