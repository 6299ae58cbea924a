"""Forgetting per person (docs/evaluation.md §5).

MUFAC and MUCAC forget identities, not images. A model's statistic for an
identity is its mean φ over that identity's forget images; §3's ε and F and
§4's attack then run on these statistics, one "example" per identity.
"""

from __future__ import annotations

import numpy as np

from mufax.evaluators import base
from mufax.evaluators import epsilon
from mufax.evaluators import intervals
from mufax.evaluators import lira

LEAST_FORGOTTEN = 5


def identity_means(phi, identities) -> tuple[np.ndarray, np.ndarray,
                                             np.ndarray]:
  """Each model's mean φ over each identity's examples.

  Args:
    phi: [models, examples].
    identities: [examples] identity of each example.

  Returns:
    (ids [identities] sorted, images [identities] examples of each,
     means [models, identities] float64).
  """
  phi = np.asarray(phi, dtype=np.float64)
  identities = np.asarray(identities)
  if phi.ndim != 2 or identities.shape != phi.shape[1:]:
    raise ValueError(f'identity_means needs phi [models, examples] and '
                     f'identities [examples], got {phi.shape} and '
                     f'{identities.shape}.')
  ids, index, images = np.unique(identities, return_inverse=True,
                                 return_counts=True)
  members = np.zeros((len(identities), len(ids)))
  members[np.arange(len(identities)), index] = 1.0
  return ids, images, phi @ members / images


@base.register('identity')
def evaluate(row: base.Population, refs: base.References) -> base.Result:
  """Columns F_identity and lira_accuracy_identity, each with the half width
  of its bootstrap interval over identities (`_ci95`); tables `identities` (one
  row per forget identity) and `least_forgotten` (the LEAST_FORGOTTEN with the
  largest ε, ties to the higher attack accuracy)."""
  pools = base.forget_pools(row, refs)
  if pools is None:
    return base.result()
  ids, images, u = identity_means(pools[0], refs.forget_identities)
  _, _, r = identity_means(pools[1], refs.forget_identities)
  eps = epsilon.epsilons(u, r)
  worth = epsilon.earnings(eps, u.shape[0])
  attack = lira.lira(u, r)
  rows = [{'identity': i.item(), 'images': int(n), 'epsilon': float(e),
           'attack_accuracy': float(a)}
          for i, n, e, a in zip(ids, images, eps, attack.accuracy)]
  worst = np.lexsort((-attack.accuracy, -eps))[:LEAST_FORGOTTEN]
  # One value per person: the bootstrap over identities resamples them.
  half_width = lambda values: intervals.bootstrap_half_width(values, ids)
  return base.result(
      {'F_identity': worth.mean(),
       'F_identity' + intervals.SUFFIX: half_width(worth),
       'lira_accuracy_identity': attack.accuracy.mean(),
       'lira_accuracy_identity' + intervals.SUFFIX: half_width(
           attack.accuracy)},
      tables={'identities': rows,
              'least_forgotten': [rows[j] for j in worst]})
