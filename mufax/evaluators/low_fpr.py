"""The loss attack's true-positive rate at low false-positive rates
(docs/evaluation.md §6).

An accuracy near 0.5 can hide a few forget samples that the attack spots with
certainty; the TPR at 1% and 0.1% FPR shows them.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as sk_metrics

from mufax.evaluators import base

# Column name -> the false-positive rate it is read at.
FPRS = {'tpr_at_1%_fpr': 0.01, 'tpr_at_0.1%_fpr': 0.001}


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
  """Per-seed columns of FPRS, on the row's forget and unseen losses."""
  del refs  # Each model is attacked on its own losses.
  if 'forget' not in row.losses or 'unseen' not in row.losses:
    return base.result()
  forget, unseen = row.losses['forget'], row.losses['unseen']
  return base.result(per_seed={
      column: [tpr_at_fpr(f, u, rate) for f, u in zip(forget, unseen)]
      for column, rate in FPRS.items()})
