r"""Runs the benchmark as a config describes it.

  python run_main.py --config=configs/quickstart.py [--workdir=DIR]
  python run_main.py --config=configs/mufac_scrub.py \
      --config.data.manual_dir=../shared/data/mufac --config.unlearn.scrub.lr=0.002
  python run_main.py --config=configs/mucac_all.py:gender ...
  python run_main.py --config=configs/quickstart.py \
      --config.plugins=examples/uniform_forget.py \
      --config.methods=original,uniform_forget

Prepares the config's dataset if needed, trains (or reuses) the original
model, runs the methods the config names, evaluates every model and writes
results.json, results.md, losses/<method>.npz and the plots to the workdir
(default: results/<config file name>[-<config argument>]).

Several processes (a TPU pod, a SLURM job, or --coordinator_address=...
--num_processes=... --process_id=...) each run the same command
(mufax/cluster.py).
"""

import os
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mufax import checkpoints
from mufax import cluster
from mufax import compilation
from mufax import engine
from mufax import experiment
from mufax import files
from mufax import plugins
from mufax import results
from mufax import run_config
from mufax.data.errors import DataError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/quickstart.py.',
    lock_config=True)
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
  # configs/mucac_all.py:gender -> results/mucac_all-gender
  path, _, argument = flags.FLAGS['config'].config_filename.partition(':')
  name = os.path.splitext(os.path.basename(path))[0]
  workdir = _WORKDIR.value or os.path.join(
      'results', f'{name}-{argument}' if argument else name)
  try:
    records = experiment.run(_CONFIG.value, workdir)
  except (DataError, run_config.ConfigError, compilation.PopulationTooLarge,
          engine.Diverged, files.WorkdirInUse, files.Unwritable,
          checkpoints.CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  cluster.log(results.format_table(records))
  cluster.log(f'results in {workdir}/results.json and results.md')


if __name__ == '__main__':
  # Before the config is made, so that config.unlearn has the plugins'
  # sections for the command line to set.
  try:
    plugins.load(plugins.from_command_line(sys.argv))
  except plugins.PluginError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  app.run(main)
