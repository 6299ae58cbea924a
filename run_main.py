r"""Runs the benchmark as a config describes it.

  python run_main.py --config=configs/quickstart.py [--workdir=DIR]
  python run_main.py --config=configs/mufac_scrub.py \
      --config.data.manual_dir=../shared/data/mufac --config.unlearn.scrub.lr=0.002
  python run_main.py --config=configs/paper.py:mucac/gender,all ...
  python run_main.py --config=configs/quickstart.py \
      --config.plugins=examples/uniform_forget.py \
      --config.methods=original,uniform_forget

Prepares the config's dataset if needed, trains (or reuses) the original
model, runs the methods the config names, evaluates every model and writes
results.json, results.md, losses/<method>.npz and the plots to the workdir
(default: results/<config file name>[-<config argument>], a / in the
argument as -).

Several processes (a TPU pod, a SLURM job, or --coordinator_address=...
--num_processes=... --process_id=...) each run the same command
(mufax/cluster.py).
"""

import difflib
import os
import sys

import jax
import ml_collections
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from configs import default
from mufax import checkpoints
from mufax import cluster
from mufax import compilation
from mufax import engine
from mufax import experiment
from mufax import files
from mufax import results
from mufax import run_config
from mufax.data.errors import DataError

# Open to new fields, so that the command line can set any method's
# hyperparameters, a plugin's too (loaded only when the run starts); the
# run checks config.unlearn, and check_fields every other field.
_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/quickstart.py.',
    lock_config=False, accept_new_attributes=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Where checkpoints and results go; default '
    'results/<config file name>.')
# Several processes (jax.distributed); on TPU pods, SLURM and Open MPI the
# environment gives these (mufax/cluster.py).
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for a run of '
    'several processes that the environment does not describe.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'How many processes run this command.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, "This process's index, 0 .. num_processes - 1.")
flags.mark_flags_as_required(['config'])


def check_fields(config: ml_collections.ConfigDict,
                 base: ml_collections.ConfigDict, path: str = 'config'):
  """Refuses a field of `config` that `base` lacks (a misspelt override),
  except within config.unlearn.

  Raises:
    run_config.ConfigError: naming the field and the nearest known one.
  """
  for name, value in config.items():
    if name not in base:
      known = list(base.keys())
      near = difflib.get_close_matches(name, known, n=1)
      raise run_config.ConfigError(
          f'{path}.{name}: no such field in configs/default.py; '
          + (f'did you mean {path}.{near[0]}?' if near else
             f'{path} has {", ".join(known)}.'))
    if isinstance(base[name], ml_collections.ConfigDict) and name != 'unlearn':
      check_fields(value, base[name], f'{path}.{name}')


def main(argv):
  del argv
  # Orbax reports every checkpoint step at INFO; progress lines are printed.
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  started_by = cluster.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                                  _PROCESS_ID.value)
  if started_by:
    cluster.log(f'{jax.process_count()} processes ({started_by}), '
                f'{jax.device_count()} devices')
  # configs/paper.py:mucac/gender,all -> results/paper-mucac-gender,all
  path, _, argument = flags.FLAGS['config'].config_filename.partition(':')
  name = os.path.splitext(os.path.basename(path))[0]
  workdir = _WORKDIR.value or os.path.join(
      'results', f'{name}-{argument.replace("/", "-")}' if argument else name)
  try:
    check_fields(_CONFIG.value, default.get_config())
    records = experiment.run(_CONFIG.value, workdir)
  except (DataError, run_config.ConfigError, compilation.PopulationTooLarge,
          engine.Diverged, files.WorkdirInUse, files.Unwritable,
          checkpoints.CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  cluster.log(results.format_table(records))
  cluster.log(f'results in {workdir}/results.json and results.md')


if __name__ == '__main__':
  app.run(main)
