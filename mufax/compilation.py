"""Compiling programs ahead of time, and refusing populations that do not fit.

Programs are compiled with `lower().compile()`, which gives the compile time
apart from the step time, XLA's memory analysis (checked against the device
before the first step runs) and its flop count.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

import jax
import numpy as np


@dataclasses.dataclass
class Compiled:
  """An executable with what XLA says of it."""
  call: Callable
  seconds: float
  flops: float
  # Device bytes it needs: arguments, outputs and temporaries, less the
  # donated buffers it reuses.
  bytes: int


class Compiler:
  """Compiles each program once per argument layout and keeps account.

  Programs are compiled ahead of time (`lower().compile()`), which gives
  the compile time apart from the step time, XLA's memory analysis (checked
  against the device before the first step runs) and its flop count.
  """

  def __init__(self, memory_limit: int | None = None, fixed_bytes: int = 0):
    self.memory_limit = memory_limit
    # What every program holds whatever the population (the resident data).
    self.fixed_bytes = fixed_bytes
    self.seconds = 0.0
    self._cache: dict[tuple, Compiled] = {}

  def __call__(self, jitted, *args, members: int = 1,
               resident_bytes: int = 0) -> Compiled:
    """The compiled `jitted` for `args`, checked against the memory limit
    together with `resident_bytes` that other members hold meanwhile; the
    `members` are all of them."""
    leaves, tree = jax.tree.flatten(args)
    key = (jitted, tree, tuple(
        (np.shape(x), str(getattr(x, 'dtype', None) or np.result_type(x)),
         getattr(x, 'sharding', None)) for x in leaves))
    if key not in self._cache:
      start = time.perf_counter()
      executable = jitted.lower(*args).compile()
      seconds = time.perf_counter() - start
      self.seconds += seconds
      cost = executable.cost_analysis() or {}
      if isinstance(cost, list):  # older JAX: one dict per computation
        cost = cost[0] if cost else {}
      memory = executable.memory_analysis()
      needed = 0 if memory is None else (
          memory.argument_size_in_bytes + memory.output_size_in_bytes
          + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
      self._cache[key] = Compiled(executable, seconds,
                                  float(cost.get('flops', 0.0)), needed)
      check_memory(needed + resident_bytes, members, self.memory_limit,
                   self.fixed_bytes)
    return self._cache[key]


class PopulationTooLarge(ValueError):
  """A population whose state, data and step do not fit in device memory."""


def device_memory(device=None) -> int:
  """Bytes one device can hold: its allocator's limit on an accelerator,
  the host's available memory shared by its devices on CPU."""
  device = device or jax.local_devices()[0]
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if stats and stats.get('bytes_limit'):
    return int(stats['bytes_limit'])
  available = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          available = int(line.split()[1]) * 1024
  except OSError:
    pass
  return available // max(1, jax.local_device_count())


def check_memory(needed: int, population: int, limit: int | None,
                 fixed: int = 0) -> None:
  """Refuses a population whose `needed` bytes per device exceed `limit`.

  `fixed` is the part that does not grow with the population (the resident
  data); the rest is taken to grow linearly, to name the size that fits.
  """
  if limit is None or needed <= limit:
    return
  per_member = max(1, (needed - fixed) / population)
  fits = max(0, int((limit - fixed) // per_member))
  raise PopulationTooLarge(
      f'A population of {population} needs about {needed / 2**30:.2f} GiB per '
      f'device and the device holds {limit / 2**30:.2f} GiB: '
      + (f'at most {fits} member(s) fit; set config.population.size={fits} '
         'or less.' if fits else
         'not even one member fits; use smaller images or a smaller model.'))


def tree_bytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))
