"""Executors and the model's formulations, chosen once from the devices."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from mufax import conv
from mufax import engine
from mufax import executors
from mufax import models
from mufax import pooling
from mufax import train


@dataclasses.dataclass(frozen=True)
class FakeDevice:
  """What an engine reads of a device before it runs anything."""
  platform: str
  id: int = 0


def tiny_engine(devices, **kwargs):
  splits = {'train': {'image': np.zeros((4, 16, 16, 3), np.uint8),
                      'label': np.zeros(4, np.int64)}}
  return engine.Engine(models.ResNetTiny(num_outputs=3), loss_kind='softmax',
                       splits=splits, log_every_s=1e9, devices=devices,
                       **kwargs)


def primitives(model) -> str:
  """The primitives of the model's training forward pass, as traced."""
  variables = jax.eval_shape(
      lambda: models.init_variables(model, jax.random.key(0), 32))
  jaxpr = jax.make_jaxpr(lambda v: model.apply(
      v, jnp.zeros((2, 32, 32, 3)), train=True, mutable=['batch_stats']))(
          variables)
  return ' '.join(str(e.primitive) for e in jaxpr.jaxpr.eqns)


class ExecutorTest(absltest.TestCase):

  def test_auto_is_host_on_cpu_and_the_loop_elsewhere(self):
    self.assertEqual(executors.choose_executor('auto', 'cpu'), executors.HOST)
    for platform in ('gpu', 'tpu'):
      self.assertEqual(executors.choose_executor('auto', platform),
                       executors.LOOP)
      self.assertEqual(executors.choose_executor('host', platform),
                       executors.HOST)
    self.assertEqual(executors.choose_executor('loop', 'cpu'), executors.LOOP)
    with self.assertRaisesRegex(ValueError, "'fast'"):
      executors.choose_executor('fast', 'cpu')

  def test_an_engine_off_cpu_builds_the_native_model(self):
    gpu = tiny_engine([FakeDevice('gpu')])
    self.assertEqual((gpu.platform, gpu.executor), ('gpu', executors.LOOP))
    self.assertIs(gpu.model.conv, conv.Conv)
    self.assertIs(gpu.model.pool, pooling.max_pool)
    # All members at once: the one-by-one default is for XLA's CPU.
    self.assertIsNone(gpu.members_per_call)
    cpu = tiny_engine(jax.devices()[:1])
    self.assertEqual((cpu.platform, cpu.executor), ('cpu', executors.HOST))
    self.assertIs(cpu.model.pool, pooling.cpu_max_pool)
    self.assertEqual(cpu.members_per_call, 1)
    # What is traced: CPU's custom gradients, or none of them.
    self.assertIn('custom_vjp_call', primitives(cpu.model))
    self.assertNotIn('custom_vjp_call', primitives(gpu.model))
    # A model that names its formulations keeps them on any platform.
    chosen = tiny_engine([FakeDevice('tpu')]).model.clone(
        conv=conv.CpuConv)
    self.assertIs(models.for_platform(chosen, 'tpu').conv, conv.CpuConv)

  def test_a_forced_executor_keeps_the_platforms_formulations(self):
    forced = tiny_engine(jax.devices()[:1], executor=executors.LOOP)
    self.assertEqual(forced.executor, executors.LOOP)
    self.assertIs(forced.model.conv, conv.CpuConv)
    self.assertIsNone(forced.members_per_call)

  def test_checkpoints_fingerprint_the_architecture_not_the_formulations(self):
    # A function's repr holds its address, which differs between processes;
    # a checkpoint saved before models named their pool says `conv = Conv`.
    model = models.ResNetTiny(num_outputs=3)
    saved = ('ResNet(\n    # attributes\n    stage_sizes = (1, 1, 1, 1)\n'
             '    num_outputs = 3\n    num_filters = 4\n    dtype = float32'
             '\n    conv = Conv\n)')
    self.assertEqual(
        {train.architecture(repr(models.for_platform(model, p)))
         for p in ('cpu', 'gpu')} | {train.architecture(saved)},
        {train.architecture(repr(model))})
    self.assertNotIn('0x', train.architecture(repr(models.for_platform(
        model, 'cpu'))))
    self.assertNotEqual(train.architecture(repr(model)), train.architecture(
        repr(models.ResNetTiny(num_outputs=8))))


if __name__ == '__main__':
  absltest.main()
