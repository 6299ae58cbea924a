"""Tests of mufax.input_pipeline: reading, batching, device splits, augment."""

import math
import os
import shutil
import tempfile

from absl.testing import absltest
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from mufax import input_pipeline as ip
from mufax.data import face_builder

_SIZE = 8
# split -> identities; examples cycle over them.
_LAYOUT = {'forget': ['f0', 'f1'], 'retain': ['r0', 'r1'], 'test': ['t0'],
           'unseen': ['u0', 'u1']}
_PER_SPLIT = 3


def _pixels(file_name: str) -> np.ndarray:
  seed = sum(ord(ch) * 31**i for i, ch in enumerate(file_name)) % 2**32
  return np.random.default_rng(seed).integers(0, 256, (_SIZE, _SIZE, 3),
                                              dtype=np.uint8)


class _TinyFaces(face_builder.FaceDatasetBuilder):
  VERSION = tfds.core.Version('1.0.0')
  # Where TFDS looks for README/CITATIONS; the default is this module's file.
  pkg_dir_path = epath.Path(os.path.dirname(os.path.abspath(__file__)))

  def _image_size(self):
    return _SIZE

  def _forget_retain_disjoint(self):
    return True

  def _label(self, i):
    return i % 3

  def _read_index(self, dl_manager):
    index = {
        split: [face_builder.FaceRecord(f'{split}{i}.png', ids[i % len(ids)],
                                        self._label(i), f'row {i}')
                for i in range(_PER_SPLIT)]
        for split, ids in _LAYOUT.items()}
    index['train'] = index['forget'] + index['retain']
    return index

  def _image(self, record):
    return Image.fromarray(_pixels(record.file_name))


class InputPipelineTestFaces(_TinyFaces):

  def _label_feature(self):
    return tfds.features.ClassLabel(num_classes=3)


class InputPipelineTestMultiFaces(_TinyFaces):

  def _label_feature(self):
    return tfds.features.Tensor(shape=(3,), dtype=np.int64)

  def _label(self, i):
    return (i % 2, (i + 1) % 2, 1)


class ReadTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # A folder of this run's own: a fixed one would hand a later run (or a
    # concurrent one) the datasets an earlier version of the builders made.
    cls.data_dir = tempfile.mkdtemp(prefix='input_pipeline_read-')
    for builder_cls in (InputPipelineTestFaces, InputPipelineTestMultiFaces):
      builder_cls(data_dir=cls.data_dir,
                  file_format='array_record').download_and_prepare()

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.data_dir, ignore_errors=True)
    super().tearDownClass()

  def open(self, split, name='input_pipeline_test_faces',
           decode_images=True):
    # Undecoded, `read_split` decodes the images on a thread pool.
    return tfds.data_source(
        name, split=split, data_dir=self.data_dir,
        decoders=None if decode_images else {
            'image': tfds.decode.SkipDecoding()})

  def test_reads_whole_split_in_order(self):
    for decode_images in (False, True):
      data = ip.read_split(self.open('train', decode_images=decode_images))
      names = [f'forget{i}.png' for i in range(3)] + [
          f'retain{i}.png' for i in range(3)]
      self.assertEqual(list(data['file_name']), names)
      self.assertEqual(list(data['identity']),
                       ['f0', 'f1', 'f0', 'r0', 'r1', 'r0'])
      np.testing.assert_array_equal(data['label'], [0, 1, 2, 0, 1, 2])
      self.assertEqual(data['image'].dtype, np.uint8)
      np.testing.assert_array_equal(data['image'],
                                    np.stack([_pixels(n) for n in names]))

  def test_reads_given_indices_and_skips_images(self):
    source = self.open('retain', decode_images=False)
    data = ip.read_split(source, [2, 0], chunk=1)
    self.assertEqual(list(data['file_name']), ['retain2.png', 'retain0.png'])
    np.testing.assert_array_equal(data['image'][0], _pixels('retain2.png'))
    labels_only = ip.read_split(source, images=False)
    self.assertNotIn('image', labels_only)
    self.assertLen(labels_only['label'], 3)

  def test_multi_label(self):
    data = ip.read_split(
        self.open('test', name='input_pipeline_test_multi_faces'))
    self.assertEqual(data['label'].shape, (3, 3))
    np.testing.assert_array_equal(data['label'][1], [1, 0, 1])

class BatchingTest(absltest.TestCase):

  def test_shuffle_is_a_fixed_permutation_per_seed_and_epoch(self):
    epoch0 = ip.epoch_order(100, shuffle=True, seed=42, epoch=0).tolist()
    self.assertEqual(sorted(epoch0), list(range(100)))
    self.assertEqual(epoch0, ip.epoch_order(100, shuffle=True, seed=42,
                                            epoch=0).tolist())
    self.assertNotEqual(epoch0, ip.epoch_order(100, shuffle=True, seed=42,
                                               epoch=1).tolist())
    self.assertNotEqual(epoch0, ip.epoch_order(100, shuffle=True, seed=43,
                                               epoch=0).tolist())
    self.assertNotEqual(epoch0, list(range(100)))
    self.assertEqual(ip.epoch_order(5, shuffle=False).tolist(), [0, 1, 2, 3, 4])


class DeviceSplitTest(absltest.TestCase):

  def test_device_gather_equals_host_indexing(self):
    rng = np.random.default_rng(0)
    data = {'image': rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8),
            'label': np.arange(10), 'identity': np.array(list('abcdefghij'))}
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
    for target in (None, mesh):
      on_device = ip.device_put_split(data, target)
      self.assertEqual(set(on_device), {'image', 'label'})
      if target is not None:
        self.assertTrue(on_device['image'].sharding.is_fully_replicated)
      gather = jax.jit(ip.gather_batch)
      order = ip.epoch_order(10, shuffle=True, seed=1)
      for idx in (order[:4], order[4:8], order[8:]):
        got = gather(on_device, jnp.asarray(idx))
        np.testing.assert_array_equal(got['image'], data['image'][idx])
        np.testing.assert_array_equal(got['label'], data['label'][idx])


def _fixed(n, *, flip=False, shear=0.0, scale=1.0, factors=(1.0, 1.0, 1.0),
           order=(0, 1, 2)):
  return {'flip': jnp.full((n,), flip), 'shear': jnp.full((n,), shear),
          'scale': jnp.full((n,), scale),
          'factors': jnp.tile(jnp.asarray(factors, jnp.float32), (n, 1)),
          'order': jnp.tile(jnp.asarray(order, jnp.int32), (n, 1))}


def _pil_affine(image: np.ndarray, shear: float, scale: float) -> np.ndarray:
  """torchvision's F.affine(pil, 0, (0, 0), scale, (shear, 0), NEAREST, 0)."""
  h, w = image.shape[:2]
  cx, cy = w * 0.5, h * 0.5
  # _get_inverse_affine_matrix with angle 0, no translation, no y-shear.
  b = -math.tan(math.radians(shear))
  matrix = [1 / scale, -b / scale, 0.0, 0.0, 1 / scale, 0.0]
  matrix[2] += cx - matrix[0] * cx - matrix[1] * cy
  matrix[5] += cy - matrix[3] * cx - matrix[4] * cy
  return np.asarray(Image.fromarray(image).transform(
      (w, h), Image.AFFINE, matrix, resample=Image.NEAREST, fillcolor=0))


def _jitter_reference(images, factors, order):
  """Per image, the three ops one after the other, in float64."""
  out = []
  for x, f, o in zip(np.asarray(images, np.float64), factors, order):
    for op in o:
      gray = x @ np.array([0.299, 0.587, 0.114])
      ref = [0.0, gray.mean(), gray[..., None]][op]
      x = np.clip(f[op] * x + (1 - f[op]) * ref, 0, 1)
    out.append(x)
  return np.stack(out)


class AugmentTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.images = np.random.default_rng(0).integers(0, 256, (5, 16, 12, 3),
                                                    dtype=np.uint8)

  def test_shape_dtype_range(self):
    aug = jax.jit(ip.augment)
    for images in (self.images, self.images[:1], ip.to_float(self.images)):
      out = aug(images, jax.random.key(0))
      self.assertEqual(out.shape, images.shape)
      self.assertEqual(out.dtype, jnp.float32)
      self.assertGreaterEqual(float(out.min()), 0.0)
      self.assertLessEqual(float(out.max()), 1.0)

  def test_same_rng_same_output(self):
    a = ip.augment(self.images, jax.random.key(1))
    # Compiled, XLA may fuse a multiply-add: the last bit may differ.
    np.testing.assert_allclose(a, jax.jit(ip.augment)(self.images,
                                                      jax.random.key(1)),
                               rtol=0, atol=1e-6)
    self.assertFalse(np.array_equal(a, ip.augment(self.images,
                                                  jax.random.key(2))))

  def test_sampled_params_in_range(self):
    p = ip.sample_augment_params(jax.random.key(3), 500)
    self.assertTrue(np.all(np.abs(p['shear']) <= 10))
    self.assertTrue(np.all((p['scale'] >= 0.8) & (p['scale'] <= 1.2)))
    self.assertTrue(np.all((p['factors'] >= 0.8) & (p['factors'] <= 1.2)))
    np.testing.assert_array_equal(np.sort(p['order'], axis=1),
                                  np.tile([0, 1, 2], (500, 1)))
    self.assertBetween(float(np.mean(p['flip'])), 0.4, 0.6)
    self.assertLen({tuple(o) for o in np.asarray(p['order'])}, 6)

  def test_neutral_params_are_identity_and_flip_mirrors(self):
    n = len(self.images)
    expected = ip.to_float(self.images)
    np.testing.assert_allclose(ip.apply_augment(self.images, _fixed(n)),
                               expected, atol=1e-6)
    np.testing.assert_allclose(
        ip.apply_augment(self.images, _fixed(n, flip=True)),
        expected[:, :, ::-1], atol=1e-6)

  def test_affine_matches_torchvision_on_pil(self):
    rng = np.random.default_rng(1)
    images = rng.integers(1, 256, (6, 32, 32, 3), dtype=np.uint8)
    shear = np.array([-10, -3.7, 0, 2.5, 9.9, 10], np.float32)
    scale = np.array([0.8, 1.2, 0.93, 1.07, 1.0, 0.87], np.float32)
    got = np.asarray(ip.geometric(images, jnp.zeros(6, bool), shear, scale))
    for i in range(6):
      want = _pil_affine(images[i], float(shear[i]), float(scale[i]))
      # Exact: no source point here lies within float32 rounding of a pixel
      # border, where PIL (double precision) could round the other way.
      np.testing.assert_array_equal(got[i], want)
    self.assertTrue(np.all(got[0, 0, 0] == 0))  # Shrunk: black corners.
    flipped = ip.geometric(images, jnp.ones(6, bool), shear, scale)
    np.testing.assert_array_equal(
        flipped[1], _pil_affine(images[1, :, ::-1], float(shear[1]),
                                float(scale[1])))

  def test_color_jitter_matches_sequential_reference(self):
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 1, (6, 8, 8, 3)).astype(np.float32)
    factors = rng.uniform(0.8, 1.2, (6, 3)).astype(np.float32)
    # Extreme factors make clipping and order matter.
    factors[:, 0] = 2.5
    order = np.array([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1],
                      [2, 1, 0]], np.int32)
    got = ip.color_jitter(images, factors, order)
    np.testing.assert_allclose(got, _jitter_reference(images, factors, order),
                               atol=1e-5)
    # The CPU's compiled loop over the ops computes the same.
    np.testing.assert_allclose(
        jax.jit(lambda *a: ip.color_jitter(*a, ops_in_loop=True))(
            images, factors, order), got, atol=1e-6)
    reordered = ip.color_jitter(images, factors, order[::-1])
    self.assertFalse(np.allclose(got, reordered, atol=1e-3))

  def test_grey_and_flat_images(self):
    grey = np.repeat(np.random.default_rng(3).uniform(0, 1, (2, 8, 8, 1)), 3,
                     axis=-1).astype(np.float32)
    saturation = ip.color_jitter(grey, np.array([[1, 1, 0.8]] * 2, np.float32),
                                 np.array([[2, 0, 1]] * 2, np.int32))
    np.testing.assert_allclose(saturation, grey, atol=1e-6)
    flat = np.full((1, 4, 4, 3), 0.3, np.float32)
    contrast = ip.color_jitter(flat, np.array([[1, 1.2, 1]], np.float32),
                               np.array([[1, 0, 2]], np.int32))
    np.testing.assert_allclose(contrast, flat, atol=1e-6)
    brightness = ip.color_jitter(flat, np.array([[1.2, 1, 1]], np.float32),
                                 np.array([[0, 1, 2]], np.int32))
    np.testing.assert_allclose(brightness, flat * 1.2, atol=1e-6)

  def test_eval_preprocessing(self):
    out = ip.to_float(np.array([[[[0, 51, 255]]]], np.uint8))
    self.assertEqual(out.dtype, jnp.float32)
    np.testing.assert_allclose(out[0, 0, 0], [0, 0.2, 1])


if __name__ == '__main__':
  absltest.main()
