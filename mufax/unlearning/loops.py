"""Which batches an unlearning method sees, step by step (protocol §5).

The reference's loops differ per method and dataset (which loader drives the
loop, a forget iterator that cycles across epochs, short batches skipped), and
those choices fix the number of update steps. Each function here returns the
whole plan up front as a list of {data name: example indices}, one entry per
update step, so the step counts can be checked without running a model.

Every loader reshuffles each pass with its own stream: numpy's generator
seeded with (seed, loader, pass), like the reference's shuffling loaders.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

Plan = list[dict[str, np.ndarray]]
# Stream ids, so that retain and forget orders are independent draws.
_LOADER_IDS = {'retain': 1, 'forget': 2}


def shuffled_batches(name: str, n: int, batch_size: int, *, seed: int,
                     epoch: int) -> list[np.ndarray]:
  """One shuffled pass over `n` examples; the last batch may be short."""
  order = np.random.default_rng([seed, _LOADER_IDS[name], epoch]).permutation(n)
  return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def passes(name: str, n: int, batch_size: int, *, epochs: int, seed: int,
           first_epoch: int = 0) -> Plan:
  """`epochs` full passes over one split, short last batches included."""
  return [{name: idx} for e in range(first_epoch, first_epoch + epochs)
          for idx in shuffled_batches(name, n, batch_size, seed=seed, epoch=e)]


def full_batches(name: str, n: int, batch_size: int, *, epochs: int,
                 seed: int) -> Plan:
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
                  epochs: int, seed: int, use_retain: bool) -> Plan:
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
           seed: int) -> Plan:
  """zip(retain, forget) per epoch, keeping steps where both are full."""
  plan = []
  for e in range(epochs):
    pairs = zip(
        shuffled_batches('retain', n_retain, batch_size, seed=seed, epoch=e),
        shuffled_batches('forget', n_forget, batch_size, seed=seed, epoch=e))
    plan.extend({'retain': r, 'forget': f} for r, f in pairs
                if len(r) == len(f) == batch_size)
  return plan
