"""How a population lies on the devices, and how its arrays get there and back.

A 2-D device mesh (`model`, `data`): members are spread over the `model` axis
as far as they divide among the devices, and each member's batch over the
`data` axis. One device is the 1 x 1 case of the same code. Trees of a
population carry a leading model axis (`members`).
"""

import math

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MODEL_AXIS = 'model'
DATA_AXIS = 'data'


def members(tree) -> int:
  """The population size of a tree whose leaves have a leading model axis."""
  return int(jax.tree.leaves(tree)[0].shape[0])


def member(tree, k: int):
  """Member `k` of a population, as a single model's tree (host arrays)."""
  return jax.tree.map(lambda x: x[k], to_host(tree))


def put(tree, sharding: NamedSharding):
  """`jax.device_put` onto `sharding`, which may span the devices of several
  processes (each passing the same values); PRNG keys, which cannot be put
  there whole, travel as their data."""

  def one(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(
          jax.device_put(jax.random.key_data(x), sharding),
          impl=jax.random.key_impl(x))
    return jax.device_put(x, sharding)

  return jax.tree.map(one, tree)


def to_host(tree):
  """`tree`'s arrays as numpy arrays. An array spread over the devices of
  several processes is gathered from all of them: every process must then
  call this at the same point, as it does every other computation."""

  def fetch(x):
    if (isinstance(x, jax.Array) and not x.is_fully_addressable
        and not x.is_fully_replicated):
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(fetch, tree)


def make_mesh(population: int = 1, devices=None) -> Mesh:
  """The (`model`, `data`) mesh for a population of `population` members.

  Members spread over as many devices as divide both counts; the rest of
  the devices share each member's batch.
  """
  devices = list(jax.devices() if devices is None else devices)
  spread = math.gcd(population, len(devices))
  return Mesh(np.asarray(devices).reshape(spread, len(devices) // spread),
              (MODEL_AXIS, DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def member_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(MODEL_AXIS))


def batch_spec(mesh: Mesh, batch_size: int) -> P:
  """How one member's batch lies on the mesh's `data` axis.

  A batch that does not divide evenly (the short last batch of an epoch,
  where the objective does not pad it) is computed whole on each device.
  """
  return P(DATA_AXIS) if batch_size % mesh.shape[DATA_AXIS] == 0 else P()
