"""Reading face splits, ordering them like a DataLoader, augmenting in JAX.

Splits are TFDS datasets read by random access (a builder's
`as_data_source`, no TensorFlow) into numpy, then held in device memory
(`device_put_split`) and batched there (`gather_batch`) from index plans that follow
`DataLoader(batch_size, shuffle, drop_last=False)`: the last batch may be
partial, because some unlearning methods skip batches smaller than 64. The
train-time augmentation (protocol §2.3) is a pure JAX function that runs
inside the compiled step.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Batch = dict[str, np.ndarray]

# protocol §2.3: RandomAffine(0, shear=10, scale=(0.8, 1.2)),
# ColorJitter(0.2, 0.2, 0.2).
MAX_SHEAR_DEGREES = 10.0
SCALE_RANGE = (0.8, 1.2)
JITTER = 0.2
# Jitter ops; their factor columns in `factors`, and their codes in `order`.
BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


# ----------------------------------------------------------------- reading


def read_split(source, indices: Sequence[int] | np.ndarray | None = None, *,
               images: bool = True, chunk: int = 1024,
               num_threads: int | None = None) -> Batch:
  """Reads the examples at `indices` (default: all, in order) into numpy.

  Returns `image` (uint8 [N, H, W, 3], only if `images`), `label` (int64 [N]
  or [N, K]), `identity` and `file_name` (str [N]).
  """
  indices = (np.arange(len(source)) if indices is None
             else np.asarray(indices, dtype=np.int64).reshape(-1))
  image_feature = source.dataset_info.features['image']
  records = []
  for start in range(0, len(indices), chunk):
    records.extend(source.__getitems__(
        [int(i) for i in indices[start:start + chunk]]))
  out = {
      'label': np.asarray([r['label'] for r in records], dtype=np.int64),
      'identity': _strings(r['identity'] for r in records),
      'file_name': _strings(r['file_name'] for r in records),
  }
  if not images:
    return out
  shape = tuple(image_feature.shape)
  out['image'] = np.empty((len(records),) + shape, dtype=np.uint8)
  if records and not isinstance(records[0]['image'], bytes):
    for i, r in enumerate(records):
      out['image'][i] = r['image']
    return out

  # The codecs release the GIL for part of the work: threads gain 1.1-1.4x
  # on 2 cores (JPEG, PNG).
  def decode(i):
    out['image'][i] = image_feature.decode_example_np(records[i]['image'])

  with concurrent.futures.ThreadPoolExecutor(
      num_threads or os.cpu_count() or 1) as pool:
    list(pool.map(decode, range(len(records)), chunksize=64))
  return out


def _strings(values) -> np.ndarray:
  return np.asarray([v.decode() if isinstance(v, bytes) else str(v)
                     for v in values], dtype=str)


# ---------------------------------------------------------------- batching


def epoch_order(n: int, *, shuffle: bool, seed: int = 0,
                epoch: int = 0) -> np.ndarray:
  """One epoch's global example order: a permutation fixed by (seed, epoch)."""
  if not shuffle:
    return np.arange(n)
  return np.random.default_rng([seed, epoch]).permutation(n)


# ---------------------------------------------------- device-resident splits


def device_put_split(data: Mapping[str, np.ndarray],
                     mesh: jax.sharding.Mesh | None = None
                     ) -> dict[str, jax.Array]:
  """The split's numeric arrays in device memory, replicated over `mesh`.

  String arrays (identity, file_name) stay on the host: devices hold no text.
  """
  target = (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            if mesh is not None else jax.devices()[0])
  return {k: jax.device_put(v, target) for k, v in data.items()
          if np.asarray(v).dtype.kind in 'biuf'}


def gather_batch(data: Mapping[str, jax.Array],
                 indices: jax.Array) -> dict[str, jax.Array]:
  """The batch at `indices` of a device-resident split; jit-able."""
  return {k: jnp.take(v, indices, axis=0) for k, v in data.items()}


# ------------------------------------------------------------ augmentation


def to_float(images: jax.Array) -> jax.Array:
  """Evaluation preprocessing: [0, 1] float32, at the stored size (the
  engine resizes to `config.data.image_size` where it differs)."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def sample_augment_params(rng: jax.Array, n: int) -> dict[str, jax.Array]:
  """Per-image random draws of the train-time augmentation (protocol §2.3).

  All of them come from one uniform draw of [n, 9]: every separate random
  call inlines its own copy of the generator, which XLA's CPU compiler
  takes seconds over.
  """
  u = jax.random.uniform(rng, (n, 9))
  between = lambda u, low, high: low + (high - low) * u
  return {
      'flip': u[:, 0] < 0.5,
      'shear': between(u[:, 1], -MAX_SHEAR_DEGREES, MAX_SHEAR_DEGREES),
      'scale': between(u[:, 2], *SCALE_RANGE),
      # Columns: brightness, contrast, saturation factors.
      'factors': between(u[:, 3:6], 1 - JITTER, 1 + JITTER),
      # Row j: the jitter ops of image j in the order they apply.
      'order': jnp.argsort(u[:, 6:9], axis=1),
  }


def geometric(images: jax.Array, flip: jax.Array, shear: jax.Array,
              scale: jax.Array) -> jax.Array:
  """Horizontal flip, then the shear/scale affine about the centre, fill 0.

  Follows torchvision on PIL images: the inverse matrix of
  `_get_inverse_affine_matrix` maps output pixel centres to input points,
  which are floored (nearest neighbour) and must land inside the image. Both
  steps fold into one gather with integer indices, done in the input dtype.
  """
  images = jnp.asarray(images)
  n, h, w, c = images.shape
  cx, cy = w / 2, h / 2
  # torchvision's inverse matrix [a, b, e; 0, a, f] (angle 0, no
  # translation), evaluated in the order PIL evaluates it.
  a = 1 / scale[:, None, None]
  b = jnp.tan(jnp.deg2rad(shear))[:, None, None] * a
  e = cx - a * cx - b * cy
  f = cy - a * cy
  y = jnp.arange(h, dtype=jnp.float32)[None, :, None] + 0.5
  x = jnp.arange(w, dtype=jnp.float32)[None, None, :] + 0.5
  src_x = jnp.floor(a * x + b * y + e).astype(jnp.int32)  # [n, h, w]
  src_y = jnp.floor(a * y + f).astype(jnp.int32)          # [n, h, 1]
  inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
  # Flip first: the affine reads the flipped image at column x, i.e. the
  # original at column w-1-x.
  src_x = jnp.where(flip[:, None, None], w - 1 - src_x, src_x)
  flat = (jnp.arange(n, dtype=jnp.int32)[:, None, None] * (h * w)
          + jnp.clip(src_y, 0, h - 1) * w + jnp.clip(src_x, 0, w - 1))
  out = jnp.take(images.reshape(n * h * w, c), flat.reshape(-1), axis=0)
  return jnp.where(inside[..., None], out.reshape(n, h, w, c),
                   jnp.zeros((), images.dtype))


def color_jitter(images: jax.Array, factors: jax.Array, order: jax.Array, *,
                 ops_in_loop: bool = False) -> jax.Array:
  """torchvision ColorJitter on [0, 1] floats, ops in `order` per image.

  Every op blends with a reference and clips: brightness with black, contrast
  with the mean grey level, saturation with the grey image. Unlike PIL, which
  the reference runs on, nothing is rounded to uint8 between ops.
  `ops_in_loop`: the three ops as a compiled loop, for XLA's CPU backend.
  """
  images, factors, order = map(jnp.asarray, (images, factors, order))

  def apply_op(k, images):
    op = order[:, k, None, None, None]
    f = jnp.take_along_axis(factors, order[:, k, None], axis=1)
    f = f[:, :, None, None]
    # Channel slices, not a dot: XLA CPU runs a 3-wide dot several times slower.
    gray = sum(wt * images[..., i:i + 1] for i, wt in enumerate(_GRAY_WEIGHTS))
    mean = jnp.mean(gray, axis=(1, 2, 3), keepdims=True)
    to_mean = jnp.where(op == CONTRAST, 1 - f, 0.0)
    to_gray = jnp.where(op == SATURATION, 1 - f, 0.0)
    return jnp.clip(f * images + to_mean * mean + to_gray * gray, 0, 1)

  if ops_in_loop:
    # A loop's carry is a materialised buffer. Unrolled, XLA CPU fuses each
    # op into the next and recomputes the whole chain, the affine gather
    # included, in every consumer: 3-5x slower.
    return jax.lax.fori_loop(0, 3, apply_op, images)
  for k in range(3):
    images = apply_op(k, images)
  return images


def apply_augment(images: jax.Array, params: Mapping[str, jax.Array], *,
                  ops_in_loop: bool = False) -> jax.Array:
  """The augmentation with fixed draws: flip -> affine -> colour jitter."""
  images = geometric(images, params['flip'], params['shear'], params['scale'])
  return color_jitter(to_float(images), params['factors'], params['order'],
                      ops_in_loop=ops_in_loop)


def augment(images: jax.Array, rng: jax.Array, *,
            ops_in_loop: bool = False) -> jax.Array:
  """protocol §2.3 train-time augmentation of an NHWC batch; float32 in [0, 1].

  Accepts uint8 or [0, 1] float images; pure and jit-able. `ops_in_loop`:
  see `color_jitter`.
  """
  return apply_augment(images, sample_augment_params(rng, images.shape[0]),
                       ops_in_loop=ops_in_loop)
