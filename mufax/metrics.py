"""Evaluation metrics of the benchmark (protocol §6), as pure functions on numpy.

Utility is test accuracy; forgetting is measured by the reference's
membership-inference attack (MIA), a logistic regression on per-sample losses
that tries to tell forget samples from unseen ones. NoMUS combines the two.
Everything here runs on host arrays, so that the numbers can be recomputed from
saved losses and logits without a model or JAX.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn import linear_model
from sklearn import metrics as sk_metrics
from sklearn import model_selection


def _losses(x, name: str) -> np.ndarray:
  """`x` as a non-empty 1-D array of finite real numbers.

  Floating dtypes are kept and integers become float64; `membership_inference`
  fits in float64 whatever the dtype.
  """
  a = np.asarray(x)
  if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.floating) or
                                 np.issubdtype(a.dtype, np.integer)):
    raise ValueError(f'{name} must be real numbers, got dtype {a.dtype}.')
  if a.ndim != 1:
    raise ValueError(f'{name} must be 1-D (one loss per sample), got shape '
                     f'{a.shape}.')
  if a.size == 0:
    raise ValueError(f'{name} is empty.')
  if not np.all(np.isfinite(a)):
    bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
    raise ValueError(f'{name} has {bad} non-finite (NaN or inf) values.')
  return a if np.issubdtype(a.dtype, np.floating) else a.astype(np.float64)


def _unit(x, name: str) -> float:
  """`x` as a finite float in [0, 1]."""
  v = float(x)
  if not (math.isfinite(v) and 0.0 <= v <= 1.0):
    raise ValueError(f'{name} must be a finite number in [0, 1], got {x!r}.')
  return v


def membership_inference(forget_losses, unseen_losses, *, seed: int = 42,
                         n_splits: int = 10) -> float:
  """The reference MIA score M (protocol §6): mean accuracy of a loss-only attack.

  Reproduces the reference notebook step by step, so that the same losses give
  the same score: shuffle the forget losses as `np.random.seed(seed);
  np.random.shuffle(...)` would (a private `RandomState(seed)` draws the same
  permutation without touching numpy's global state), keep the first
  `len(unseen_losses)`, stack unseen losses (label 0) then forget losses
  (label 1) as one feature column, and cross-validate a default
  `LogisticRegression` with `StratifiedShuffleSplit(n_splits, random_state=0)`
  (test size 0.1). The order of the samples matters: it decides which samples
  each split draws.

  Args:
    forget_losses: per-sample losses on the forget set (eval transform).
    unseen_losses: per-sample losses on the unseen set.
    seed: seed of the forget-loss shuffle (the reference uses 42).
    n_splits: number of cross-validation splits (the reference uses 10).

  Returns:
    M in [0, 1]; 0.5 means the attack cannot tell forget from unseen.

  With fewer forget than unseen losses (MUFAC: 1,500 forget, 1,504 unseen)
  the attack set is slightly unbalanced, exactly as in the reference, whose
  published MUFAC numbers come from that set.

  Raises:
    ValueError: on empty, non-1-D or non-finite losses.
  """
  forget = _losses(forget_losses, 'forget_losses')
  unseen = _losses(unseen_losses, 'unseen_losses')
  forget = forget.copy()  # shuffle() works in place; leave the caller's alone.
  np.random.RandomState(seed).shuffle(forget)
  forget = forget[:len(unseen)]
  # The reference's scikit-learn fitted in float64 even on its float32
  # losses; newer versions fit float32 input in float32, which moves M now
  # and then (docs/evaluation.md §8).
  samples = np.concatenate((unseen, forget)).astype(np.float64).reshape(
      (-1, 1))
  labels = [0] * len(unseen) + [1] * len(forget)
  cv = model_selection.StratifiedShuffleSplit(n_splits=n_splits, random_state=0)
  scores = model_selection.cross_val_score(
      linear_model.LogisticRegression(), samples, labels, cv=cv,
      scoring='accuracy')
  return float(scores.mean())


def forgetting_score(mia: float) -> float:
  """|M − 0.5|: how far the attack is from chance (lower is better).

  The reference tables print this value in their "MIA" row.
  """
  return abs(_unit(mia, 'mia') - 0.5)


def nomus_lambda(lam: float) -> float:
  """NoMUS's weight λ as a float; ValueError unless finite and in [0, 1]."""
  return _unit(lam, 'NoMUS lambda')


def nomus(accuracy: float, mia: float, lam: float = 0.5) -> float:
  """NoMUS = λ·accuracy + (1 − λ)·(1 − 2·|M − 0.5|), in [0, 1], higher is better.

  Args:
    accuracy: test accuracy (the average accuracy for multi-label MUCAC).
    mia: the MIA score M from `membership_inference`, not the forgetting score.
    lam: weight λ of utility against forgetting, in [0, 1].
  """
  lam_v = nomus_lambda(lam)
  acc = _unit(accuracy, 'accuracy')
  return lam_v * acc + (1.0 - lam_v) * (1.0 - 2.0 * forgetting_score(mia))


def top_k_accuracy(logits, labels, k: int = 1) -> float:
  """Fraction of samples whose label is among their k highest logits.

  Ties rank the lower class index first (a stable sort of −logits), so k=1
  agrees with `argmax`, which the reference uses for top-1 and binary tasks.

  Args:
    logits: [N, C] scores.
    labels: [N] integer classes in [0, C).
    k: how many top classes count as a hit, 1 <= k <= C.
  """
  logits = np.asarray(logits)
  labels = np.asarray(labels)
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(f'top_k_accuracy needs logits [N, C] and labels [N], got '
                     f'{logits.shape} and {labels.shape}.')
  n, c = logits.shape
  if n == 0:
    raise ValueError('top_k_accuracy got no samples.')
  if not 1 <= k <= c:
    raise ValueError(f'k must be in [1, {c}], got {k}.')
  if not np.issubdtype(labels.dtype, np.integer) or np.any(
      (labels < 0) | (labels >= c)):
    raise ValueError(f'labels must be integers in [0, {c}).')
  top = np.argsort(-logits, axis=1, kind='stable')[:, :k]
  return float(np.mean(np.any(top == labels[:, None], axis=1)))


def multilabel_accuracies(logits, labels) -> np.ndarray:
  """Per-attribute accuracy of sigmoid(logit) > 0.5, i.e. logit > 0.

  Args:
    logits: [N, A] one logit per attribute.
    labels: [N, A] 0/1 (or bool) targets.

  Returns:
    [A] float64 accuracies.
  """
  logits = np.asarray(logits)
  labels = np.asarray(labels)
  if logits.ndim != 2 or labels.shape != logits.shape or logits.shape[0] == 0:
    raise ValueError(f'multilabel accuracy needs non-empty logits and labels '
                     f'of the same [N, A] shape, got {logits.shape} and '
                     f'{labels.shape}.')
  if not np.all((labels == 0) | (labels == 1)):
    raise ValueError('multi-label labels must be 0 or 1.')
  return np.mean((logits > 0) == (labels == 1), axis=0, dtype=np.float64)


def loss_auc(forget_losses, unseen_losses) -> float:
  """ROC AUC of −loss as a score for "is a forget sample" (forget = positive).

  A threshold-free companion to the MIA, on all forget losses (no truncation
  or balancing: AUC does not depend on class sizes). 0.5 means forget and
  unseen losses are indistinguishable; above 0.5 forget samples have lower
  losses than unseen ones (the model still remembers them); below 0.5 they
  have higher losses (over-forgetting, itself a membership signal).
  """
  forget = _losses(forget_losses, 'forget_losses')
  unseen = _losses(unseen_losses, 'unseen_losses')
  scores = -np.concatenate((forget, unseen))
  labels = np.concatenate((np.ones(len(forget)), np.zeros(len(unseen))))
  return float(sk_metrics.roc_auc_score(labels, scores))


def parameter_change(original, model) -> dict[str, float]:
  """How far `model` moved from `original` (two sequences of arrays, the
  same shapes in the same order): the fraction of parameter elements that
  differ at all, and the relative L2 distance ‖θ − θ₀‖ / ‖θ₀‖. A method that
  changed nothing scores 0 on both."""
  pairs = [(np.asarray(a, np.float64), np.asarray(b, np.float64))
           for a, b in zip(original, model, strict=True)]
  for a, b in pairs:
    if a.shape != b.shape:
      raise ValueError(f'parameter_change: shapes {a.shape} and {b.shape} '
                       'differ; compare two models of one architecture.')
  total = sum(a.size for a, _ in pairs)
  changed = sum(int(np.count_nonzero(a != b)) for a, b in pairs)
  distance = math.sqrt(sum(float(np.sum((b - a) ** 2)) for a, b in pairs))
  norm = math.sqrt(sum(float(np.sum(a ** 2)) for a, _ in pairs))
  return {'changed_fraction': changed / total if total else 0.0,
          'relative_l2': distance / norm if norm else float(distance > 0)}
