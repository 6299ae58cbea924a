"""The reference's published results (docs/protocol.md §7), to set ours beside.

Typed in from the tables of Choi & Na (2023) as protocol §7 gives them:
ResNet-18, λ = 0.5, one run per number, rounded to 4 digits. They are the
reference's claims, not ground truth, so nothing here is used to compute a
metric; the tables and plots of an experiment only show them next to its own
results.
"""

from __future__ import annotations

from mufax import tasks

SOURCE = ('Choi & Na (2023), arXiv 2311.02240, as listed in '
          'docs/protocol.md §7: ResNet-18, single runs, NoMUS with λ = 0.5.')

# Row names as mufax's methods are called, in the column order of protocol §7.
METHODS = ('original', 'retrain', 'finetune', 'cf3', 'neggrad', 'unsir_stage1',
           'unsir_stage2', 'scrub', 'advanced_neggrad')

# Metric names: MUFAC reports top-2 as well; for multi-label MUCAC `accuracy`
# is the average accuracy over the three attributes (the utility of NoMUS).
_MUFAC_KEYS = ('accuracy', 'top2_accuracy', 'forgetting_score', 'nomus')
_MUCAC_KEYS = ('accuracy', 'forgetting_score', 'nomus')

# One tuple per method, in METHODS order, values in the order of the keys.
_MUFAC = (
    (0.5951, 0.8804, 0.2136, 0.5839),
    (0.4880, 0.7667, 0.0445, 0.6994),
    (0.6055, 0.8869, 0.2129, 0.5898),
    (0.5900, 0.8804, 0.2126, 0.5823),
    (0.4048, 0.5932, 0.0485, 0.6538),
    (0.5893, 0.8778, 0.2089, 0.5857),
    (0.5925, 0.8674, 0.1990, 0.5972),
    (0.5984, 0.8745, 0.1415, 0.6576),
    (0.5633, 0.8557, 0.0953, 0.6863),
)

_MUCAC_MULTILABEL = (
    (0.8852, 0.0568, 0.8858),
    (0.8135, 0.0436, 0.8631),
    (0.9147, 0.0708, 0.8865),
    (0.9197, 0.0685, 0.8913),
    (0.4193, 0.0356, 0.6740),
    (0.7087, 0.0324, 0.8219),
    (0.9220, 0.0705, 0.8905),
    (0.9073, 0.0478, 0.9058),
    (0.7607, 0.0152, 0.8651),
)

# Protocol §7 prints the binary tables transposed (one line per metric); they
# are kept that way so that each line can be checked against it at a glance.
_MUCAC_BINARY_BY_METRIC = {
    'gender': (
        (.9835, .9515, .9849, .9840, .1762, .9481, .9845, .1762, .9147),
        (.0306, .0154, .0281, .0291, .1289, .0638, .0481, .1329, .0129),
        (.9611, .9603, .9643, .9629, .4592, .9102, .9441, .4552, .9444),
    ),
    'smiling': (
        (.9467, .6518, .9476, .9472, .5549, .8619, .9506, .5549, .9423),
        (.0346, .0182, .0279, .0294, .0366, .0416, .0271, .4680, .0354),
        (.9387, .8077, .9459, .9442, .7408, .8893, .9482, .3094, .9357),
    ),
    'young': (
        (.9089, .8271, .9147, .9118, .1733, .8260, .9021, .8929, .5573),
        (.0456, .0234, .0426, .0456, .0513, .0229, .0493, .0428, .0139),
        (.9088, .8901, .9147, .9103, .5353, .8901, .9017, .9036, .7647),
    ),
}

# (keys, rows) per published task, by `tasks.Task.name`; rows in METHODS order.
_TABLES = {
    'age': (_MUFAC_KEYS, _MUFAC),
    'multilabel': (_MUCAC_KEYS, _MUCAC_MULTILABEL),
    **{attribute: (_MUCAC_KEYS, tuple(zip(*by_metric, strict=True)))
       for attribute, by_metric in _MUCAC_BINARY_BY_METRIC.items()},
}


def published(task: tasks.Task, method: str) -> dict[str, float] | None:
  """The published numbers of `method` on `task`, or None if there are none.

  Args:
    task: a dataset's task. Every MUFAC config has the one MUFAC table (the
      reference has only its own protocol; a `clean` run is compared with it
      all the same); MUCAC configs have the table of their task; a task
      without a `benchmark`, such as the synthetic stand-in's, has none.
    method: one of METHODS; others (e.g. `cf2`) were not published.

  Returns:
    A new dict: for MUFAC `accuracy`, `top2_accuracy`, `forgetting_score` and
    `nomus`; for MUCAC `accuracy` (the average accuracy for multi-label),
    `forgetting_score` and `nomus`.
  """
  if task.benchmark is None or method not in METHODS:
    return None
  keys, rows = _TABLES[task.name]
  return dict(zip(keys, rows[METHODS.index(method)], strict=True))
