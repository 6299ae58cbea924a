"""Synthetic faces: a built-in, download-free stand-in for MUFAC.

Every image is drawn by a seeded numpy function of the config, so two builds
are identical. The features and splits are MUFAC's (train = forget + retain,
test, unseen; 8 classes), and no identity is in two of forget / retain / test /
unseen. Identities of all splits are drawn from one distribution, so a model
that never saw `forget` cannot tell it from `unseen`.

Generative recipe:
  * Identity (shared by all of a person's images): head width and aspect,
    skin tone, hair colour and hairline, age at which greying starts, eye
    spacing and size, mouth width, background colour and striped texture.
  * Label (per image, independent of identity): an age class c uniform in 0..7
    and a latent age a = (c + U(0, 1)) / 8. With probability `label_noise` the
    stored label is replaced by a uniform class (annotation noise).
  * Age cue: the image is drawn from the apparent age r = a + o + N(0,
    `cue_noise`), where o ~ U(-s, s), s = `apparent_age_spread`, is a
    per-person offset (some people look older than they are): children have
    smaller, rounder heads with low-set eyes; from a person's greying onset the
    hair turns grey, the hairline recedes and forehead wrinkles deepen.
  * Per image: head shift and scale, shirt colour, lighting gradient and
    brightness, pixel noise.
  * Why: the task is learnable from r (test accuracy far above 1/8), but a
    person's offset o can only be learnt by recognising that person (easy: the
    background is theirs) from their training images. A trained model so
    reads the age of the people it was trained on better than that of
    strangers, and label noise adds per-image memorisation: forget losses fall
    below unseen losses, which is what the MIA detects and what unlearning must
    undo, while a model retrained without the forget people cannot tell the
    two apart.

Identity `S0001/P` owns images `S0001_P_00.png` ... ; train lists the forget
identities first (as MUFAC's forget is the head of its train list), then retain.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from mufax import tasks
from mufax.data import face_builder

NUM_CLASSES = 8
SPLIT_ORDER = ('forget', 'retain', 'test', 'unseen')  # Identity numbering.
# What every config asks: the age class, as MUFAC does, so it trains and
# unlearns as MUFAC (protocol §4, §5); the paper published nothing on it.
AGE = tasks.Task(name='age', family='mufac', loss_kind='softmax',
                 label_names=tuple(str(c) for c in range(NUM_CLASSES)))


@dataclasses.dataclass(eq=False)
class SyntheticFacesConfig(face_builder.FaceConfig):
  task: tasks.Task = dataclasses.field(default=AGE, kw_only=True)
  image_size: int = 32
  # Small enough for the quick start to train several models in seconds on a
  # CPU, which is also what lets those models memorise their training images.
  forget_identities: int = 50
  retain_identities: int = 75
  test_identities: int = 40
  unseen_identities: int = 50
  images_per_identity: int = 8
  label_noise: float = 0.05
  cue_noise: float = 0.03
  # How much older or younger than their age people look (in units of the
  # 0..1 age scale; a class is 1/8): a model learns it only for the people it
  # was trained on.
  apparent_age_spread: float = 0.15
  seed: int = 0

  def identities(self, split: str) -> int:
    return getattr(self, f'{split}_identities')


def _uniform(rng, n, low, high):
  return rng.uniform(low, high, n).astype(np.float32)


def draw_identities(rng: np.random.Generator, n: int, *,
                    apparent_age_spread: float) -> dict[str, np.ndarray]:
  """Looks of `n` people; each value has leading dimension `n`."""
  skin_dark = rng.uniform(0, 1, n)
  skin = (np.array([0.96, 0.80, 0.68]) * (1 - skin_dark[:, None]) +
          np.array([0.42, 0.27, 0.17]) * skin_dark[:, None] +
          rng.normal(0, 0.03, (n, 3)))
  hair_light = rng.uniform(0, 1, n) ** 2  # Mostly dark hair.
  hair = (np.array([0.10, 0.07, 0.05]) * (1 - hair_light[:, None]) +
          np.array([0.85, 0.65, 0.35]) * hair_light[:, None] +
          rng.normal(0, 0.05, (n, 3)))
  return {
      'head_width': _uniform(rng, n, 0.44, 0.58),
      'head_aspect': _uniform(rng, n, 1.15, 1.40),
      'skin': np.clip(skin, 0, 1).astype(np.float32),
      'hair': np.clip(hair, 0, 1).astype(np.float32),
      'hairline': _uniform(rng, n, 0.35, 0.60),
      'greying_onset': _uniform(rng, n, 0.25, 0.55),
      'age_offset': _uniform(rng, n, -apparent_age_spread, apparent_age_spread),
      'eye_spacing': _uniform(rng, n, 0.30, 0.46),
      'eye_size': _uniform(rng, n, 0.07, 0.11),
      'mouth_width': _uniform(rng, n, 0.25, 0.45),
      'background': rng.uniform(0.1, 0.9, (n, 3)).astype(np.float32),
      'stripe_freq': _uniform(rng, n, 2.0, 7.0),
      'stripe_angle': _uniform(rng, n, 0, np.pi),
      'stripe_phase': _uniform(rng, n, 0, 2 * np.pi),
      'stripe_amp': _uniform(rng, n, 0.04, 0.15),
  }


def draw_images(rng: np.random.Generator, n: int, *, label_noise: float,
                cue_noise: float) -> dict[str, np.ndarray]:
  """Labels and per-image variation of `n` images."""
  age_class = rng.integers(0, NUM_CLASSES, n)
  age = (age_class + rng.uniform(0, 1, n)) / NUM_CLASSES
  noisy = rng.uniform(0, 1, n) < label_noise
  label = np.where(noisy, rng.integers(0, NUM_CLASSES, n), age_class)
  return {
      'label': label.astype(np.int64),
      'age': np.clip(age + rng.normal(0, cue_noise, n), 0, 1).astype(np.float32),
      'shift': rng.normal(0, 0.06, (n, 2)).astype(np.float32),
      'scale': rng.normal(1, 0.05, n).astype(np.float32),
      'light_angle': _uniform(rng, n, 0, 2 * np.pi),
      'light_amp': _uniform(rng, n, 0.0, 0.25),
      'brightness': rng.normal(1, 0.08, n).astype(np.float32),
      'shirt': rng.uniform(0.05, 0.95, (n, 3)).astype(np.float32),
  }


def _soft(x, size):
  """A one-pixel-wide antialiased step: 1 where x > 0."""
  return 1 / (1 + np.exp(-np.clip(x * size, -30, 30)))


def _background(ident, img, col, x, y, size: int) -> np.ndarray:
  """What lies behind the head: the person's colour and stripes, and the
  clothes of the photo."""
  angle = col(ident['stripe_angle'])
  stripes = np.sin(col(ident['stripe_freq']) * np.pi *
                   (x * np.cos(angle) + y * np.sin(angle)) +
                   col(ident['stripe_phase']))
  canvas = (ident['background'][:, None, None, :] +
            (col(ident['stripe_amp']) * stripes)[..., None])

  # Clothes change from photo to photo.
  shirt = _soft(1 - np.hypot((x - col(img['shift'][:, 0])) / 0.8,
                             (y - 1.15) / 0.45), size)
  canvas = (canvas * (1 - shirt[..., None]) +
            img['shirt'][:, None, None, :] * shirt[..., None])
  return canvas


def _head(ident, img, col, x, y, size: int, young, old):
  """The face's mask and colours, and the hair's mask and colour."""
  # Head geometry in head-centred coordinates; children's heads are smaller
  # and rounder.
  scale = col(img['scale']) * (1 - 0.3 * young)
  rx = col(ident['head_width']) * scale
  ry = rx * col(ident['head_aspect']) * (1 - 0.15 * young)
  hx = (x - col(img['shift'][:, 0])) / rx
  hy = (y - col(img['shift'][:, 1]) - 0.12) / ry
  face = _soft(1 - np.hypot(hx, hy), size * rx)

  # Hair: a cap above the hairline, receding and greying with age.
  hairline = col(ident['hairline']) * (1 - 0.4 * old) + 0.1 * young
  hair_mask = (_soft(1.12 - np.hypot(hx * 0.98, hy * 1.02), size * rx) *
               _soft(-hy - hairline, size * ry))
  grey = old[..., None]
  hair_colour = (ident['hair'][:, None, None, :] * (1 - grey) +
                 np.float32(0.78) * grey)

  skin = ident['skin'][:, None, None, :]
  # Forehead wrinkles: dark horizontal lines whose depth grows with age.
  forehead = _soft(-hy - 0.15, size * ry) * _soft(0.9 - np.abs(hx), size * rx)
  wrinkles = old * forehead * np.maximum(np.sin(hy * 16), 0) ** 2
  skin = skin * (1 - 0.6 * wrinkles[..., None])

  # Eyes sit lower in children's faces.
  eye_y = -0.05 + 0.25 * young
  eye_r = col(ident['eye_size']) / col(ident['head_width'])
  eyes = sum(_soft(eye_r - np.hypot(hx - s * col(ident['eye_spacing']),
                                     (hy - eye_y) * 1.3), size * rx)
             for s in (-1, 1))
  mouth = (_soft(col(ident['mouth_width']) / 2 - np.abs(hx), size * rx) *
           _soft(0.05 - np.abs(hy - 0.5 - 0.1 * young), size * ry))

  head = skin * (1 - 0.85 * (eyes + mouth)[..., None])
  return face, head, hair_mask, hair_colour


def render(ident: dict[str, np.ndarray], img: dict[str, np.ndarray],
           size: int, noise_rng: np.random.Generator) -> np.ndarray:
  """Draws images, (n, size, size, 3) uint8; `ident` is aligned with `img`."""
  n = len(img['age'])
  col = lambda v: np.asarray(v, np.float32).reshape((n,) + (1,) * 2)
  grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
  y, x = grid[None, :, None], grid[None, None, :]
  age = col(np.clip(img['age'] + ident['age_offset'], 0, 1))
  # Each cue is monotone in age and together they cover all eight classes.
  young = np.clip(1 - age / 0.5, 0, 1)  # 1 at birth, 0 from ~30 years.
  # People start greying at different ages, so greyness pins down the age of
  # a known person better than that of a stranger.
  onset = col(ident['greying_onset'])
  old = np.clip((age - onset) / (1.05 - onset), 0, 1)

  canvas = _background(ident, img, col, x, y, size)
  face, head, hair_mask, hair_colour = _head(ident, img, col, x, y, size,
                                             young, old)
  canvas = canvas * (1 - face[..., None]) + head * face[..., None]
  canvas = canvas * (1 - hair_mask[..., None]) + hair_colour * hair_mask[..., None]

  light = col(img['light_angle'])
  shade = (col(img['brightness']) +
           col(img['light_amp']) * (x * np.cos(light) + y * np.sin(light)))
  canvas = canvas * shade[..., None]
  canvas = canvas + noise_rng.normal(0, 0.03, canvas.shape).astype(np.float32)
  return np.round(np.clip(canvas, 0, 1) * 255).astype(np.uint8)


def draw(config: SyntheticFacesConfig):
  """Every person's looks and every image's label and variation."""
  n = sum(config.identities(s) for s in SPLIT_ORDER)
  rng = np.random.default_rng(config.seed)
  people = draw_identities(rng, n,
                           apparent_age_spread=config.apparent_age_spread)
  shots = draw_images(rng, n * config.images_per_identity,
                      label_noise=config.label_noise, cue_noise=config.cue_noise)
  return people, shots


def render_person(config: SyntheticFacesConfig, people, shots,
                  person: int) -> np.ndarray:
  """All images of `person` (0-based), (images_per_identity, H, W, 3) uint8."""
  m = config.images_per_identity
  mine = {k: v[person * m:(person + 1) * m] for k, v in shots.items()}
  looks = {k: np.repeat(v[person:person + 1], m, axis=0)
           for k, v in people.items()}
  # Pixel noise is seeded per person, so an image does not depend on which
  # people were rendered before it.
  noise_rng = np.random.default_rng([config.seed, person])
  return render(looks, mine, config.image_size, noise_rng)


class SyntheticFaces(face_builder.FaceDatasetBuilder):
  """Procedural faces with an 8-class, identity-independent age label."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      SyntheticFacesConfig(
          name='small', description=(
              '32x32; 50/75/40/50 forget/retain/test/unseen people, 8 images '
              'each: the quick start.')),
      SyntheticFacesConfig(
          name='large', image_size=128, forget_identities=190,
          retain_identities=1060, test_identities=190, unseen_identities=190,
          description='128x128 with MUFAC-like split sizes.'),
  ]

  def _image_size(self):
    return self.builder_config.image_size

  def _forget_retain_disjoint(self):
    return True

  def _read_index(self, dl_manager):
    del dl_manager  # Nothing to download.
    config = self.builder_config
    m = config.images_per_identity
    self._people, self._shots = draw(config)
    self._rendered = (None, None)
    # file name -> (person, image of that person), for `_image`.
    self._drawn_as = {f'S{p + 1:04d}_P_{k:02d}.png': (p, k)
                      for p in range(len(self._people['skin']))
                      for k in range(m)}
    index, first = {}, 0
    for split in SPLIT_ORDER:
      index[split] = [
          face_builder.FaceRecord(
              file_name=f'S{p + 1:04d}_P_{k:02d}.png',
              identity=f'S{p + 1:04d}/P',
              label=int(self._shots['label'][p * m + k]),
              origin=f'synthetic person {p}, image {k}')
          for p in range(first, first + config.identities(split))
          for k in range(m)]
      first += config.identities(split)
    index['train'] = index['forget'] + index['retain']
    return index

  def _image(self, record):
    person, k = self._drawn_as[record.file_name]
    if self._rendered[0] != person:  # Splits list a person's images together.
      self._rendered = (person, render_person(
          self.builder_config, self._people, self._shots, person))
    return Image.fromarray(self._rendered[1][k])
