"""MUCAC: UNSIR stages 1 and 2 (protocol §5) beside the original.

The task is the config argument: configs/mucac_unsir.py:gender (or smiling,
young); multilabel when none is given.
"""

from configs import default


def get_config(task='multilabel'):
  return default.mucac(task, 'original,unsir')
