"""MUCAC: the original model of protocol §4.

The task is the config argument: configs/mucac_original.py:gender (or smiling,
young); multilabel when none is given.
"""

from configs import default


def get_config(task='multilabel'):
  return default.mucac(task, 'original')
