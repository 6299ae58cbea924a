"""Likelihood-ratio attack against the retrained population, U-LiRA style
(docs/evaluation.md §4).

For each example, every model of either pool is a target in turn: a Gaussian
fitted to the other models of each pool says whether its φ looks unlearned or
retrained. Balanced accuracy 0.5 means the unlearned models cannot be told
from retrained ones on that example; 1.0 means they always can.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn import metrics as sk_metrics

from mufax.evaluators import base
from mufax.evaluators import intervals

VARIANCE_FLOOR = 1e-6


@dataclasses.dataclass(frozen=True)
class Lira:
  # [examples] balanced accuracy of the attack on each example.
  accuracy: np.ndarray
  # ROC AUC of Λ over every (example, target) pair, unlearned = positive.
  auc: float


def _fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (maximum-likelihood) variance of each column, floored."""
  return x.mean(axis=0), np.maximum(x.var(axis=0), VARIANCE_FLOOR)


def _fit_without_each(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """[models, examples] mean and variance of each column without that model.

  Removes each model's term from the column's mean and sum of squared
  deviations instead of refitting N − 1 models N times.
  """
  n = x.shape[0]
  mean = x.mean(axis=0)
  dev = x - mean
  squares = (dev ** 2).sum(axis=0) - dev ** 2 * n / (n - 1)
  # Rounding can take the sum of squares of equal values a hair below 0.
  variance = np.maximum(squares, 0.0) / (n - 1)
  return mean - dev / (n - 1), np.maximum(variance, VARIANCE_FLOOR)


def _log_density(x, mean, variance):
  """log N(x; mean, variance) up to the −½ log 2π that Λ cancels."""
  return -0.5 * (np.log(variance) + (x - mean) ** 2 / variance)


def log_ratios(unlearned, retrained) -> tuple[np.ndarray, np.ndarray]:
  """Λ = log N(φ; U fit) − log N(φ; R fit) of every target:
  ([N_U, examples], [N_R, examples]).

  Pools of one size are seed-paired (model s of each may share an
  initialisation): target s leaves both fits with its twin, so the twin
  cannot vouch for it. Pools of different sizes are unpaired, and a target
  leaves its own pool's fit only.
  """
  u = np.asarray(unlearned, dtype=np.float64)
  r = np.asarray(retrained, dtype=np.float64)
  if (u.ndim != 2 or r.ndim != 2 or u.shape[1] != r.shape[1]
      or min(u.shape[0], r.shape[0]) < 2):
    raise ValueError(f'LiRA needs two [models >= 2, examples] pools over the '
                     f'same examples, got {u.shape} and {r.shape}.')
  u_others, r_others = _fit_without_each(u), _fit_without_each(r)
  if u.shape == r.shape:
    return (_log_density(u, *u_others) - _log_density(u, *r_others),
            _log_density(r, *u_others) - _log_density(r, *r_others))
  u_all, r_all = _fit(u), _fit(r)
  return (_log_density(u, *u_others) - _log_density(u, *r_all),
          _log_density(r, *u_all) - _log_density(r, *r_others))


def lira(unlearned, retrained) -> Lira:
  """The attack's per-example balanced accuracy and its pooled AUC.

  A target is predicted unlearned when Λ > 0. Pools may differ in size.
  """
  on_u, on_r = log_ratios(unlearned, retrained)
  accuracy = 0.5 * (np.mean(on_u > 0, axis=0) + np.mean(on_r <= 0, axis=0))
  labels = np.concatenate([np.ones(on_u.size), np.zeros(on_r.size)])
  auc = sk_metrics.roc_auc_score(labels,
                                 np.concatenate([on_u.ravel(), on_r.ravel()]))
  return Lira(accuracy=accuracy, auc=float(auc))


@base.register('lira')
def evaluate(row: base.Population, refs: base.References) -> base.Result:
  """Columns lira_accuracy (mean over forget examples, with the half width
  of its bootstrap interval over identities) and lira_auc."""
  pools = base.forget_pools(row, refs)
  if pools is None:
    return base.result()
  attack = lira(*pools)
  return base.result({
      'lira_accuracy': attack.accuracy.mean(),
      'lira_accuracy' + intervals.SUFFIX: intervals.bootstrap_half_width(
          attack.accuracy, refs.forget_identities),
      'lira_auc': attack.auc})
