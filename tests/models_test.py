"""The Flax ResNet against a torchvision-structured PyTorch ResNet."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl.testing import absltest
from absl.testing import parameterized

from mufax import convert
from mufax import models
from mufax import torch_resnet
from mufax import losses


def randomize_batchnorm(net: torch.nn.Module, seed: int) -> None:
  """Non-trivial affine parameters and running statistics everywhere."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        n = m.num_features
        m.weight.copy_(0.5 + torch.rand(n, generator=g))
        m.bias.copy_(0.2 * torch.randn(n, generator=g))
        m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
        m.running_var.copy_(0.5 + torch.rand(n, generator=g))


def converted(net: torch.nn.Module, model) -> dict:
  template = jax.eval_shape(
      lambda: models.init_variables(model, jax.random.key(0), 32))
  return models.from_torch_state_dict(net.state_dict(), template)


def to_torch_images(images: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


class TorchEquivalenceTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('mufac', 8, 'softmax', 128), ('multilabel', 3, 'sigmoid', 64),
      ('binary', 2, 'softmax', 37))
  def test_resnet18_eval_logits_and_losses_match(self, outputs, loss, size):
    torch.manual_seed(0)
    net = torch_resnet.resnet18(num_classes=outputs)
    randomize_batchnorm(net, seed=1)
    net.eval()
    model = models.ResNet18(num_outputs=outputs)
    variables = converted(net, model)
    rng = np.random.default_rng(0)
    images = rng.random((4, size, size, 3), dtype=np.float32)
    if loss == 'softmax':
      labels = rng.integers(0, outputs, 4)
    else:
      labels = rng.integers(0, 2, (4, outputs))

    ours = model.apply(variables, jnp.asarray(images), train=False)
    with torch.no_grad():
      theirs = net(to_torch_images(images))
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=1e-4,
                               rtol=0)
    # The logits differ from each other, so the check above is not vacuous.
    self.assertGreater(float(theirs.std()), 1e-2)

    our_losses = losses.per_sample_loss(ours, jnp.asarray(labels), loss)
    if loss == 'softmax':
      their_losses = torch.nn.functional.cross_entropy(
          theirs, torch.from_numpy(labels), reduction='none')
    else:
      their_losses = torch.nn.functional.binary_cross_entropy_with_logits(
          theirs, torch.from_numpy(labels).float(),
          reduction='none').mean(1)
    np.testing.assert_allclose(np.asarray(our_losses), their_losses.numpy(),
                               atol=1e-4, rtol=0)

  def test_train_mode_output_and_running_statistics_match(self):
    torch.manual_seed(0)
    net = torch_resnet.ResNet((1, 1, 1, 1), num_classes=3, width=4)
    randomize_batchnorm(net, seed=2)
    model = models.ResNetTiny(num_outputs=3)
    variables = converted(net, model)
    images = np.random.default_rng(1).random((6, 32, 32, 3), np.float32)

    ours, updates = model.apply(variables, jnp.asarray(images), train=True,
                                mutable=['batch_stats'])
    net.train()
    with torch.no_grad():
      theirs = net(to_torch_images(images))
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=1e-4)
    # torch updates running_var with the unbiased variance; so must we.
    after = models.to_torch_state_dict({'params': variables['params'],
                                        'batch_stats': updates['batch_stats']})
    for key, value in net.state_dict().items():
      if key.endswith(('running_mean', 'running_var')):
        np.testing.assert_allclose(after[key], value.numpy(), atol=1e-5,
                                   err_msg=key)

  def test_round_trip_through_state_dict_and_multilabel_head_name(self):
    model = models.ResNetTiny(num_outputs=3)
    variables = models.init_variables(model, jax.random.key(3), 32)
    state_dict = models.to_torch_state_dict(variables, head_prefix='fc.fc')
    self.assertIn('fc.fc.weight', state_dict)
    self.assertIn('layer2.0.downsample.1.running_var', state_dict)
    self.assertIn('bn1.num_batches_tracked', state_dict)
    back = models.from_torch_state_dict(state_dict, variables)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, variables)

  def test_resnet18_has_torchvision_keys_and_size(self):
    model = models.ResNet18(num_outputs=8)
    variables = jax.eval_shape(
        lambda: models.init_variables(model, jax.random.key(0), 32))
    ours = models.to_torch_state_dict(
        jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype),
                               variables))
    theirs = torch_resnet.resnet18(num_classes=8).state_dict()
    self.assertEqual(sorted(ours), sorted(theirs))
    for key, value in theirs.items():
      self.assertEqual(ours[key].shape, tuple(value.shape), key)
    self.assertEqual(
        sum(x.size for x in jax.tree_util.tree_leaves(variables['params'])),
        11_180_616)

  def test_bad_state_dicts_are_named(self):
    model = models.ResNetTiny(num_outputs=3)
    variables = models.init_variables(model, jax.random.key(0), 32)
    state_dict = models.to_torch_state_dict(variables)
    missing = dict(state_dict)
    del missing['layer3.0.bn2.running_mean']
    with self.assertRaisesRegex(ValueError, 'layer3.0.bn2.running_mean'):
      models.from_torch_state_dict(missing, variables)
    with self.assertRaisesRegex(ValueError, 'num_outputs'):
      models.from_torch_state_dict(
          state_dict, models.init_variables(models.ResNetTiny(num_outputs=8),
                                            jax.random.key(0), 32))
    with self.assertRaisesRegex(ValueError, 'extra.weight'):
      models.from_torch_state_dict(
          {**state_dict, 'extra.weight': np.zeros(1)}, variables)

  def test_bfloat16_computes_in_bf16_and_keeps_float32_state(self):
    variables = models.init_variables(models.ResNetTiny(num_outputs=3),
                                      jax.random.key(0), 32)
    images = jnp.asarray(
        np.random.default_rng(0).random((4, 32, 32, 3), np.float32))
    full = models.ResNetTiny(num_outputs=3).apply(variables, images,
                                                   train=False)
    mixed_model = models.ResNetTiny(num_outputs=3, dtype=jnp.bfloat16)
    mixed, updates = mixed_model.apply(variables, images, train=True,
                                       mutable=['batch_stats'])
    self.assertEqual(mixed.dtype, jnp.float32)
    self.assertEqual(
        {x.dtype for x in jax.tree_util.tree_leaves(updates)},
        {np.dtype(np.float32)})
    eval_mixed = mixed_model.apply(variables, images, train=False)
    np.testing.assert_allclose(eval_mixed, full, atol=0.05, rtol=0.05)
    self.assertFalse(np.array_equal(np.asarray(eval_mixed), np.asarray(full)))

  def test_initialisation_follows_torchvision(self):
    model = models.ResNet18(num_outputs=8)
    params = models.init_variables(model, jax.random.key(0), 32)['params']
    # kaiming_normal_(fan_out): std sqrt(2 / (k * k * out)).
    kernel = np.asarray(params['layer3_0']['conv1']['kernel'])
    self.assertAlmostEqual(kernel.std(), np.sqrt(2 / (9 * 256)), delta=2e-4)
    # nn.Linear: U(-1/sqrt(512), 1/sqrt(512)) for weight and bias.
    bound = 1 / np.sqrt(512)
    self.assertLessEqual(np.abs(params['fc']['kernel']).max(), bound)
    self.assertGreater(np.abs(params['fc']['kernel']).max(), 0.9 * bound)
    self.assertLessEqual(np.abs(params['fc']['bias']).max(), bound)
    self.assertFalse(np.all(np.asarray(params['fc']['bias']) == 0))


class ConvertTest(absltest.TestCase):

  def test_pth_file_converts_to_a_checkpoint_that_gives_torch_logits(self):
    torch.manual_seed(0)
    net = torch_resnet.ResNet((1, 1, 1, 1), num_classes=3, width=4)
    randomize_batchnorm(net, seed=3)
    net.eval()
    tmp = self.create_tempdir().full_path
    # The reference's multi-label model names its head fc.fc.
    state_dict = {k.replace('fc.', 'fc.fc.'): v
                  for k, v in net.state_dict().items()}
    torch.save(state_dict, f'{tmp}/model.pth')

    arch, variables = convert.convert(
        convert.read_torch_checkpoint(f'{tmp}/model.pth'))
    self.assertEqual(arch, {'stage_sizes': [1, 1, 1, 1], 'num_filters': 4,
                            'num_outputs': 3})
    convert.save(f'{tmp}/ckpt', arch, variables)
    model, restored, image_size = convert.load(f'{tmp}/ckpt')
    self.assertEqual(image_size, 128)

    images = np.random.default_rng(0).random((2, 40, 40, 3), np.float32)
    with torch.no_grad():
      theirs = net(to_torch_images(images)).numpy()
    ours = model.apply(restored, jnp.asarray(images), train=False)
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-5)

  def test_clear_errors(self):
    tmp = self.create_tempdir().full_path
    with self.assertRaisesRegex(FileNotFoundError, 'missing.pth'):
      convert.read_torch_checkpoint(f'{tmp}/missing.pth')
    with self.assertRaisesRegex(ValueError, 'not a torchvision ResNet'):
      convert.convert({'weight': np.zeros(3)})
    with self.assertRaisesRegex(FileNotFoundError, 'No converted'):
      convert.load(tmp)


if __name__ == '__main__':
  absltest.main()
