"""The task's losses and hits: what a head's logits mean (protocol §6).

A head is 'softmax' (integer labels, cross-entropy) or 'sigmoid' (0/1 label
vectors, BCE with logits averaged over the labels).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mufax import metrics
from mufax import tasks


def per_sample_loss(logits: jax.Array, labels: jax.Array,
                    loss_kind: str) -> jax.Array:
  """Cross-entropy, or BCE-with-logits averaged over the labels."""
  logits = logits.astype(jnp.float32)
  if loss_kind == 'softmax':
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if loss_kind == 'sigmoid':
    return optax.sigmoid_binary_cross_entropy(
        logits, labels.astype(jnp.float32)).mean(axis=-1)
  raise ValueError(f'Unknown loss kind {loss_kind!r}; expected one of '
                   f'{tasks.LOSS_KINDS}.')


def correct(logits: jax.Array, labels: jax.Array, loss_kind: str) -> jax.Array:
  """Per-sample top-1 hit (softmax) or fraction of attributes right."""
  if loss_kind == 'softmax':
    return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return ((logits > 0) == (labels > 0)).astype(jnp.float32).mean(axis=-1)


def accuracies(logits: np.ndarray, labels: np.ndarray,
               loss_kind: str) -> dict[str, Any]:
  """Utility: top-1 (and top-2 with > 2 classes), or multi-label."""
  if loss_kind == 'sigmoid':
    per_attribute = metrics.multilabel_accuracies(logits, labels)
    return {'accuracy': float(per_attribute.mean()),
            'attribute_accuracies': [float(a) for a in per_attribute]}
  out = {'accuracy': metrics.top_k_accuracy(logits, labels, k=1)}
  if logits.shape[-1] > 2:
    out['top2_accuracy'] = metrics.top_k_accuracy(logits, labels, k=2)
  return out
