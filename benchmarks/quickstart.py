r"""Wall time, compile time and peak memory of a whole run from nothing.

Runs a config as `run_main.py` does (`experiment.run`), in a fresh work
folder: its dataset is built there and the compilation cache is empty, so the
wall time is what a first run costs.

  python -m benchmarks.quickstart --config=configs/quickstart.py \
      --json=benchmarks/results/quickstart.json

Config overrides go as to run_main.py (`--config.population.size=8`). The
compile seconds are the sum of the rows' `compile_seconds`; the peak memory
is the process's peak resident set.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from benchmarks import metadata
from mufax import experiment

# The columns of a row kept; the extended evaluation's forget quality and
# attack where it ran.
KEYS = ('method', 'accuracy', 'mia', 'nomus', 'update_steps', 'wall_seconds',
        'compile_seconds')
EXTENDED = ('F', 'lira_accuracy')


def run(config, workdir: str) -> dict:
  """`experiment.run(config, workdir)`, timed, with its rows' main figures."""
  start = time.perf_counter()
  records = experiment.run(config, workdir)
  wall = time.perf_counter() - start
  return {
      'methods': config.methods, 'model': config.model.name,
      'population': config.population.size,
      'epochs': config.original.epochs, 'wall_s': round(wall, 1),
      'compile_s': round(sum(r.get('compile_seconds', 0.0)
                             for r in records), 1),
      'peak_rss_gib': round(resource.getrusage(
          resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
      'rows': [{k: r[k] for k in KEYS if k in r}
               | {k: r['evaluation'][k] for k in EXTENDED
                  if k in r.get('evaluation', {})} for r in records]}


def main(argv):
  del argv
  recorder = metadata.Recorder()
  # Orbax reports every checkpoint step at INFO, as run_main.py silences.
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  with tempfile.TemporaryDirectory(prefix='quickstart-') as workdir:
    config.data.data_dir = os.path.join(workdir, 'tfds')
    results = {'config': flags.FLAGS['config'].config_filename,
               **run(config, os.path.join(workdir, 'run'))}
  print(f'wall {results["wall_s"]} s, of which compiling '
        f'{results["compile_s"]} s; peak memory '
        f'{results["peak_rss_gib"]} GiB')
  if _JSON.value:
    recorder.write(_JSON.value, results)


if __name__ == '__main__':
  # Defined here rather than on import: benchmarks.device_check imports
  # `run` and has flags of these names.
  _CONFIG = config_flags.DEFINE_config_file(
      'config', None, 'Config file, e.g. configs/quickstart.py.',
      lock_config=True)
  _JSON = flags.DEFINE_string('json', None, 'Also write the results here.')
  flags.mark_flags_as_required(['config'])
  app.run(main)
