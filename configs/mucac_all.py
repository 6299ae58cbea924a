"""MUCAC: the whole table: original, retrained and every method.

The task is the config argument: configs/mucac_all.py:gender (or smiling,
young); multilabel when none is given.
"""

from configs import default


def get_config(task='multilabel'):
  return default.mucac(task, 'all')
