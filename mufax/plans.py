"""Plans: which examples each update step of a run reads, for every member.

A member's plan is its list of update steps, each (update key, {data name:
example indices}); `Plan.stack` makes the population's plan of them, which
the engine uploads as int arrays before the run starts. A short batch (an
epoch's last) is padded to full size and masked where the objective allows
(`Objective.pads`), so that it needs no program of its own.

Training from scratch plans shuffled epochs (`epoch_plan`). Unlearning
methods plan the reference's loops (protocol §5), which differ per method and
dataset (which loader drives the loop, a forget iterator that cycles across
epochs, short batches skipped); those choices fix the number of update steps.
Each loop returns its whole list of batches up front, so the step counts can
be checked without running a model, and every loader reshuffles each pass
with its own stream: numpy's generator seeded with (seed, loader, pass), like
the reference's shuffling loaders.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence

import numpy as np

from mufax import input_pipeline

# One member's batches, per update step {data name: example indices}.
Batches = list[dict[str, np.ndarray]]
# One member's plan: per update step (update key, {data name: indices}).
Steps = list[tuple[str, dict[str, np.ndarray]]]


@dataclasses.dataclass
class Plan:
  """Every update step of a run, for every member.

  `steps[i]` is (update key, {split: int array [members, batch]}): the
  examples of each split that member m sees at step i. Steps of one key and
  batch shape form a group, uploaded as one array [steps, members, batch].
  """
  steps: list[tuple[str, dict[str, np.ndarray]]]

  @classmethod
  def stack(cls, per_member: Sequence[Steps]) -> Plan:
    """One plan from each member's own steps."""
    lengths = {len(p) for p in per_member}
    if len(lengths) != 1:
      raise ValueError(f'Members plan different step counts: {lengths}.')
    steps = []
    for i in range(lengths.pop()):
      key, splits = per_member[0][i][0], sorted(per_member[0][i][1])
      if any(p[i][0] != key or sorted(p[i][1]) != splits for p in per_member):
        raise ValueError(f'Members plan different kinds of step {i}.')
      steps.append((key, {s: np.stack([np.asarray(p[i][1][s], np.int32)
                                       for p in per_member])
                          for s in splits}))
    return cls(steps)

  def __len__(self):
    return len(self.steps)

  def groups(self, padded: frozenset[str] = frozenset()
             ) -> tuple[dict[tuple, dict[str, np.ndarray]],
                        list[tuple[tuple, int, int]]]:
    """(arrays per group, segments): a segment is (group, start, stop) of
    consecutive steps of one group, in plan order.

    Batches of the keys in `padded` are padded with index -1 to the largest
    batch of their key and split, so that their steps form one group.
    """
    full: dict[tuple[str, str], int] = {}
    for key, batches in self.steps:
      for s, v in batches.items():
        full[key, s] = max(full.get((key, s), 0), v.shape[1])
    members_of: dict[tuple, list[dict[str, np.ndarray]]] = {}
    segments = []
    for key, batches in self.steps:
      if key in padded:
        batches = {s: np.pad(v, ((0, 0), (0, full[key, s] - v.shape[1])),
                             constant_values=-1)
                   for s, v in batches.items()}
      group = (key,) + tuple((s, v.shape[1])
                             for s, v in sorted(batches.items()))
      rows = members_of.setdefault(group, [])
      if segments and segments[-1][0] == group and segments[-1][2] == len(rows):
        segments[-1] = (group, segments[-1][1], len(rows) + 1)
      else:
        segments.append((group, len(rows), len(rows) + 1))
      rows.append(batches)
    arrays = {group: {s: np.stack([b[s] for b in rows]) for s in rows[0]}
              for group, rows in members_of.items()}
    return arrays, segments

  def members(self, first: int, stop: int) -> Plan:
    """The plan of members first..stop-1."""
    return Plan([(key, {s: v[first:stop] for s, v in batches.items()})
                 for key, batches in self.steps])

  def images(self, i: int) -> int:
    """Images one member sees at step i."""
    return sum(v.shape[1] for v in self.steps[i][1].values())


def pad_steps(steps: np.ndarray) -> np.ndarray:
  """`steps` [S, ...] padded with zeros to the next power of two.

  Programs are compiled for the shapes of their arguments: padded, plans of
  similar lengths (an epoch over train and one over retain, SCRUB's retain
  and forget passes) share one program. The loop runs only the real steps.
  """
  length = 1 << max(3, (len(steps) - 1).bit_length())
  return np.concatenate([steps, np.zeros((length - len(steps),)
                                         + steps.shape[1:], steps.dtype)])


def epoch_plan(pools: Sequence[np.ndarray], *, batch_size: int,
               seeds: Sequence[int],
               epoch: int) -> list[Steps]:
  """Per member, one shuffled pass over its pool of examples, as 'train'
  steps (a DataLoader with shuffle and drop_last=False): the order is fixed
  by (seed, epoch)."""
  per_member = []
  for pool, seed in zip(pools, seeds):
    order = pool[input_pipeline.epoch_order(len(pool), shuffle=True,
                                            seed=seed, epoch=epoch)]
    per_member.append([('train', {'train': order[b:b + batch_size]})
                       for b in range(0, len(order), batch_size)])
  return per_member


def step_plan(key: str, batches: Batches) -> Steps:
  """`batches`, every step of them an update of `key`."""
  return [(key, b) for b in batches]


# --------------------------------------------------- the unlearning loops

# Stream ids, so that retain and forget orders are independent draws.
_LOADER_IDS = {'retain': 1, 'forget': 2}


def shuffled_batches(name: str, n: int, batch_size: int, *, seed: int,
                     epoch: int) -> list[np.ndarray]:
  """One shuffled pass over `n` examples; the last batch may be short."""
  order = np.random.default_rng([seed, _LOADER_IDS[name], epoch]).permutation(n)
  return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def passes(name: str, n: int, batch_size: int, *, epochs: int, seed: int,
           first_epoch: int = 0) -> Batches:
  """`epochs` full passes over one split, short last batches included."""
  return [{name: idx} for e in range(first_epoch, first_epoch + epochs)
          for idx in shuffled_batches(name, n, batch_size, seed=seed, epoch=e)]


def full_batches(name: str, n: int, batch_size: int, *, epochs: int,
                 seed: int) -> Batches:
  """Passes over one split that skip batches smaller than `batch_size`."""
  return [step for step in passes(name, n, batch_size, epochs=epochs,
                                  seed=seed)
          if len(step[name]) == batch_size]


def _cycle(name: str, n: int, batch_size: int, *,
           seed: int) -> Iterator[np.ndarray]:
  """A loader that starts a new shuffled pass whenever one is used up."""
  for epoch in itertools.count():
    yield from shuffled_batches(name, n, batch_size, seed=seed, epoch=epoch)


def retain_driven(n_retain: int, n_forget: int, batch_size: int, *,
                  epochs: int, seed: int, use_retain: bool) -> Batches:
  """The loop runs over retain; forget batches come from a cycling iterator.

  The forget iterator is not reset between epochs, and a step whose retain
  and forget batches differ in size is skipped (its forget batch is used up
  all the same). With `use_retain=False` the plan holds the forget batch
  only, for methods that ignore the retain batch (NegGrad).
  """
  forget = _cycle('forget', n_forget, batch_size, seed=seed)
  plan = []
  for e in range(epochs):
    for r in shuffled_batches('retain', n_retain, batch_size, seed=seed,
                              epoch=e):
      f = next(forget)
      if len(r) != len(f):
        continue
      plan.append({'retain': r, 'forget': f} if use_retain else {'forget': f})
  return plan


def zipped(n_retain: int, n_forget: int, batch_size: int, *, epochs: int,
           seed: int) -> Batches:
  """zip(retain, forget) per epoch, keeping steps where both are full."""
  plan = []
  for e in range(epochs):
    pairs = zip(
        shuffled_batches('retain', n_retain, batch_size, seed=seed, epoch=e),
        shuffled_batches('forget', n_forget, batch_size, seed=seed, epoch=e))
    plan.extend({'retain': r, 'forget': f} for r, f in pairs
                if len(r) == len(f) == batch_size)
  return plan
