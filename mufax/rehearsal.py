"""The data a hyperparameter sweep may read, so that selection never sees the
answer (docs/protocol.md §9).

A sweep chooses each method's hyperparameters on a rehearsal request: a
seeded set of people drawn from `retain`, as many as the forget set has,
whose images are as close in number to the forget set's as the draws allow.
`test` and `unseen` are split by identity into a validation half, which
selection reads, and a held-out half, which only the final report reads.
The real forget set, the held-out halves and the real retrained population
never reach an honest criterion.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# Random draws of people tried for the rehearsal request: the one whose image
# count is closest to the forget set's is kept.
DRAWS = 4096

Splits = Mapping[str, Mapping[str, np.ndarray]]


def rehearsal_people(retain_identities: np.ndarray,
                     forget_identities: np.ndarray, seed: int) -> np.ndarray:
  """The people of the rehearsal request: as many of retain's people as the
  forget set has, drawn with `seed`; of DRAWS draws the first whose image
  count is closest to the forget set's.

  Raises:
    ValueError: when retain has fewer people than the forget set.
  """
  people, counts = np.unique(retain_identities, return_counts=True)
  wanted = len(np.unique(forget_identities))
  if wanted > len(people):
    raise ValueError(f'The rehearsal request needs {wanted} people (as many '
                     f'as the forget set), and retain has {len(people)}.')
  rng = np.random.default_rng(seed)
  draws = np.stack([rng.choice(len(people), wanted, replace=False)
                    for _ in range(DRAWS)])
  misses = np.abs(counts[draws].sum(axis=1) - len(forget_identities))
  return np.sort(people[draws[np.argmin(misses)]])


def validation_half(identities: np.ndarray, seed: int) -> np.ndarray:
  """[examples] bool: the examples of a seeded half of the people (the
  smaller half when their number is odd)."""
  people = np.unique(identities)
  chosen = np.random.default_rng(seed).permutation(people)[:len(people) // 2]
  return np.isin(identities, chosen)


def validation_halves(data: Splits, seed: int) -> dict[str, np.ndarray]:
  """{'test', 'unseen'}: each split's `validation_half`, seeded apart."""
  return {split: validation_half(data[split]['identity'], seed + k + 1)
          for k, split in enumerate(('test', 'unseen'))}


def _subset(split: Mapping[str, np.ndarray], mask: np.ndarray) -> dict:
  return {key: values[mask] for key, values in split.items()}


def request_splits(data: Splits, seed: int) -> tuple[dict, dict]:
  """(rehearsal, held out): the splits of the rehearsal request (forget: the
  rehearsal people; retain: retain without them; test and unseen: their
  validation halves), and those of the real request as the final report
  reads them (test and unseen: the held-out halves). `train` is kept in
  both: the originals were trained on all of it."""
  people = rehearsal_people(data['retain']['identity'],
                            data['forget']['identity'], seed)
  rehearsing = np.isin(data['retain']['identity'], people)
  halves = validation_halves(data, seed)
  rehearsal = {'train': data['train'],
               'retain': _subset(data['retain'], ~rehearsing),
               'forget': _subset(data['retain'], rehearsing)}
  held_out = {'train': data['train'], 'retain': data['retain'],
              'forget': data['forget']}
  for split, half in halves.items():
    rehearsal[split] = _subset(data[split], half)
    held_out[split] = _subset(data[split], ~half)
  return rehearsal, held_out
