"""The optimizers a stage's update steps may use, and the table of them.

Each keeps its learning rate and momentum in the optimizer state rather than
in the compiled step, so that one compiled step serves every value. The
passes that only measure gradients are not here: they update nothing
(`measurements`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mufax import engine


def sgd(learning_rate: float = 0.0,
        momentum: float = 0.0) -> optax.GradientTransformation:
  """torch.optim.SGD without weight decay (momentum 0: plain SGD).

  The learning rate and momentum live in the optimizer state rather than in
  the compiled step, so one compiled step serves every value: make a state
  with `sgd(lr, momentum).init` and update it with `SGD`.
  """
  return optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate,
                                             momentum=momentum)


# The update of every state made by `sgd(...)`.
SGD = sgd()


def adam(learning_rate: float = 0.0) -> optax.GradientTransformation:
  """torch.optim.Adam with its defaults, the learning rate in the state as
  in `sgd`."""
  return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)


ADAM = adam()


class GradientScale(NamedTuple):
  scale: Any


def scale_gradients() -> optax.GradientTransformation:
  """Multiplies each gradient element by the state's `scale` (ones when
  made): a method puts its element mask or scales (SalUn, MSG) there."""

  def update(updates, state, params=None):
    del params
    return jax.tree.map(jnp.multiply, updates, state.scale), state

  return optax.GradientTransformation(
      lambda params: GradientScale(jax.tree.map(jnp.ones_like, params)),
      update)


# The update transform, and what makes a state at a given learning rate and
# momentum, of each optimizer a stage may name.
OPTIMIZERS = {
    'sgd': (SGD, sgd),
    'adam': (ADAM, lambda lr, momentum: adam(lr)),
    'scaled_sgd': (optax.chain(scale_gradients(), SGD),
                   lambda lr, momentum: optax.chain(scale_gradients(),
                                                    sgd(lr, momentum))),
}


def with_learning_rate(state: engine.TrainState,
                       learning_rate) -> engine.TrainState:
  """`state` (a population made with `sgd`, `adam` or `scaled_sgd`) at
  another learning rate: one for every member, or one per member (a sweep's
  candidates that differ in it alone)."""

  def replace(opt_state):
    hyper = dict(opt_state.hyperparams)
    old = hyper['learning_rate']
    hyper['learning_rate'] = jax.device_put(
        np.broadcast_to(np.asarray(learning_rate, old.dtype), old.shape),
        old.sharding)
    return opt_state._replace(hyperparams=hyper)

  if hasattr(state.opt_state, 'hyperparams'):
    return state.replace(opt_state=replace(state.opt_state))
  # A chain (`scaled_sgd`): the learning rate is in its last part.
  return state.replace(opt_state=tuple(state.opt_state[:-1])
                       + (replace(state.opt_state[-1]),))
