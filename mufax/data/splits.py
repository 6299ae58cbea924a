"""Split names and the identity-disjointness rules every dataset obeys."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence

from mufax.data.errors import DataError

# `train` is `forget` + `retain`; `test` measures utility on people never
# seen, `unseen` is the membership-inference attack's reference population.
SPLITS = ('train', 'retain', 'forget', 'test', 'unseen')

# Split pairs that may never share a person, whatever the protocol.
ALWAYS_DISJOINT = (
    ('train', 'test'), ('train', 'unseen'), ('test', 'unseen'),
    ('forget', 'test'), ('forget', 'unseen'),
    ('retain', 'test'), ('retain', 'unseen'),
)
# Only the `paper` MUFAC protocol cuts forget/retain mid-person (protocol §2.1).
FORGET_RETAIN = ('forget', 'retain')


def overlap_pairs() -> list[tuple[str, str]]:
  """Every reported split pair, except train with its own subsets."""
  return [(a, b) for a, b in itertools.combinations(SPLITS, 2)
          if not (a == 'train' and b in FORGET_RETAIN)]


def identity_overlap(
    identities: Mapping[str, Iterable[str]]) -> dict[str, int]:
  """Number of identities shared by each split pair, keyed `a/b`."""
  sets = {split: set(ids) for split, ids in identities.items()}
  return {f'{a}/{b}': len(sets[a] & sets[b])
          for a, b in overlap_pairs() if a in sets and b in sets}


def check_disjoint(
    identities: Mapping[str, Sequence[str]],
    origins: Mapping[str, Sequence[str]],
    pairs: Iterable[tuple[str, str]],
) -> None:
  """Raises DataError naming the first identity found in two splits of `pairs`.

  Args:
    identities: per split, the identity of each example.
    origins: per split, where each example came from (file and row), aligned
      with `identities`.
    pairs: the split pairs that must not share an identity.
  """
  for a, b in pairs:
    where_b = dict(zip(identities[b], origins[b]))
    for identity, origin in zip(identities[a], origins[a]):
      if identity in where_b:
        raise DataError(
            f'Identity {identity!r} appears in split {a!r} ({origin}) and in '
            f'split {b!r} ({where_b[identity]}); no person may be in both. '
            'Fix the source lists so that every person belongs to one split.')
