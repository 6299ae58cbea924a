"""MUCAC: CF-3 (protocol §5; k is config.unlearn.cf_k.k) beside the original.

The task is the config argument: configs/mucac_cf3.py:gender (or smiling,
young); multilabel when none is given.
"""

from configs import default


def get_config(task='multilabel'):
  return default.mucac(task, 'original,cf_k')
