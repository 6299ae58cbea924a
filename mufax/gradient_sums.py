"""Gradient sums: passes that measure gradients instead of following them.

A measuring stage runs like a training stage, batch by batch, but its
"optimizer" updates nothing: it adds each step's gradients, or their squares
(the diagonal of the empirical Fisher information), to its state, which the
stages after it read (SalUn's saliency, MSG's gradient difference, SSD's
importances). They are kept apart from `optimizers` because nothing here
trains.
"""

import jax
import jax.numpy as jnp
import optax


def gradient_sum(power: int) -> optax.GradientTransformation:
  """Adds each step's gradients (power 1) or their squares (power 2) to the
  state and updates nothing."""

  def update(updates, state, params=None):
    del params
    return (jax.tree.map(jnp.zeros_like, updates),
            jax.tree.map(lambda s, g: s + g ** power, state, updates))

  return optax.GradientTransformation(
      lambda params: jax.tree.map(jnp.zeros_like, params), update)


# As `optimizers.OPTIMIZERS`: the update transform, and what makes a state
# (learning rate and momentum unused), of each sum a stage may name as its
# optimizer.
GRADIENT_SUMS = {
    'gradient_sum': (gradient_sum(1), lambda lr, momentum: gradient_sum(1)),
    'squared_gradient_sum': (gradient_sum(2),
                             lambda lr, momentum: gradient_sum(2)),
}
