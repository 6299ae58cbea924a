"""MUCAC: the model retrained from scratch on retain (protocol §4).

The task is the config argument: configs/mucac_retrain.py:gender (or smiling,
young); multilabel when none is given.
"""

from configs import default


def get_config(task='multilabel'):
  return default.mucac(task, 'retrain')
