"""The loss attack's true-positive rate at low false-positive rates
(docs/evaluation.md §6).

An accuracy near 0.5 can hide a few forget samples that the attack spots with
certainty; the TPR at 1% and 0.1% FPR shows them. With n unseen examples the
attack cannot reach an FPR between 0 and 1/n: each column is named by the FPR
it really reached (at 400 unseen examples, 1% and 0%: the TPR at zero false
positives).
"""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as sk_metrics

from mufax.evaluators import base

# The false-positive rates the attack is read at.
TARGET_FPRS = (0.01, 0.001)
COLUMN_PREFIX = 'tpr_at_'


def reached_fpr(target: float, negatives: int) -> float:
  """The largest false-positive rate at most `target` that `negatives`
  negatives can give: k / negatives. Below 1 / target negatives it is 0, and
  the TPR is the TPR at zero false positives."""
  return math.floor(target * negatives + 1e-9) / negatives


def column(fpr: float) -> str:
  """The column of the TPR at `fpr`, named by the rate actually reached:
  tpr_at_1%_fpr, tpr_at_0.0942%_fpr, tpr_at_0%_fpr."""
  return f'{COLUMN_PREFIX}{100 * fpr:.3g}%_fpr'


def tpr_at_fpr(forget_losses, unseen_losses, fpr: float) -> float:
  """Largest TPR of a threshold "loss ≤ τ means forget" whose FPR ≤ `fpr`.

  Forget samples are the positives, unseen ones the negatives; every
  threshold is considered (no ROC points dropped).
  """
  forget = np.asarray(forget_losses, dtype=np.float64)
  unseen = np.asarray(unseen_losses, dtype=np.float64)
  labels = np.concatenate([np.ones(forget.size), np.zeros(unseen.size)])
  fprs, tprs, _ = sk_metrics.roc_curve(
      labels, -np.concatenate([forget, unseen]), drop_intermediate=False)
  return float(tprs[fprs <= fpr].max())


@base.register('low_fpr')
def evaluate(row: base.Population, refs: base.References) -> base.Result:
  """A per-seed column per rate of TARGET_FPRS, named by the rate the row's
  unseen losses reach (`reached_fpr`); targets that reach one rate share a
  column."""
  del refs  # Each model is attacked on its own losses.
  if 'forget' not in row.losses or 'unseen' not in row.losses:
    return base.result()
  forget, unseen = row.losses['forget'], row.losses['unseen']
  rates = dict.fromkeys(reached_fpr(t, unseen.shape[1]) for t in TARGET_FPRS)
  return base.result(per_seed={
      column(rate): [tpr_at_fpr(f, u, rate) for f, u in zip(forget, unseen)]
      for rate in rates})
