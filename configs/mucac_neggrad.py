"""MUCAC: NegGrad (protocol §5) beside the original.

The task is the config argument: configs/mucac_neggrad.py:gender (or smiling,
young); multilabel when none is given.
"""

from configs import default


def get_config(task='multilabel'):
  return default.mucac(task, 'original,neggrad')
