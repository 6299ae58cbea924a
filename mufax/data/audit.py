r"""Near-duplicate audit: 64-bit DCT perceptual hashes compared across splits.

MUFAC holds near-identical photos under different families (docs/protocol.md
§8); a copy on both sides of a split boundary inflates test accuracy or blurs
the MIA.

  python -m mufax.data.audit --dataset=mufac/paper \
      --manual_dir=../shared/data/mufac --data_dir=runs/tfds --out=pairs.csv \
      [--max_distance=4]

prints, per split pair (within and across), the number of near-duplicate image
pairs and how many of them join two different identities, and writes every
pair to a CSV. The last line of standard output is the same summary as JSON.
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
from collections.abc import Mapping, Sequence

from absl import app
from absl import flags
import numpy as np

from mufax import input_pipeline
from mufax.data import phash
from mufax.data import prepare
from mufax.data.errors import DataError

# `train` is forget + retain: auditing it again would only repeat their pairs.
AUDITED_SPLITS = ('forget', 'retain', 'test', 'unseen')


def summarize(pairs: Sequence[phash.Pair],
              identities: Mapping[str, Sequence[str]]
              ) -> dict[str, dict[str, int]]:
  """Per split pair `a/b`: near-duplicate pairs, and those of two people."""
  names = list(identities)
  summary = {f'{a}/{b}': {'pairs': 0, 'different_identity': 0}
             for a, b in itertools.combinations_with_replacement(names, 2)}
  for p in pairs:
    entry = summary[f'{p.split_a}/{p.split_b}']
    entry['pairs'] += 1
    entry['different_identity'] += int(
        identities[p.split_a][p.index_a] != identities[p.split_b][p.index_b])
  return summary


def audit(builder, *, max_distance: int = phash.DEFAULT_MAX_DISTANCE
          ) -> tuple[list[phash.Pair], dict[str, list], dict[str, list]]:
  """Near-duplicate pairs of a built dataset, with file names and identities."""
  files, identities, hashes = {}, {}, {}
  for split in AUDITED_SPLITS:
    source = builder.as_data_source(split)
    hashed, files[split], identities[split] = [np.zeros(0, np.uint64)], [], []
    for start in range(0, len(source), 1024):  # Memory bounded by one chunk.
      chunk = input_pipeline.read_split(
          source, np.arange(start, min(start + 1024, len(source))))
      hashed.append(phash.perceptual_hash(chunk['image']))
      files[split] += chunk['file_name'].tolist()
      identities[split] += chunk['identity'].tolist()
    hashes[split] = np.concatenate(hashed)
  return (phash.near_duplicate_pairs(hashes, max_distance=max_distance), files,
          identities)


def write_pairs(path: str, pairs: Sequence[phash.Pair], files,
                identities) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['split_a', 'file_a', 'identity_a', 'split_b', 'file_b',
                     'identity_b', 'distance'])
    for p in sorted(pairs, key=lambda p: (p.distance, p.split_a, p.split_b)):
      writer.writerow([p.split_a, files[p.split_a][p.index_a],
                       identities[p.split_a][p.index_a], p.split_b,
                       files[p.split_b][p.index_b],
                       identities[p.split_b][p.index_b], p.distance])


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags: prepare's, --max_distance and --out.

  Called only when this module runs as the program, so that importing it
  defines no flags.
  """
  prepare.define_flags()
  # So that --help lists prepare's flags beside the audit's own.
  flags.adopt_module_key_flags(prepare)
  flags.DEFINE_integer('max_distance', phash.DEFAULT_MAX_DISTANCE,
                       'Largest Hamming distance (of 64 bits) that counts as '
                       'a near-duplicate.')
  flags.DEFINE_string('out', None, 'CSV of the pairs; default '
                      '<dataset>_near_duplicates.csv in the current folder.')


def main(argv):
  del argv
  try:
    builder = prepare.prepare(FLAGS.dataset, data_dir=FLAGS.data_dir,
                              manual_dir=FLAGS.manual_dir)
  except DataError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  pairs, files, identities = audit(builder, max_distance=FLAGS.max_distance)
  out = FLAGS.out or f'{FLAGS.dataset.replace("/", "_")}_near_duplicates.csv'
  write_pairs(out, pairs, files, identities)
  summary = summarize(pairs, identities)
  print(f'Near-duplicate pairs (pHash distance <= {FLAGS.max_distance}) of '
        f'{FLAGS.dataset}; written to {out}')
  print(f'{"splits":>15} {"pairs":>7} {"of two identities":>18}')
  for key, entry in summary.items():
    print(f'{key:>15} {entry["pairs"]:7d} {entry["different_identity"]:18d}')
  print(json.dumps({'dataset': FLAGS.dataset, 'max_distance':
                    FLAGS.max_distance, 'csv': out, 'pairs': summary}))


if __name__ == '__main__':
  define_flags()
  app.run(main)
