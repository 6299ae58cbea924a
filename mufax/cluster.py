"""Several processes, one run: `jax.distributed` from the launch.

Every process runs the same command. Each holds the data on its own devices
and runs the same programs over one mesh of every process's devices; only
process 0 prints progress and writes results and plots, while checkpoints are
written by Orbax from every process (the README's "Several machines").
"""

from __future__ import annotations

import glob
import os

import jax


def launched_as_several() -> str | None:
  """What in the environment says this process is one of several (JAX then
  finds the coordinator, the process count and this process's id itself),
  or None."""
  for variable in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    if int(os.environ.get(variable) or 1) > 1:
      return f'{variable}={os.environ[variable]}'
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    return 'JAX_COORDINATOR_ADDRESS'
  # A Cloud TPU VM: JAX reads the pod's hosts from the metadata server (one
  # host is a pod of one process).
  if glob.glob('/dev/accel[0-9]*') or glob.glob('/dev/vfio/[0-9]*'):
    return 'a Cloud TPU VM'
  return None


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> str | None:
  """Starts `jax.distributed` before anything else uses JAX: from the
  arguments where any is given, else where the environment asks for it.
  Returns what started it (for a log line), or None for a single process."""
  explicit = (coordinator_address, num_processes, process_id) != (None,) * 3
  reason = 'the command line' if explicit else launched_as_several()
  if reason is None:
    return None
  # CPU devices of several processes reduce over TCP (no effect elsewhere).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)
  return reason


def log(message: str) -> None:
  """A progress line, printed once however many processes run."""
  if jax.process_index() == 0:
    print(message, flush=True)
