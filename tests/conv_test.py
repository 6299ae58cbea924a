"""Every convolution formulation against XLA's native convolution."""

from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from mufax import conv
from mufax import conv_formulations

# (map size, kernel, stride, in, out): every kind of ResNet-18 convolution
# (7x7/2 stem, 3x3/1, 3x3/2, 1x1/2) on maps down to 1x1, odd sizes included.
SHAPES = [
    (9, 7, 2, 3, 4), (2, 7, 2, 3, 4),
    (1, 3, 1, 6, 5), (2, 3, 1, 6, 5), (3, 3, 1, 6, 5), (4, 3, 1, 6, 5),
    (7, 3, 1, 6, 5),
    (1, 3, 2, 6, 5), (2, 3, 2, 6, 5), (5, 3, 2, 6, 5), (8, 3, 2, 6, 5),
    (1, 1, 2, 6, 5), (7, 1, 2, 6, 5),
]
FORMULATIONS = (conv.PATCHES, conv.WINOGRAD, conv.DENSE)


def _supports(formulation, kernel_size, stride):
  return formulation != conv.WINOGRAD or (kernel_size, stride) == (3, 1)


def _cases(formulations=FORMULATIONS):
  return [dict(testcase_name=f'{f}_h{h}_k{k}_s{s}', formulation=f, size=h,
               kernel_size=k, stride=s, cin=cin, cout=cout)
          for f in formulations for h, k, s, cin, cout in SHAPES
          if _supports(f, k, s)]


def _inputs(size, kernel_size, stride, cin, cout, batch=2, dtype=jnp.float32):
  """Input (one column wider than tall), kernel and an output cotangent."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((batch, size, size + 1, cin))
  # Scaled so that outputs are O(1) and an absolute tolerance means something.
  kernel = (rng.standard_normal((kernel_size, kernel_size, cin, cout))
            / np.sqrt(kernel_size**2 * cin))
  out_shape = (batch,
               conv_formulations.output_size(size, kernel_size, stride),
               conv_formulations.output_size(size + 1, kernel_size, stride),
               cout)
  g = rng.standard_normal(out_shape)
  return tuple(jnp.asarray(a, dtype) for a in (x, kernel, g))


@jax.jit(static_argnums=(3, 4))
def _output_and_grads(x, kernel, g, stride, plan):
  y, vjp = jax.vjp(lambda x, k: conv.conv2d(x, k, stride, plan), x, kernel)
  return (y,) + vjp(g)


def _assert_close(test, actual, expected, tol):
  for name, a, e in zip(('output', 'input grad', 'kernel grad'), actual,
                        expected):
    test.assertEqual(a.shape, e.shape, name)
    test.assertEqual(a.dtype, e.dtype, name)
    np.testing.assert_allclose(np.asarray(a, np.float32),
                               np.asarray(e, np.float32), rtol=tol, atol=tol,
                               err_msg=name)


class FormulationTest(parameterized.TestCase):

  @parameterized.named_parameters(_cases())
  def test_matches_native(self, formulation, size, kernel_size, stride, cin,
                          cout):
    x, kernel, g = _inputs(size, kernel_size, stride, cin, cout)
    plan = conv.Formulations(formulation, formulation, formulation)
    _assert_close(self, _output_and_grads(x, kernel, g, stride, plan),
                  _output_and_grads(x, kernel, g, stride, conv.ALL_NATIVE),
                  tol=1e-5)

  @parameterized.parameters(*FORMULATIONS)
  def test_mixed_plan(self, formulation):
    x, kernel, g = _inputs(6, 3, 1, 4, 3)
    plan = conv.Formulations(conv.NATIVE, formulation, conv.NATIVE)
    _assert_close(self, _output_and_grads(x, kernel, g, 1, plan),
                  _output_and_grads(x, kernel, g, 1, conv.ALL_NATIVE),
                  tol=1e-5)

  @parameterized.product(formulation=(conv.PATCHES, conv.WINOGRAD),
                         batch_and_budget=((8, 10_000), (7, 1)))
  def test_in_batch_chunks(self, formulation, batch_and_budget):
    """The loop over batch chunks (large batches) agrees with one pass.

    With 8 images and a 10 kB budget chunks hold 2 or 4 images; with 7 (a
    prime) and 1 byte, one.
    """
    batch, budget = batch_and_budget
    x, kernel, g = _inputs(5, 3, 1, 4, 3, batch=batch)
    plan = conv.Formulations(formulation, formulation, formulation)
    with mock.patch.object(conv_formulations, '_CHUNK_BYTES', budget):
      chunked = _output_and_grads(x, kernel, g, 1, plan)
    _assert_close(self, chunked,
                  _output_and_grads(x, kernel, g, 1, conv.ALL_NATIVE),
                  tol=1e-5)

  @parameterized.named_parameters(
      c for c in _cases((conv.NATIVE,) + FORMULATIONS) if c['size'] == 7)
  def test_bfloat16(self, formulation, size, kernel_size, stride, cin, cout):
    x, kernel, g = _inputs(size, kernel_size, stride, cin, cout,
                           dtype=jnp.bfloat16)
    plan = conv.Formulations(formulation, formulation, formulation)
    actual = _output_and_grads(x, kernel, g, stride, plan)
    self.assertEqual({a.dtype for a in actual}, {jnp.dtype(jnp.bfloat16)})
    upcast = [a.astype(jnp.float32) for a in (x, kernel, g)]
    expected = _output_and_grads(*upcast, stride, conv.ALL_NATIVE)
    for name, a, e in zip(('output', 'input grad', 'kernel grad'), actual,
                          expected):
      # bfloat16 keeps 8 bits: errors relative to the largest value.
      error = np.max(np.abs(np.asarray(a, np.float32) - e)) / np.max(np.abs(e))
      self.assertLess(error, 2e-2, name)

  @parameterized.parameters(
      (conv.WINOGRAD, conv.PATCHES, conv.WINOGRAD),
      (conv.NATIVE, conv.DENSE, conv.NATIVE),
      (conv.DENSE, conv.NATIVE, conv.PATCHES))
  def test_second_order(self, *formulations):
    x, kernel, _ = _inputs(4, 3, 1, 3, 2)

    def grad_norm(kernel, plan):
      loss = lambda k: jnp.sum(jnp.tanh(conv.conv2d(x, k, 1, plan)))
      return jnp.sum(jnp.square(jax.grad(loss)(kernel)))

    np.testing.assert_allclose(
        jax.grad(grad_norm)(kernel, conv.Formulations(*formulations)),
        jax.grad(grad_norm)(kernel, conv.ALL_NATIVE), rtol=1e-4, atol=1e-4)


def _population_inputs(members, size, kernel_size, stride, cin, cout):
  """Per-member inputs, kernels and cotangents, stacked on a model axis."""
  parts = [_inputs(size, kernel_size, stride, cin, cout)]
  rng = np.random.default_rng(1)
  for _ in range(members - 1):
    parts.append(tuple(a * jnp.asarray(rng.uniform(0.5, 1.5, a.shape),
                                       a.dtype) for a in parts[0]))
  return tuple(jnp.stack(a) for a in zip(*parts))


class PopulationTest(parameterized.TestCase):
  """jax.vmap over a model axis: each member's convolution, as on its own."""

  # (map size, kernel, stride, in, out): the stem, a 3x3 on a 2x2 map, a
  # strided 3x3, a 3x3 on 5x6 (Winograd's odd size); each with every
  # formulation that has it.
  @parameterized.parameters(*(
      dict(shape=shape, formulation=formulation)
      for shape in ((9, 7, 2, 3, 4), (2, 3, 1, 6, 5), (5, 3, 2, 6, 5),
                    (5, 3, 1, 6, 5))
      for formulation in (conv.NATIVE,) + FORMULATIONS
      if _supports(formulation, shape[1], shape[2])))
  def test_vmap_equals_members(self, shape, formulation):
    size, kernel_size, stride, cin, cout = shape
    x, kernel, g = _population_inputs(3, *shape)
    # Not all-native (conv2d would call lax.conv directly): the input
    # gradient of another formulation.
    other = conv.PATCHES if formulation == conv.NATIVE else conv.NATIVE
    plan = conv.Formulations(formulation, other, formulation)
    vmapped = jax.jit(jax.vmap(_output_and_grads, (0, 0, 0, None, None)),
                      static_argnums=(3, 4))(x, kernel, g, stride, plan)
    members = [_output_and_grads(x[m], kernel[m], g[m], stride, plan)
               for m in range(3)]
    expected = [jnp.stack(a) for a in zip(*members)]
    _assert_close(self, vmapped, expected, tol=1e-5)
    _assert_close(self, vmapped, jax.vmap(
        _output_and_grads, (0, 0, 0, None, None))(x, kernel, g, stride,
                                                  conv.ALL_NATIVE), tol=1e-5)

  def test_vmap_of_a_shared_kernel(self):
    x, kernel, g = _population_inputs(2, 2, 3, 1, 6, 5)
    plan = conv.cpu_formulations(x.shape[1:], kernel.shape[1:], 1)
    vmapped = jax.vmap(_output_and_grads, (0, None, 0, None, None))(
        x, kernel[0], g, 1, plan)
    expected = jax.vmap(_output_and_grads, (0, None, 0, None, None))(
        x, kernel[0], g, 1, conv.ALL_NATIVE)
    _assert_close(self, vmapped, expected, tol=1e-5)

  def test_vmap_of_second_order(self):
    x, kernel, _ = _population_inputs(2, 4, 3, 1, 3, 2)

    def grad_norm(x, kernel, plan):
      loss = lambda k: jnp.sum(jnp.tanh(conv.conv2d(x, k, 1, plan)))
      return jnp.sum(jnp.square(jax.grad(loss)(kernel)))

    plan = conv.Formulations(conv.NATIVE, conv.WINOGRAD, conv.DENSE)
    grads = jax.vmap(jax.grad(grad_norm, 1), (0, 0, None))
    np.testing.assert_allclose(grads(x, kernel, plan),
                               grads(x, kernel, conv.ALL_NATIVE), rtol=1e-4,
                               atol=1e-4)

  def test_no_grouped_convolution(self):
    """Batched over members, the stem runs as the members' convolutions."""
    x, kernel, g = _population_inputs(2, 9, 7, 2, 3, 4)
    plan = conv.Formulations(conv.NATIVE, conv.NATIVE, conv.PATCHES)
    hlo = jax.jit(jax.vmap(_output_and_grads, (0, 0, 0, None, None)),
                  static_argnums=(3, 4)).lower(x, kernel, g, 2,
                                               plan).as_text()
    self.assertIn('convolution', hlo)
    self.assertNotRegex(hlo, r'feature_group_count = [2-9]')


class PlanTest(parameterized.TestCase):

  @parameterized.parameters(32, 64, 96, 128, 224)
  def test_resnet18_shapes_are_supported(self, image_size):
    h = conv_formulations.output_size(image_size, 7, 2)
    shapes = [((64, image_size, image_size, 3), (7, 7, 3, 64), 2)]
    h = conv_formulations.output_size(h, 3, 2)
    cin = 64
    for cout in (64, 128, 256, 512):
      stride = 1 if cout == 64 else 2
      shapes.append(((64, h, h, cin), (3, 3, cin, cout), stride))
      if stride == 2:
        shapes.append(((64, h, h, cin), (1, 1, cin, cout), 2))
      h = conv_formulations.output_size(h, 3, stride)
      shapes.append(((64, h, h, cout), (3, 3, cout, cout), 1))
      cin = cout
    for x_shape, kernel_shape, stride in shapes:
      plan = conv.cpu_formulations(x_shape, kernel_shape, stride)
      for formulation in plan:
        self.assertIn(formulation, (conv.NATIVE,) + FORMULATIONS)
        self.assertTrue(_supports(formulation, kernel_shape[0], stride),
                        (x_shape, kernel_shape, stride, plan))

  def test_avoids_slow_native_shapes(self):
    # Where XLA's CPU convolution takes 30-100x the matmul time.
    slow = [((64, 2, 2, 512), (3, 3, 512, 512), 1, 'forward'),
            ((64, 1, 1, 512), (3, 3, 512, 512), 1, 'forward'),
            ((64, 2, 2, 256), (3, 3, 256, 512), 2, 'forward'),
            ((64, 4, 4, 256), (3, 3, 256, 512), 2, 'input_grad')]
    for x_shape, kernel_shape, stride, product in slow:
      plan = conv.cpu_formulations(x_shape, kernel_shape, stride)
      self.assertNotEqual(getattr(plan, product), conv.NATIVE, x_shape)

  def test_small_maps_run_natively_where_winograd_is_slower(self):
    # Per-layer timings in mufax/conv.py: on 8x8 and smaller maps Winograd's
    # transforms cost as much as its products, except for the widest layers.
    native_forward = [((64, 8, 8, 128), (3, 3, 128, 128)),
                      ((64, 4, 4, 256), (3, 3, 256, 256)),
                      ((64, 4, 4, 128), (3, 3, 128, 128))]
    winograd = [((64, 16, 16, 64), (3, 3, 64, 64)),
                ((64, 8, 8, 256), (3, 3, 256, 256)),
                ((64, 4, 4, 512), (3, 3, 512, 512))]
    for x_shape, kernel_shape in native_forward:
      plan = conv.cpu_formulations(x_shape, kernel_shape, 1)
      self.assertEqual(plan[:2], (conv.NATIVE, conv.NATIVE), x_shape)
    for x_shape, kernel_shape in winograd:
      self.assertEqual(conv.cpu_formulations(x_shape, kernel_shape, 1),
                       (conv.WINOGRAD,) * 3, x_shape)

  def test_output_size_is_torchs(self):
    for size in range(1, 12):
      for k, s in ((7, 2), (3, 1), (3, 2), (1, 2)):
        y = jax.eval_shape(
            lambda x, kernel: conv_formulations.native(x, kernel, s),
            jnp.zeros((1, size, size, 1)), jnp.zeros((k, k, 1, 1)))
        self.assertEqual(y.shape[1], (size + 2 * (k // 2) - k) // s + 1)
        self.assertEqual(y.shape[1], conv_formulations.output_size(size, k, s))


class ConvModuleTest(parameterized.TestCase):

  def test_parameter(self):
    module = conv.Conv(5, 3, 2, dtype=jnp.bfloat16)
    variables = jax.eval_shape(module.init, jax.random.key(0),
                               jnp.zeros((2, 7, 7, 4)))
    self.assertEqual(jax.tree.map(lambda v: (v.shape, v.dtype), variables),
                     {'params': {'kernel': ((3, 3, 4, 5), jnp.float32)}})

  @parameterized.parameters('Conv', 'CpuConv')
  def test_gradients(self, module):
    x, kernel, _ = _inputs(7, 3, 2, 4, 5)

    def loss(params, x, apply):
      return jnp.sum(jnp.sin(apply(params, x)))

    def native(params, x):
      return conv_formulations.native(x, params['kernel'], 2)

    actual = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)(
        {'kernel': kernel}, x,
        lambda p, x: getattr(conv, module)(5, 3, 2).apply({'params': p}, x))
    expected = jax.grad(loss, (0, 1))({'kernel': kernel}, x, native)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)

  def test_bfloat16(self):
    x, kernel, _ = _inputs(4, 3, 1, 3, 8)
    y = jax.jit(conv.Conv(8, 3, 1, dtype=jnp.bfloat16).apply)(
        {'params': {'kernel': kernel}}, x)
    self.assertEqual(y.dtype, jnp.bfloat16)


if __name__ == '__main__':
  absltest.main()
