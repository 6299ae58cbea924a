"""Decoding and checking source images, with errors that name the file."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from mufax.data.errors import DataError


def decode_rgb(data: bytes, *, where: str) -> Image.Image:
  """Decodes image bytes fully and returns an RGB PIL image."""
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
  except Exception as e:  # PIL raises many types for corrupt input.
    raise DataError(
        f'Image {where} does not decode ({type(e).__name__}: {e}). Replace it '
        'with the file from the original release, or remove its row from the '
        'list, then build again.') from e
  return image if image.mode == 'RGB' else image.convert('RGB')


def check_size(image: Image.Image, size: int, *, where: str) -> None:
  if image.size != (size, size):
    raise DataError(
        f'Image {where} is {image.size[0]}x{image.size[1]} pixels, expected '
        f'{size}x{size}. Replace it with the file from the original release.')


def resize_square(image: Image.Image, size: int, *, where: str) -> Image.Image:
  """torchvision `Resize(size)` on a square PIL image (bilinear, antialiased)."""
  if image.size[0] != image.size[1]:
    raise DataError(
        f'Image {where} is {image.size[0]}x{image.size[1]} pixels; the '
        'benchmark expects square face crops. Replace it with the file from '
        'the original release.')
  if image.size[0] == size:
    return image
  return image.resize((size, size), Image.BILINEAR)


def to_array(image: Image.Image) -> np.ndarray:
  return np.asarray(image, dtype=np.uint8)
