"""What a benchmark's JSON says about the run beside its figures.

BENCHMARKS.md shows every figure with the command, the machine, the versions
and the load it was measured under (benchmarks/render.py), so each benchmark
records them the same way:

  recorder = metadata.Recorder()   # first thing: the load before the run
  ...
  recorder.write(path, results)    # {'run': {...}, 'results': results}

`run` holds:
- command: the exact command line, with the environment variables that
  change what runs (`ENVIRONMENT`) and the niceness it ran at;
- machine: operating system, architecture, CPU model, cores, JAX's backend
  and devices, and torch's device and threads where torch was imported;
- versions: Python and each of `PACKAGES` that the benchmark imported;
- load_average: the 1-, 5- and 15-minute load averages before and after,
  since other processes on the machine skew the figures.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import sys

import jax

# Set for a run, these change what it measures.
ENVIRONMENT = ('XLA_FLAGS', 'JAX_PLATFORMS', 'GLIBC_TUNABLES',
               'TFDS_DATA_DIR')
# Module name -> distribution name.
PACKAGES = {'jax': 'jax', 'jaxlib': 'jaxlib', 'flax': 'flax',
            'optax': 'optax', 'numpy': 'numpy', 'torch': 'torch',
            'torchvision': 'torchvision'}


def command(argv: list[str] | None = None) -> str:
  """The command line that started this process, as one would type it."""
  argv = sys.argv if argv is None else argv
  spec = getattr(sys.modules['__main__'], '__spec__', None)
  program = (['python', '-m', spec.name] if spec is not None
             else ['python', os.path.relpath(argv[0])])
  niceness = os.nice(0)
  return ' '.join(
      [f'{k}={shlex.quote(os.environ[k])}' for k in ENVIRONMENT
       if k in os.environ]
      + (['nice', '-n', str(niceness)] if niceness else [])
      + program + [shlex.quote(a) for a in argv[1:]])


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine() -> dict:
  devices = jax.devices()
  out = {'system': platform.system(), 'architecture': platform.machine(),
         'cpu': cpu_model(), 'cpu_cores': os.cpu_count(),
         'jax_backend': jax.default_backend(),
         'jax_devices': f'{len(devices)} x {devices[0].device_kind}'}
  torch = sys.modules.get('torch')
  if torch is not None:
    out['torch_device'] = (torch.cuda.get_device_name()
                           if torch.cuda.is_available() else 'cpu')
    out['torch_threads'] = torch.get_num_threads()
  return out


def versions() -> dict:
  out = {'python': platform.python_version()}
  for module, distribution in PACKAGES.items():
    if module in sys.modules:
      out[module] = importlib.metadata.version(distribution)
  return out


class Recorder:
  """The run's record, begun when the benchmark starts."""

  def __init__(self):
    self.command = command()
    self.load_before = list(os.getloadavg())

  def record(self, results) -> dict:
    """{'run': ..., 'results': results}, the load measured now."""
    return {'run': {'command': self.command, 'machine': machine(),
                    'versions': versions(),
                    'load_average': {'before': self.load_before,
                                     'after': list(os.getloadavg())}},
            'results': results}

  def write(self, path: str, results) -> dict:
    """Writes the record of `results` to `path` (again after each part,
    where a benchmark saves as it goes) and returns it."""
    record = self.record(results)
    with open(path, 'w') as f:
      json.dump(record, f, indent=1)
      f.write('\n')
    return record
