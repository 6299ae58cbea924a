r"""Near-duplicate audit: 64-bit DCT perceptual hashes compared across splits.

MUFAC holds near-identical photos under different families (SPEC §8); a copy
on both sides of a split boundary inflates test accuracy or blurs the MIA.

  python -m mufax.data.audit --dataset=mufac/paper \
      --manual_dir=../shared/data/mufac --data_dir=/tmp/tfds --out=pairs.csv

prints, per split pair (within and across), the number of near-duplicate image
pairs and how many of them join two different identities, and writes every pair to
a CSV. The last line of standard output is the same summary as JSON.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import sys
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from mufax import input_pipeline

# Distance <= 4 of 64 bits is the usual pHash cut for "same picture, re-encoded
# or slightly edited"; different photos of one person sit well above it.
DEFAULT_MAX_DISTANCE = 4
# `train` is forget + retain: auditing it again would only repeat their pairs.
AUDITED_SPLITS = ('forget', 'retain', 'test', 'unseen')


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
  """Every pair within or across splits whose hashes differ in <= max_distance bits."""
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


def summarize(pairs: Sequence[Pair], identities: Mapping[str, Sequence[str]]
              ) -> dict[str, dict[str, int]]:
  """Per split pair `a/b`: near-duplicate pairs, and those joining two people."""
  names = list(identities)
  summary = {f'{a}/{b}': {'pairs': 0, 'different_identity': 0}
             for a, b in itertools.combinations_with_replacement(names, 2)}
  for p in pairs:
    entry = summary[f'{p.split_a}/{p.split_b}']
    entry['pairs'] += 1
    entry['different_identity'] += int(
        identities[p.split_a][p.index_a] != identities[p.split_b][p.index_b])
  return summary


def audit(builder, *, max_distance: int = DEFAULT_MAX_DISTANCE
          ) -> tuple[list[Pair], dict[str, list], dict[str, list]]:
  """Near-duplicate pairs of a built dataset, with file names and identities."""
  files, identities, hashes = {}, {}, {}
  for split in AUDITED_SPLITS:
    source = builder.as_data_source(split)
    hashed, files[split], identities[split] = [np.zeros(0, np.uint64)], [], []
    for start in range(0, len(source), 1024):  # Memory bounded by one chunk.
      chunk = input_pipeline.read_split(
          source, np.arange(start, min(start + 1024, len(source))))
      hashed.append(perceptual_hash(chunk['image']))
      files[split] += chunk['file_name'].tolist()
      identities[split] += chunk['identity'].tolist()
    hashes[split] = np.concatenate(hashed)
  return (near_duplicate_pairs(hashes, max_distance=max_distance), files,
          identities)


def write_pairs(path: str, pairs: Sequence[Pair], files, identities) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['split_a', 'file_a', 'identity_a', 'split_b', 'file_b',
                     'identity_b', 'distance'])
    for p in sorted(pairs, key=lambda p: (p.distance, p.split_a, p.split_b)):
      writer.writerow([p.split_a, files[p.split_a][p.index_a],
                       identities[p.split_a][p.index_a], p.split_b,
                       files[p.split_b][p.index_b],
                       identities[p.split_b][p.index_b], p.distance])


def main(argv):
  del argv
  # Imported here, not at the top, because builders import this module.
  from mufax.data import prepare  # pylint: disable=g-import-not-at-top
  flags_ = prepare.FLAGS
  try:
    builder = prepare.prepare(flags_.dataset, data_dir=flags_.data_dir,
                              manual_dir=flags_.manual_dir)
  except prepare.DataError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  pairs, files, identities = audit(builder, max_distance=flags_.max_distance)
  out = flags_.out or f'{flags_.dataset.replace("/", "_")}_near_duplicates.csv'
  write_pairs(out, pairs, files, identities)
  summary = summarize(pairs, identities)
  print(f'Near-duplicate pairs (pHash distance <= {flags_.max_distance}) of '
        f'{flags_.dataset}; written to {out}')
  print(f'{"splits":>15} {"pairs":>7} {"of two identities":>18}')
  for key, entry in summary.items():
    print(f'{key:>15} {entry["pairs"]:7d} {entry["different_identity"]:18d}')
  print(json.dumps({'dataset': flags_.dataset, 'max_distance':
                    flags_.max_distance, 'csv': out, 'pairs': summary}))


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from mufax.data import prepare  # pylint: disable=g-import-not-at-top  # Its flags.
  flags.DEFINE_integer('max_distance', DEFAULT_MAX_DISTANCE,
                       'Largest Hamming distance (of 64 bits) that counts as '
                       'a near-duplicate.')
  flags.DEFINE_string('out', None, 'CSV of the pairs; default '
                      '<dataset>_near_duplicates.csv in the current folder.')
  app.run(main)
