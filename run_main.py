r"""Runs the benchmark as a config describes it.

  python run_main.py --config=configs/quickstart.py [--workdir=DIR]
      [--config.data.dataset=mufac/paper --config.data.manual_dir=DIR]

Today it prepares the config's dataset (building it if needed) and reports its
splits; the JSON report also goes to DIR/data.json.
"""

import json
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from mufax.data import prepare
from mufax.data.errors import DataError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/quickstart.py.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where results are written.')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  config = _CONFIG.value
  try:
    builder = prepare.prepare(
        config.data.dataset,
        data_dir=config.data.data_dir or prepare.DEFAULT_DATA_DIR,
        manual_dir=config.data.manual_dir or None)
    summary = prepare.describe(builder)
  except DataError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(prepare.format_splits(summary))
  if _WORKDIR.value:
    os.makedirs(_WORKDIR.value, exist_ok=True)
    with open(os.path.join(_WORKDIR.value, 'data.json'), 'w') as f:
      json.dump(summary, f, indent=1)
  print(json.dumps(summary))


if __name__ == '__main__':
  app.run(main)
