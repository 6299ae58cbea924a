"""64-bit DCT perceptual hashes and the near-duplicate pairs they reveal.

Shared by the MUFAC builder (`clean` drops cross-split near-duplicates) and
the audit command (which reports them). Only numpy and PIL: a dataset builder
that imports this must not pull in JAX.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

# Distance <= 4 of 64 bits is the usual pHash cut for "same picture, re-encoded
# or slightly edited"; different photos of one person sit well above it.
DEFAULT_MAX_DISTANCE = 4


def _dct_matrix(n: int) -> np.ndarray:
  k = np.arange(n)[:, None]
  return np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n))


_DCT32 = _dct_matrix(32)


def perceptual_hash(images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
  """pHash of each uint8 RGB image, as uint64 (imagehash.phash's recipe).

  Grayscale, resized to 32x32 (Lanczos), 2-D DCT-II, the 8x8 lowest
  frequencies thresholded at their median.
  """
  if len(images) == 0:
    return np.zeros((0,), np.uint64)
  small = np.stack([
      np.asarray(Image.fromarray(np.asarray(im, np.uint8)).convert('L')
                 .resize((32, 32), Image.LANCZOS), np.float64)
      for im in images])
  low = np.einsum('ui,nij,vj->nuv', _DCT32[:8], small, _DCT32[:8])
  low = low.reshape(len(small), 64)
  bits = low > np.median(low, axis=1, keepdims=True)
  return np.packbits(bits, axis=1).view('>u8').reshape(-1).astype(np.uint64)


@dataclasses.dataclass(frozen=True)
class Pair:
  split_a: str
  index_a: int
  split_b: str
  index_b: int
  distance: int


def near_duplicate_pairs(hashes: Mapping[str, np.ndarray], *,
                         max_distance: int = DEFAULT_MAX_DISTANCE,
                         chunk: int = 1024) -> list[Pair]:
  """Pairs, within or across splits, of hashes <= max_distance bits apart."""
  names = list(hashes)
  pairs = []
  for ia, ib in itertools.combinations_with_replacement(range(len(names)), 2):
    a, b = names[ia], names[ib]
    ha, hb = np.asarray(hashes[a], np.uint64), np.asarray(hashes[b], np.uint64)
    for start in range(0, len(ha), chunk):
      dist = np.bitwise_count(ha[start:start + chunk, None] ^ hb[None, :])
      rows, cols = np.nonzero(dist <= max_distance)
      rows = rows + start
      if a == b:  # Each unordered pair once, and never an image with itself.
        keep = rows < cols
        rows, cols = rows[keep], cols[keep]
      pairs.extend(Pair(a, int(r), b, int(c), int(dist[r - start, c]))
                   for r, c in zip(rows, cols))
  return pairs
