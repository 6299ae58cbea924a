"""The confidence statistic φ of a model on an example (docs/evaluation.md §2).

φ = log p_y − log Σ_{k≠y} p_k: the log odds that the model gives the true
label. It is the per-example statistic of the NeurIPS 2023 unlearning
challenge and of LiRA, and much closer to Gaussian over models than the loss.
"""

from __future__ import annotations

import numpy as np

# Added inside each log, as the challenge's code does: a probability that
# underflows to 0 gives a large finite φ instead of ±inf.
TINY = 1e-45


def _softmax_phi(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """φ of [..., n, C] logits for [n] integer labels, in float64."""
  z = logits.astype(np.float64)
  z -= z.max(axis=-1, keepdims=True)
  p = np.exp(z)
  p /= p.sum(axis=-1, keepdims=True)
  hit = np.arange(p.shape[-1]) == labels[..., None]
  p_true = np.where(hit, p, 0.0).sum(axis=-1)
  # Summing the other classes (not 1 − p_y) keeps their mass when p_y ≈ 1.
  p_rest = np.where(hit, 0.0, p).sum(axis=-1)
  return np.log(p_true + TINY) - np.log(p_rest + TINY)


def phi(logits, labels, loss_kind: str) -> np.ndarray:
  """φ per example, for one model or a leading axis of models.

  Args:
    logits: [n, C] or [models, n, C]; for 'sigmoid', C is the attributes.
    labels: [n] integer classes ('softmax') or [n, A] 0/1 ('sigmoid').
    loss_kind: 'softmax' (single label) or 'sigmoid' (multi-label: the mean
      over attributes of φ of each attribute's two-way distribution
      (1 − σ(z), σ(z)), which is the softmax of the logits (0, z)).

  Returns:
    float64 [n] or [models, n].
  """
  logits = np.asarray(logits)
  labels = np.asarray(labels)
  if loss_kind == 'softmax':
    if labels.ndim != 1 or logits.shape[-2:-1] != labels.shape:
      raise ValueError(f'softmax φ needs logits [..., n, C] and labels [n], '
                       f'got {logits.shape} and {labels.shape}.')
    if not np.issubdtype(labels.dtype, np.integer) or np.any(
        (labels < 0) | (labels >= logits.shape[-1])):
      raise ValueError(f'softmax labels must be integers in '
                       f'[0, {logits.shape[-1]}).')
    return _softmax_phi(logits, labels)
  if loss_kind == 'sigmoid':
    if labels.ndim != 2 or logits.shape[-2:] != labels.shape:
      raise ValueError(f'sigmoid φ needs logits [..., n, A] and labels '
                       f'[n, A], got {logits.shape} and {labels.shape}.')
    if not np.all((labels == 0) | (labels == 1)):
      raise ValueError('sigmoid labels must be 0 or 1.')
    two_way = np.stack([np.zeros_like(logits), logits], axis=-1)
    return _softmax_phi(two_way, (labels == 1).astype(np.intp)).mean(axis=-1)
  raise ValueError(f"Unknown loss kind {loss_kind!r}; expected 'softmax' or "
                   "'sigmoid'.")
