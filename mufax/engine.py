"""The engine: populations of models trained at once on device-resident data.

Training from scratch and every unlearning stage run through the same pieces:

- **Data on the device.** Every split a run needs is placed on the devices
  once, as uint8 images and labels (`Engine`). A batch is gathered on the
  device from an index array; the host never touches an image again.
- **Plans.** What a run does step by step is a plan (`Plan`): per update step,
  which objective and which example indices of which splits, for every member.
  It is uploaded as int arrays before the run starts. A short batch (an
  epoch's last) is padded to full size and masked where the objective allows
  (`Objective.pads`), so that it needs no program of its own.
- **Populations.** Parameters, batch statistics and optimizer state carry a
  leading model axis; the single-model step is `jax.vmap`ped over it. Each
  member has its own initialisation key, data order and augmentation draws.
- **Executors**, chosen once from the devices' platform (`choose_executor`,
  or forced by `config.engine.executor`):
  - `loop` (accelerators): a run of steps executes as one compiled loop over
    the plan, with the state donated; the host only asks for the next chunk
    of steps, sized so that progress lines appear about every
    `log_every_s`. The loop's bounds are runtime values, so one compiled
    program serves every chunk: a chunk's length never triggers a
    compilation.
  - `host` (CPU, where XLA runs convolutions inside a loop slowly): the host
    queues the chunk's steps one by one: per step, a shared program makes
    each batch (gather, augmentation) and the update's program takes them,
    so a program's shapes depend neither on the plan's length nor on which
    method runs it.
  The same platform decides the model's convolutions and max pool
  (`models.for_platform`) and the CPU-only compiler options.
- **Mesh.** A 2-D device mesh (`model`, `data`): members are spread over the
  `model` axis as far as they divide among the devices, and each member's
  batch over the `data` axis. One device is the 1 x 1 case of the same code.

Methods and recipes describe one model's objective (`Objective`); the engine
vectorises it. Results equal, member by member, the single models trained with
each member's seed, within float32 rounding.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mufax import input_pipeline
from mufax import losses
from mufax import models

HOST, LOOP = 'host', 'loop'
EXECUTORS = ('auto', HOST, LOOP)

MODEL_AXIS = 'model'
DATA_AXIS = 'data'
# Images per member in one evaluation batch, shrunk as the population grows so
# that the activations of every member fit together.
EVAL_IMAGES = 256


def log(message: str) -> None:
  """A progress line, printed once however many processes run."""
  if jax.process_index() == 0:
    print(message, flush=True)


@flax.struct.dataclass
class TrainState:
  """A model's (or, with a leading model axis, a population's) state."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  @property
  def variables(self):
    return {'params': self.params, 'batch_stats': self.batch_stats}


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


# ------------------------------------------------------------------- devices


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


# ------------------------------------------------------------ the model


def preprocess(images: jax.Array, image_size: int | None) -> jax.Array:
  """uint8 or [0, 1] images -> float32 [0, 1] at `image_size` (if given).

  Resizing here lets reduced runs use smaller images than are stored.
  """
  images = input_pipeline.to_float(images)
  if image_size and images.shape[1:3] != (image_size, image_size):
    images = jax.image.resize(
        images, (images.shape[0], image_size, image_size, images.shape[3]),
        'linear', antialias=True)
  return images


def apply_model(model: nn.Module, params, batch_stats, images: jax.Array, *,
                train: bool, mask: jax.Array | None = None):
  """Logits, and the updated batch statistics when `train`; in train mode
  BatchNorm's statistics are taken over the images where `mask` (if given)
  is True."""
  variables = {'params': params, 'batch_stats': batch_stats}
  if not train:
    return model.apply(variables, images, train=False), batch_stats
  logits, updates = model.apply(
      variables, images, train=True, mutable=['batch_stats'],
      **({} if mask is None else {'mask': mask}))
  return logits, updates['batch_stats']


def split_params(params, trainable: frozenset[str] | None):
  """(trainable, frozen) top-level parameter dicts (`models.param_group`)."""
  if trainable is None:
    return params, {}
  train_part = {k: v for k, v in params.items()
                if models.param_group(k) in trainable}
  frozen = {k: v for k, v in params.items()
            if models.param_group(k) not in trainable}
  return train_part, frozen


# ------------------------------------------------------------- objectives


class Forward:
  """The model as a function of images that threads BatchNorm statistics.

  In train mode each call normalises by the batch and updates the running
  statistics, in call order, as a PyTorch module in train mode does; in eval
  mode it uses and keeps them.
  """

  def __init__(self, model: nn.Module, params, batch_stats, *, train: bool):
    self.model, self.params, self.train = model, params, train
    self.batch_stats = batch_stats

  def apply(self, batch_stats, images, mask=None):
    """Pure form: (logits, updated statistics)."""
    return apply_model(self.model, self.params, batch_stats, images,
                       train=self.train, mask=mask)

  def __call__(self, images: jax.Array,
               mask: jax.Array | None = None) -> jax.Array:
    """Logits of `images`; `mask` marks the real ones of a padded batch,
    which alone make BatchNorm's statistics in train mode."""
    logits, self.batch_stats = self.apply(self.batch_stats, images, mask)
    return logits.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Inputs:
  """The step's augmented batches and what objectives need besides the model.

  `teachers` are models in eval mode, by name ('original': the model being
  unlearnt), that the run passes; `loss(logits, labels)` is the task's mean
  loss. `masks` mark each batch's real examples: all of them, unless the
  objective `pads` and the batch is a short one padded to full size.
  """
  batches: Mapping[str, tuple[jax.Array, jax.Array]]
  rng: jax.Array
  loss_kind: str
  teachers: Mapping[str, Callable[[jax.Array], jax.Array]] = (
      dataclasses.field(default_factory=dict))
  # The member's update steps so far in this run of a stage (0 first), for
  # objectives that change over a stage (an ℓ1 weight that decays).
  step: jax.Array | int = 0
  masks: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)

  def teacher(self, images: jax.Array, name: str = 'original') -> jax.Array:
    """The logits of teacher `name` on `images`."""
    return self.teachers[name](images)

  def images(self, name: str) -> jax.Array:
    return self.batches[name][0]

  def labels(self, name: str) -> jax.Array:
    return self.batches[name][1]

  def loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    return losses.per_sample_loss(logits, labels, self.loss_kind).mean()

  def mask(self, name: str) -> jax.Array:
    """bool [batch]: which rows of batch `name` are real examples."""
    if name in self.masks:
      return self.masks[name]
    return jnp.ones(self.images(name).shape[:1], bool)

  def mean(self, values: jax.Array, name: str) -> jax.Array:
    """The mean of per-example `values` [batch, ...] over batch `name`'s
    real examples."""
    weight = self.mask(name).astype(values.dtype)
    weight = weight.reshape(weight.shape + (1,) * (values.ndim - 1))
    count = weight.sum() * math.prod(values.shape[1:])
    return (values * weight).sum() / count

  def logits(self, forward: Forward, name: str) -> jax.Array:
    """`forward` on batch `name`, its padding kept out of BatchNorm."""
    return forward(self.images(name), self.masks.get(name))

  def task_loss(self, logits: jax.Array, name: str) -> jax.Array:
    """The task's loss of `logits` against batch `name`'s labels, mean over
    its real examples."""
    return self.mean(losses.per_sample_loss(logits, self.labels(name),
                                            self.loss_kind), name)


# loss(forward, inputs, prepared) -> (scalar to minimise, measurements).
LossFn = Callable[[Forward, Inputs, Any], tuple[jax.Array, dict]]
# prepare(forward, inputs) -> anything the loss needs that is not
# differentiated (teacher logits, UNSIR's noise); may run the model.
PrepareFn = Callable[[Forward, Inputs], Any]


@dataclasses.dataclass(frozen=True)
class Objective:
  loss: LossFn
  prepare: PrepareFn | None = None
  # True when the loss weighs examples by their masks (it runs the model
  # with `inputs.logits` and averages with `inputs.mean` / `inputs.task_loss`).
  # The engine then pads a short batch (an epoch's last) to the full batch
  # size, and one compiled program serves both.
  pads: bool = False


@dataclasses.dataclass(frozen=True)
class Update:
  """One kind of update step: objective, optimizer, BatchNorm mode, which
  parameter groups train (None: all), and whether batches are augmented
  (the protocol's training transforms) or seen as stored."""
  objective: Objective
  tx: optax.GradientTransformation
  bn_train: bool = True
  trainable: frozenset[str] | None = None
  augment: bool = True


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


def gradient_sum(power: int) -> optax.GradientTransformation:
  """Adds each step's gradients (power 1) or their squares (power 2) to the
  state and updates nothing: a pass that measures gradients."""

  def update(updates, state, params=None):
    del params
    return (jax.tree.map(jnp.zeros_like, updates),
            jax.tree.map(lambda s, g: s + g ** power, state, updates))

  return optax.GradientTransformation(
      lambda params: jax.tree.map(jnp.zeros_like, params), update)


# The update transform, and what makes a state at a given learning rate and
# momentum, of each kind of stage an unlearning method may run.
OPTIMIZERS = {
    'sgd': (SGD, sgd),
    'adam': (ADAM, lambda lr, momentum: adam(lr)),
    'scaled_sgd': (optax.chain(scale_gradients(), SGD),
                   lambda lr, momentum: optax.chain(scale_gradients(),
                                                    sgd(lr, momentum))),
    'gradient_sum': (gradient_sum(1), lambda lr, momentum: gradient_sum(1)),
    'squared_gradient_sum': (gradient_sum(2),
                             lambda lr, momentum: gradient_sum(2)),
}


def with_learning_rate(state: TrainState, learning_rate: float) -> TrainState:
  """`state` (a population made with `sgd`) at another learning rate."""
  hyper = dict(state.opt_state.hyperparams)
  old = hyper['learning_rate']
  hyper['learning_rate'] = jax.device_put(
      np.full(old.shape, learning_rate, old.dtype), old.sharding)
  return state.replace(opt_state=state.opt_state._replace(hyperparams=hyper))


def _task_loss(forward, inputs, prepared):
  del prepared
  logits = inputs.logits(forward, 'train')
  correct = losses.correct(logits, inputs.labels('train'), inputs.loss_kind)
  return inputs.task_loss(logits, 'train'), {
      'accuracy': inputs.mean(correct, 'train')}


# Training from scratch: the task's loss on the batch named 'train' (which
# split that is, the run's `sources` say), measuring accuracy.
TASK_OBJECTIVE = Objective(_task_loss, pads=True)


# ------------------------------------------------------------------- plans


@dataclasses.dataclass
class Plan:
  """Every update step of a run, for every member.

  `steps[i]` is (update key, {split: int array [members, batch]}): the
  examples of each split that member m sees at step i. Steps of one key and
  batch shape form a group, uploaded as one array [steps, members, batch].
  """
  steps: list[tuple[str, dict[str, np.ndarray]]]

  @classmethod
  def stack(cls, per_member: Sequence[Sequence[tuple[str, Mapping]]]) -> Plan:
    """One plan from each member's own list of (key, {split: indices})."""
    lengths = {len(p) for p in per_member}
    if len(lengths) != 1:
      raise ValueError(f'Members plan different step counts: {lengths}.')
    steps = []
    for i in range(lengths.pop()):
      key, splits = per_member[0][i][0], sorted(per_member[0][i][1])
      if any(p[i][0] != key or sorted(p[i][1]) != splits for p in per_member):
        raise ValueError(f'Members plan different kinds of step {i}.')
      steps.append((key, {s: np.stack([np.asarray(p[i][1][s], np.int32)
                                       for p in per_member])
                          for s in splits}))
    return cls(steps)

  def __len__(self):
    return len(self.steps)

  def groups(self, padded: frozenset[str] = frozenset()
             ) -> tuple[dict[tuple, dict[str, np.ndarray]],
                        list[tuple[tuple, int, int]]]:
    """(arrays per group, segments): a segment is (group, start, stop) of
    consecutive steps of one group, in plan order.

    Batches of the keys in `padded` are padded with index -1 to the largest
    batch of their key and split, so that their steps form one group.
    """
    full: dict[tuple[str, str], int] = {}
    for key, batches in self.steps:
      for s, v in batches.items():
        full[key, s] = max(full.get((key, s), 0), v.shape[1])
    members_of: dict[tuple, list[dict[str, np.ndarray]]] = {}
    segments = []
    for key, batches in self.steps:
      if key in padded:
        batches = {s: np.pad(v, ((0, 0), (0, full[key, s] - v.shape[1])),
                             constant_values=-1)
                   for s, v in batches.items()}
      group = (key,) + tuple((s, v.shape[1])
                             for s, v in sorted(batches.items()))
      rows = members_of.setdefault(group, [])
      if segments and segments[-1][0] == group and segments[-1][2] == len(rows):
        segments[-1] = (group, segments[-1][1], len(rows) + 1)
      else:
        segments.append((group, len(rows), len(rows) + 1))
      rows.append(batches)
    arrays = {group: {s: np.stack([b[s] for b in rows]) for s in rows[0]}
              for group, rows in members_of.items()}
    return arrays, segments

  def members(self, first: int, stop: int) -> Plan:
    """The plan of members first..stop-1."""
    return Plan([(key, {s: v[first:stop] for s, v in batches.items()})
                 for key, batches in self.steps])

  def images(self, i: int) -> int:
    """Images one member sees at step i."""
    return sum(v.shape[1] for v in self.steps[i][1].values())


def _pad_steps(steps: np.ndarray) -> np.ndarray:
  """`steps` [S, ...] padded with zeros to the next power of two.

  Programs are compiled for the shapes of their arguments: padded, plans of
  similar lengths (an epoch over train and one over retain, SCRUB's retain
  and forget passes) share one program. The loop runs only the real steps.
  """
  length = 1 << max(3, (len(steps) - 1).bit_length())
  return np.concatenate([steps, np.zeros((length - len(steps),)
                                         + steps.shape[1:], steps.dtype)])


def epoch_plan(pools: Sequence[np.ndarray], *, batch_size: int,
               seeds: Sequence[int],
               epoch: int) -> list[list[tuple[str, dict]]]:
  """Per member, one shuffled pass over its pool of examples, as 'train'
  steps (a DataLoader with shuffle and drop_last=False): the order is fixed
  by (seed, epoch)."""
  plans = []
  for pool, seed in zip(pools, seeds):
    order = pool[input_pipeline.epoch_order(len(pool), shuffle=True,
                                            seed=seed, epoch=epoch)]
    plans.append([('train', {'train': order[b:b + batch_size]})
                  for b in range(0, len(order), batch_size)])
  return plans


# ---------------------------------------------------------- compilation


@dataclasses.dataclass
class Compiled:
  """An executable with what XLA says of it."""
  call: Callable
  seconds: float
  flops: float
  # Device bytes it needs: arguments, outputs and temporaries, less the
  # donated buffers it reuses.
  bytes: int


class Compiler:
  """Compiles each program once per argument layout and keeps account.

  Programs are compiled ahead of time (`lower().compile()`), which gives
  the compile time apart from the step time, XLA's memory analysis (checked
  against the device before the first step runs) and its flop count.
  """

  def __init__(self, memory_limit: int | None = None, fixed_bytes: int = 0):
    self.memory_limit = memory_limit
    # What every program holds whatever the population (the resident data).
    self.fixed_bytes = fixed_bytes
    self.seconds = 0.0
    self._cache: dict[tuple, Compiled] = {}

  def __call__(self, jitted, *args, members: int = 1,
               resident_bytes: int = 0) -> Compiled:
    """The compiled `jitted` for `args`, checked against the memory limit
    together with `resident_bytes` that other members hold meanwhile; the
    `members` are all of them."""
    leaves, tree = jax.tree.flatten(args)
    key = (jitted, tree, tuple(
        (np.shape(x), str(getattr(x, 'dtype', None) or np.result_type(x)),
         getattr(x, 'sharding', None)) for x in leaves))
    if key not in self._cache:
      start = time.perf_counter()
      executable = jitted.lower(*args).compile()
      seconds = time.perf_counter() - start
      self.seconds += seconds
      cost = executable.cost_analysis() or {}
      if isinstance(cost, list):  # older JAX: one dict per computation
        cost = cost[0] if cost else {}
      memory = executable.memory_analysis()
      needed = 0 if memory is None else (
          memory.argument_size_in_bytes + memory.output_size_in_bytes
          + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
      self._cache[key] = Compiled(executable, seconds,
                                  float(cost.get('flops', 0.0)), needed)
      check_memory(needed + resident_bytes, members, self.memory_limit,
                   self.fixed_bytes)
    return self._cache[key]


class PopulationTooLarge(ValueError):
  """A population whose state, data and step do not fit in device memory."""


def device_memory(device=None) -> int:
  """Bytes one device can hold: its allocator's limit on an accelerator,
  the host's available memory shared by its devices on CPU."""
  device = device or jax.local_devices()[0]
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if stats and stats.get('bytes_limit'):
    return int(stats['bytes_limit'])
  available = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          available = int(line.split()[1]) * 1024
  except OSError:
    pass
  return available // max(1, jax.local_device_count())


def check_memory(needed: int, population: int, limit: int | None,
                 fixed: int = 0) -> None:
  """Refuses a population whose `needed` bytes per device exceed `limit`.

  `fixed` is the part that does not grow with the population (the resident
  data); the rest is taken to grow linearly, to name the size that fits.
  """
  if limit is None or needed <= limit:
    return
  per_member = max(1, (needed - fixed) / population)
  fits = max(0, int((limit - fixed) // per_member))
  raise PopulationTooLarge(
      f'A population of {population} needs about {needed / 2**30:.2f} GiB per '
      f'device and the device holds {limit / 2**30:.2f} GiB: '
      + (f'at most {fits} member(s) fit; set config.population.size={fits} '
         'or less.' if fits else
         'not even one member fits; use smaller images or a smaller model.'))


def tree_bytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


class Diverged(RuntimeError):
  """Training from scratch whose loss stopped being finite."""


def divergence(loss: np.ndarray, seeds: Sequence[int]) -> dict | None:
  """Where a run's losses [steps, members] first stop being finite: the
  step (1-based), the seeds of the members it happened to and the mean of
  their last finite losses; None if they never do."""
  bad = ~np.isfinite(loss)
  if not bad.any():
    return None
  step = int(np.argmax(bad.any(axis=1)))
  members = np.flatnonzero(bad[step])
  return {'step': step + 1, 'seeds': [int(seeds[m]) for m in members],
          'last_finite_loss': (float(loss[step - 1, members].mean())
                               if step else None)}


# ---------------------------------------------------------------- engine


@dataclasses.dataclass
class RunResult:
  """What a run of a plan reports besides the new state."""
  # {measurement: float array [steps, members]}, steps in plan order.
  measured: dict[str, np.ndarray]
  seconds: float
  compile_seconds: float
  # XLA-counted flops of one update step of the whole population, summed
  # over the steps run.
  flops: float


def choose_executor(executor: str, platform: str) -> str:
  """`executor` ('auto', 'host' or 'loop') for devices of `platform`: auto
  is host dispatch on CPU and the compiled loop elsewhere."""
  if executor not in EXECUTORS:
    raise ValueError(f'Unknown executor {executor!r}; expected one of '
                     f'{EXECUTORS}.')
  if executor != 'auto':
    return executor
  return HOST if platform == 'cpu' else LOOP


class Engine:
  """Runs plans and evaluations of populations of one model on one task.

  Holds the splits in device memory (once per mesh shape) and the compiled
  programs, so that every run of a benchmark table shares them.
  """

  def __init__(self, model: nn.Module, *, loss: str,
               splits: Mapping[str, Mapping[str, np.ndarray]],
               image_size: int | None = None, log_every_s: float = 30.0,
               memory_limit: int | None = None, devices=None,
               members_per_call: int | None = None, executor: str = 'auto'):
    if loss not in losses.LOSSES:
      raise ValueError(f'Unknown loss {loss!r}; expected one of '
                       f'{losses.LOSSES}.')
    self.loss, self.image_size = loss, image_size
    self.splits = splits
    # Every split in one pool, so that programs take the same data whatever
    # split a step reads: original and retrained models, and every split's
    # evaluation, share their compiled programs.
    names = list(splits)
    sizes = [len(splits[n]['label']) for n in names]
    self.offsets = dict(zip(names, np.cumsum([0] + sizes[:-1]).tolist()))
    self.pool = {key: np.concatenate([np.asarray(splits[n][key])
                                      for n in names])
                 for key in ('image', 'label')}
    self.compiler = Compiler(memory_limit, self.data_bytes())
    self.log_every_s = log_every_s
    self.devices = list(jax.devices() if devices is None else devices)
    self.platform = self.devices[0].platform
    # XLA's CPU backend runs convolutions inside a compiled loop several
    # times slower than outside one (BENCHMARKS.md §4), so there the host
    # dispatches a chunk step by step; each step still gathers its batch on
    # the device from the uploaded plan.
    self.executor = choose_executor(executor, self.platform)
    self.model = models.for_platform(model, self.platform)
    # XLA's CPU backend runs a convolution vmapped over members 2-3x slower
    # than the same members one after another (BENCHMARKS.md §2), so on one
    # CPU device a population is run member by member through the
    # one-member program. None: all at once.
    if (members_per_call is None and self.platform == 'cpu'
        and self.executor == HOST and len(self.devices) == 1):
      members_per_call = 1
    self.members_per_call = members_per_call
    self._resident: dict[tuple, dict] = {}
    self._programs: dict[tuple, Callable] = {}
    # Seconds per step of each program, to size chunks for progress lines.
    self._step_seconds: dict[tuple, float] = {}

  @property
  def stored_size(self) -> int:
    return int(self.pool['image'].shape[1])

  @property
  def input_size(self) -> int:
    return self.image_size or self.stored_size

  def mesh(self, population: int) -> Mesh:
    return make_mesh(population, self.devices)

  def resident(self, mesh: Mesh) -> dict[str, jax.Array]:
    """The pool of every split in device memory, replicated over `mesh`."""
    key = mesh.devices.shape
    if key not in self._resident:
      self._resident[key] = input_pipeline.device_put_split(self.pool, mesh)
    return self._resident[key]

  def data_bytes(self) -> int:
    return sum(v.nbytes for v in self.pool.values())

  # -------------------------------------------------------------- states

  def init(self, tx: optax.GradientTransformation,
           seeds: Sequence[int]) -> TrainState:
    """Fresh models, member k initialised from `jax.random.key(seeds[k])`."""
    fresh = jax.vmap(lambda seed: self._fresh(tx, seed))
    seeds = jnp.asarray(seeds, jnp.int32)
    self.check_state_memory(jax.eval_shape(fresh, seeds), len(seeds))
    # A program that runs once: XLA's CPU backend compiles its random draws
    # 3-4x faster at optimisation level 1, to the same bits.
    options = ({'xla_backend_optimization_level': 1}
               if self.platform == 'cpu' else None)
    return jax.jit(fresh, out_shardings=member_sharding(
        self.mesh(len(seeds)))).lower(seeds).compile(
            compiler_options=options)(seeds)

  def abstract_state(self, tx, population: int):
    """Shapes, dtypes and shardings of a population's state (for restores)."""
    shapes = jax.eval_shape(jax.vmap(lambda seed: self._fresh(tx, seed)),
                            jnp.zeros((population,), jnp.int32))
    sharding = member_sharding(self.mesh(population))
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        shapes)

  def _fresh(self, tx, seed) -> TrainState:
    init_rng, _ = jax.random.split(jax.random.key(seed))
    variables = models.init_variables(self.model, init_rng, self.input_size)
    return TrainState(step=jnp.zeros((), jnp.int32),
                      params=variables['params'],
                      batch_stats=variables['batch_stats'],
                      opt_state=tx.init(variables['params']))

  def state_from(self, variables, tx: optax.GradientTransformation, *,
                 trainable: frozenset[str] | None = None,
                 population: int | None = None) -> TrainState:
    """A state holding copies of a population's `variables`, so donating it
    never frees them; a population of 1 is repeated to `population`."""
    have = members(variables)
    population = population or have
    if have not in (1, population):
      raise ValueError(f'Cannot make {population} members from {have}.')
    mesh = self.mesh(population)

    def build(variables):
      variables = jax.tree.map(
          lambda x: jnp.broadcast_to(x, (population,) + x.shape[1:]),
          variables)
      params = jax.tree.map(jnp.copy, variables['params'])
      return TrainState(
          step=jnp.zeros((population,), jnp.int32), params=params,
          batch_stats=jax.tree.map(jnp.copy, variables['batch_stats']),
          opt_state=jax.vmap(tx.init)(split_params(params, trainable)[0]))

    return jax.jit(build, out_shardings=member_sharding(mesh))(variables)

  def put_members(self, tree, population: int):
    """`tree` (a population, or one model repeated) laid out for its mesh."""
    mesh = self.mesh(population)
    if members(tree) != population:
      tree = jax.tree.map(
          lambda x: np.broadcast_to(np.asarray(x),
                                    (population,) + np.shape(x)[1:]), tree)
    return jax.device_put(tree, member_sharding(mesh))

  def check_state_memory(self, abstract_state, population: int) -> None:
    """Refuses, before anything runs, a population whose state and data
    alone exceed the device (the step's temporaries are checked once its
    program is compiled)."""
    spread = self.mesh(population).shape[MODEL_AXIS]
    data = self.data_bytes()
    # Optimizer state, parameters being updated and the copy a step writes.
    needed = data + 2 * tree_bytes(abstract_state) // spread
    check_memory(needed, population, self.compiler.memory_limit, fixed=data)

  def memory_plan(self, population: int, abstract_state) -> str:
    """One line: what a population will hold per device."""
    spread = self.mesh(population).shape[MODEL_AXIS]
    limit = self.compiler.memory_limit or device_memory(self.devices[0])
    return (f'population {population} on a {spread}x'
            f'{len(self.devices) // spread} (model x data) mesh: state '
            f'{tree_bytes(abstract_state) / spread / 2**20:.1f} MiB and data '
            f'{self.data_bytes() / 2**20:.1f} MiB per device, of '
            f'{limit / 2**30:.1f} GiB')

  # --------------------------------------------------------------- steps

  def _member_batch(self, mesh: Mesh, augment: bool) -> Callable:
    """`(data, indices, step key, position) -> (images, labels, mask)`: one
    member's batch, gathered on the device and preprocessed, augmented with
    the draw at `position` of the step's key."""
    image_size = self.image_size

    def member_batch(data, indices, rng, position):
      # Index -1 pads a short batch (`Plan.groups`); augmentation draws are
      # made per row, so the real rows draw what they would unpadded.
      batch = input_pipeline.gather_batch(data, jnp.maximum(indices, 0))
      images = jax.lax.with_sharding_constraint(
          preprocess(batch['image'], image_size),
          NamedSharding(mesh, batch_spec(mesh, indices.shape[0])))
      if augment:
        images = input_pipeline.augment(
            images, jax.random.fold_in(rng, position),
            ops_in_loop=self.platform == 'cpu')
      return images, batch['label'], indices >= 0

    return member_batch

  def _batch_program(self, mesh: Mesh, augment: bool) -> Callable:
    """The jitted `(steps, data, indices, rngs, position) -> batch` of a
    population (`_member_batch`), which every update of the same batch size
    and augmentation shares on CPU."""
    key = ('batch', mesh.devices.shape, augment)
    if key not in self._programs:
      member_batch = self._member_batch(mesh, augment)
      self._programs[key] = jax.jit(jax.vmap(
          lambda step, data, indices, rng, position: member_batch(
              data, indices, jax.random.fold_in(rng, step), position),
          in_axes=(0, None, 0, 0, None), spmd_axis_name=MODEL_AXIS))
    return self._programs[key]

  def _member_update(self, update: Update) -> Callable:
    """`(state, batches, step key, teachers) -> (state, measurements)`: one
    member's update on {name: (images, labels, mask)}."""
    model, loss = self.model, self.loss

    def member_update(state, batches, rng, teachers):
      inputs = Inputs({name: b[:2] for name, b in batches.items()},
                      jax.random.fold_in(rng, len(batches)), loss,
                      {name: Forward(model, v['params'], v['batch_stats'],
                                     train=False)
                       for name, v in (teachers or {}).items()},
                      step=state.step,
                      masks={name: b[2] for name, b in batches.items()})
      forward = Forward(model, state.params, state.batch_stats,
                        train=update.bn_train)
      objective = update.objective
      prepared = (objective.prepare(forward, inputs)
                  if objective.prepare is not None else None)
      trained, frozen = split_params(state.params, update.trainable)

      # Frozen parameters stay outside the differentiated function: they are
      # bit-identical afterwards and cost no gradient.
      def objective_fn(trained):
        f = Forward(model, {**frozen, **trained}, forward.batch_stats,
                    train=update.bn_train)
        value, measured = objective.loss(f, inputs, prepared)
        return value, (f.batch_stats, measured)

      (value, (batch_stats, measured)), grads = jax.value_and_grad(
          objective_fn, has_aux=True)(trained)
      updates, opt_state = update.tx.update(grads, state.opt_state, trained)
      trained = optax.apply_updates(trained, updates)
      return state.replace(step=state.step + 1, params={**frozen, **trained},
                           batch_stats=batch_stats, opt_state=opt_state), {
                               'loss': value, **measured}

    return member_update

  def _population_step(self, update: Update, mesh: Mesh) -> Callable:
    """The jitted step of a population, batches gathered inside: `(state,
    data, indices, rngs, teachers) -> (state, measurements)`. Jitted so that
    its trace is cached: `_run` traces it for the shapes of the
    measurements, and the compiled loop then reuses that trace."""
    key = ('population step', update, mesh.devices.shape)
    if key not in self._programs:
      member_batch = self._member_batch(mesh, update.augment)
      member_update = self._member_update(update)

      def member_step(state, data, indices, rng, teachers):
        rng = jax.random.fold_in(rng, state.step)
        batches = {name: member_batch(data, indices[name], rng, i)
                   for i, name in enumerate(sorted(indices))}
        return member_update(state, batches, rng, teachers)

      self._programs[key] = jax.jit(jax.vmap(
          member_step, in_axes=(0, None, 0, 0, 0), spmd_axis_name=MODEL_AXIS))
    return self._programs[key]

  def _update_program(self, update: Update, mesh: Mesh) -> Callable:
    """The program that runs steps of `update`.

    On an accelerator, the jitted loop `(state, measured, data, group
    arrays, rngs, teachers, start, stop) -> (state, measured)` over steps
    start..stop of a group. On CPU, the update alone, `(state, batches,
    rngs, teachers) -> (state, measurements)` with the state donated, on
    batches that `_batch_program` made: XLA's CPU backend takes about a
    second to compile the augmentation into each program. Updates that
    differ only in augmentation then share it.
    """
    if self.executor == HOST:
      key = ('update', dataclasses.replace(update, augment=False),
             mesh.devices.shape)
      if key not in self._programs:
        member_update = self._member_update(update)
        self._programs[key] = jax.jit(
            jax.vmap(lambda state, batches, rng, teachers: member_update(
                state, batches, jax.random.fold_in(rng, state.step),
                teachers), spmd_axis_name=MODEL_AXIS),
            donate_argnums=(0,),
            out_shardings=(member_sharding(mesh),
                           NamedSharding(mesh, P(MODEL_AXIS))))
      return self._programs[key]
    key = ('loop', update, mesh.devices.shape)
    if key not in self._programs:
      population_step = self._population_step(update, mesh)

      def body(i, carry, data, arrays, rngs, teachers):
        state, measured = carry
        indices = {name: a[i] for name, a in arrays.items()}
        state, values = population_step(state, data, indices, rngs, teachers)
        return state, jax.tree.map(lambda buf, v: buf.at[i].set(v),
                                   measured, values)

      def run(state, measured, data, arrays, rngs, teachers, start, stop):
        return jax.lax.fori_loop(
            start, stop,
            lambda i, carry: body(i, carry, data, arrays, rngs, teachers),
            (state, measured))

      self._programs[key] = jax.jit(
          run, donate_argnums=(0, 1),
          out_shardings=(member_sharding(mesh),
                         NamedSharding(mesh, P(None, MODEL_AXIS))))
    return self._programs[key]

  def chunks(self, population: int) -> list[tuple[int, int]]:
    """(first, stop) of the groups of members that one program call
    updates: the whole population, or `members_per_call` at a time."""
    size = min(self.members_per_call or population, population)
    if population % size:
      size = math.gcd(population, size)
    return [(k, k + size) for k in range(0, population, size)]

  def run(self, plan: Plan, updates: Mapping[str, Update], state: TrainState,
          rngs: jax.Array, *, sources: Mapping[str, str] | None = None,
          teachers=None, label: str = '') -> tuple[TrainState, RunResult]:
    """Runs every step of `plan` on the population `state`.

    The plan's batches name splits, or roles that `sources` maps to splits
    (e.g. {'train': 'retain'} to train from scratch on retain). `rngs` holds
    one key per member; step s of member m draws from
    `fold_in(rngs[m], state.step[m])`, so a resumed run draws as an
    uninterrupted one. `teachers` ({name: a population's variables}, or None)
    are passed to objectives, in eval mode.

    Members are independent: a population run in groups (`chunks`) gives
    what it gives run at once, within float32 rounding.
    """
    population = members(state)
    chunks = self.chunks(population)
    if len(chunks) == 1:
      return self._run(plan, updates, state, rngs, sources=sources,
                       teachers=teachers, label=label)
    states, results = [], []
    for first, stop in chunks:
      # A one-member tree (a shared original) serves every group whole.
      part = lambda tree: tree if members(tree) == 1 else jax.tree.map(
          lambda x: x[first:stop], tree)
      name = label and (f'{label} members {first + 1}-{stop}/{population}'
                        if stop - first > 1 else
                        f'{label} member {stop}/{population}')
      # The other members' state (and teachers) stay in memory meanwhile.
      others = (tree_bytes(state) + tree_bytes(teachers or {})) * (
          population - stop + first) // population
      state_part, result = self._run(
          plan.members(first, stop), updates, part(state), part(rngs),
          sources=sources,
          teachers=teachers and {n: part(t) for n, t in teachers.items()},
          label=name, members_in_all=population, resident_bytes=others)
      states.append(state_part)
      results.append(result)
    mesh = self.mesh(population)
    state = jax.device_put(
        jax.tree.map(lambda *xs: jnp.concatenate(xs), *states),
        member_sharding(mesh))
    return state, RunResult(
        measured={k: np.concatenate([r.measured[k] for r in results], axis=1)
                  for k in results[0].measured},
        seconds=sum(r.seconds for r in results),
        compile_seconds=sum(r.compile_seconds for r in results),
        flops=sum(r.flops for r in results))

  def _run(self, plan: Plan, updates: Mapping[str, Update], state: TrainState,
           rngs: jax.Array, *, sources: Mapping[str, str] | None = None,
           teachers=None, label: str = '', members_in_all: int | None = None,
           resident_bytes: int = 0) -> tuple[TrainState, RunResult]:
    population = members(state)
    mesh = self.mesh(population)
    data = self.resident(mesh)
    arrays, segments = plan.groups(padded=frozenset(
        key for key, update in updates.items() if update.objective.pads))
    offset = lambda role: self.offsets[(sources or {}).get(role, role)]
    # On CPU each step's indices are uploaded as arrays of their own, so
    # that a program's shapes do not depend on the length of the plan and
    # methods of the same objective share it; a compiled loop takes the
    # group's steps, padded to a power of two for the same reason.
    for group, group_arrays in arrays.items():
      for role, a in group_arrays.items():
        a = np.where(a < 0, a, a + offset(role)).astype(np.int32)
        spec = (MODEL_AXIS, *batch_spec(mesh, a.shape[2]))
        group_arrays[role] = (
            jax.device_put(list(a), NamedSharding(mesh, P(*spec)))
            if self.executor == HOST else
            jax.device_put(_pad_steps(a), NamedSharding(mesh,
                                                        P(None, *spec))))
    rngs = put(rngs, member_sharding(mesh))
    if teachers is not None:
      teachers = {name: self.put_members(t, population)
                  for name, t in teachers.items()}
    # Per group: the measurement buffers of a compiled loop, or each step's
    # measurements.
    outputs: dict[tuple, Any] = {}
    compile_before = self.compiler.seconds
    flops = 0.0
    start = last_log = time.perf_counter()
    done = 0
    # Images one member has seen after each step, real ones only.
    seen = np.cumsum([0] + [plan.images(i) for i in range(len(plan))])
    running = 0.0  # seconds spent executing, not compiling
    total = len(plan)
    for group, first, stop in segments:
      program = self._update_program(updates[group[0]], mesh)
      if group not in outputs and self.executor == HOST:
        outputs[group] = []
      elif group not in outputs:
        shapes = jax.eval_shape(
            self._population_step(updates[group[0]], mesh), state, data,
            {n: a[0] for n, a in arrays[group].items()}, rngs, teachers)[1]
        length = next(iter(arrays[group].values())).shape[0]
        outputs[group] = jax.device_put(
            jax.tree.map(lambda s: np.zeros((length,) + s.shape, s.dtype),
                         shapes),
            NamedSharding(mesh, P(None, MODEL_AXIS)))
      i = first
      while i < stop:
        count = self._chunk(group, stop - i)
        if jax.process_count() > 1:
          # Every process must run the same programs; the chunks follow
          # process 0's timing.
          count = int(multihost_utils.broadcast_one_to_all(np.int32(count)))
        if self.executor == HOST:
          state, began, step_flops = self._dispatch_steps(
              mesh, program, updates[group[0]].augment, range(i, i + count),
              state, data, arrays[group], rngs, teachers, outputs[group],
              members=members_in_all or population,
              resident_bytes=resident_bytes)
          last_loss = outputs[group][-1]['loss']
          flops += step_flops * count
        else:
          bounds = (np.int32(i), np.int32(i + count))
          compiled = self.compiler(program, state, outputs[group], data,
                                   arrays[group], rngs, teachers, *bounds,
                                   members=members_in_all or population,
                                   resident_bytes=resident_bytes)
          flops += compiled.flops * count
          began = time.perf_counter()
          state, outputs[group] = compiled.call(
              state, outputs[group], data, arrays[group], rngs, teachers,
              *bounds)
          last_loss = outputs[group]['loss']
        jax.block_until_ready(state.step)
        running += time.perf_counter() - began
        self._step_seconds[group] = (time.perf_counter() - began) / count
        done += count
        i += count
        now = time.perf_counter()
        if (label and now - last_log >= self.log_every_s and done < total
            and jax.process_index() == 0):
          last_log = now
          # This process's members only: a progress line must not start a
          # computation the other processes do not run.
          if not last_loss.is_fully_addressable:
            last_loss = last_loss.addressable_shards[0].data
          loss = np.asarray(last_loss if self.executor == HOST
                            else last_loss[i - 1]).mean()
          log(f'  {label} step {done}/{total}: '
              f'{seen[done] * population / running:.1f} img/s, '
              f'loss {loss:.4f}')
    host = to_host(outputs)
    measured: dict[str, list] = {}
    for group, first, stop in segments:
      values = host[group]
      if self.executor == HOST:
        values = {name: np.stack([v[name] for v in values[first:stop]])
                  for name in values[0]}
      else:
        values = {name: v[first:stop] for name, v in values.items()}
      for name, v in values.items():
        measured.setdefault(name, []).append(v)
    # Measurements every kind of step makes (the loss, at least).
    measured = {k: np.concatenate(v) for k, v in measured.items()
                if sum(len(x) for x in v) == total}
    compile_seconds = self.compiler.seconds - compile_before
    return state, RunResult(
        measured=measured,
        seconds=time.perf_counter() - start - compile_seconds,
        compile_seconds=compile_seconds, flops=flops)

  def _dispatch_steps(self, mesh, program, augment, steps, state, data,
                      arrays, rngs, teachers, outputs, **memory):
    """Queues `steps` of a group on CPU: per step, a batch program for each
    batch and the update program, whose measurements go to `outputs`.
    Dispatches are asynchronous: the host only queues them. Returns (state,
    when the first step's programs were compiled, flops of one step)."""
    named = sorted(arrays.items())
    batch_program = self._batch_program(mesh, augment)
    positions = [jax.device_put(np.int32(k), replicated(mesh))
                 for k in range(len(named))]
    make_batch = update = None
    for j in steps:
      batch_args = [(state.step, data, a[j], rngs, positions[k])
                    for k, (_, a) in enumerate(named)]
      if make_batch is None:
        make_batch = [self.compiler(batch_program, *args, **memory)
                      for args in batch_args]
      batches = {name: compiled.call(*args) for (name, _), compiled, args
                 in zip(named, make_batch, batch_args)}
      if update is None:
        update = self.compiler(program, state, batches, rngs, teachers,
                               **memory)
        began = time.perf_counter()
      state, values = update.call(state, batches, rngs, teachers)
      outputs.append(values)
    return state, began, update.flops + sum(c.flops for c in make_batch)

  def _chunk(self, group, remaining: int) -> int:
    """Steps to run before the host looks again: about `log_every_s` worth,
    one step while the step time is still unknown."""
    seconds = self._step_seconds.get(group)
    if seconds is None:
      return 1
    return max(1, min(remaining, int(self.log_every_s / max(seconds, 1e-6))))

  # ---------------------------------------------------------- evaluation

  def _eval_program(self, mesh: Mesh, batch: int) -> Callable:
    key = ('eval', mesh.devices.shape, batch)
    if key in self._programs:
      return self._programs[key]
    model, loss, image_size = self.model, self.loss, self.image_size
    spec = NamedSharding(mesh, batch_spec(mesh, batch))

    def run(variables, pool, indices):
      b = input_pipeline.gather_batch(pool, indices)
      images = jax.lax.with_sharding_constraint(
          preprocess(b['image'], image_size), spec)
      logits = jax.vmap(
          lambda v: model.apply(v, images, train=False),
          spmd_axis_name=MODEL_AXIS)(variables).astype(jnp.float32)
      per_sample = jax.vmap(
          lambda z: losses.per_sample_loss(z, b['label'], loss))(logits)
      return logits, per_sample

    self._programs[key] = jax.jit(run)
    return self._programs[key]

  def evaluate(self, variables, split: str) -> dict[str, np.ndarray]:
    """Eval-mode logits [members, n, outputs] and per-sample losses
    [members, n] of a population on a whole split, without augmentation.

    Eval mode has no batch dependence, so batches are padded to a size that
    shards evenly, and the padding is dropped afterwards.
    """
    population = members(variables)
    chunks = self.chunks(population)
    if len(chunks) > 1:
      parts = [self.evaluate(jax.tree.map(lambda x: x[a:b], variables), split)
               for a, b in chunks]
      return {key: np.concatenate([p[key] for p in parts])
              for key in parts[0]}
    mesh = self.mesh(population)
    data = self.resident(mesh)
    n = len(self.splits[split]['label'])
    ways = mesh.shape[DATA_AXIS]
    batch = max(ways, EVAL_IMAGES // population // ways * ways)
    # One batch per call: one compiled program for every split size, and at
    # most one batch of padding.
    padded = -(-n // batch) * batch
    order = (np.minimum(np.arange(padded), max(n - 1, 0))
             + self.offsets[split]).astype(np.int32)
    order = order.reshape(-1, batch)
    program = self._eval_program(mesh, batch)
    variables = self.put_members(variables, population)
    logits, per_sample = [], []
    for indices in order:
      indices = jax.device_put(indices, replicated(mesh))
      compiled = self.compiler(program, variables, data, indices,
                               members=population)
      z, l = compiled.call(variables, data, indices)
      logits.append(z)
      per_sample.append(l)
    # [calls][members, batch, ...] -> [members, n, ...]
    logits = np.concatenate(to_host(logits), axis=1)[:, :n]
    per_sample = np.concatenate(to_host(per_sample), axis=1)[:, :n]
    return {'logits': logits, 'loss': per_sample}
