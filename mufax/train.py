"""Training and evaluation: train state, jitted data-parallel steps, recipes.

Steps are `jax.jit` over a 1-D device mesh (axis `data`): the batch is
sharded over it, the state replicated and donated, so BatchNorm statistics
are global-batch statistics and N devices compute what one device computes.
A batch whose size does not divide by the device count (the partial last
batch of an epoch) is replicated instead of sharded: every device computes
it whole, which keeps the result equal without padding the batch, which would
change the BatchNorm statistics.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mufax import input_pipeline
from mufax import metrics

DATA_AXIS = 'data'
Batch = Mapping[str, Any]
# How a head's logits turn into a loss: 'softmax' (integer labels,
# cross-entropy) or 'sigmoid' (0/1 label vectors, BCE with logits).
LOSSES = ('softmax', 'sigmoid')


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  @property
  def variables(self):
    return {'params': self.params, 'batch_stats': self.batch_stats}


# ------------------------------------------------------------------ devices


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: all), axis `data`."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_size: int) -> NamedSharding:
  """Sharded over `data` when the batch divides evenly, else replicated."""
  if batch_size % mesh.devices.size:
    return replicated(mesh)
  return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(batch: Batch, mesh: Mesh) -> dict[str, jax.Array]:
  """Global numpy batch -> jax arrays laid out by `batch_sharding`.

  Each process holds the whole global batch and places only the slices its
  own devices need, so the same code runs on one host or many.
  """
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.dtype.kind not in 'biuf':
      continue
    sharding = batch_sharding(mesh, value.shape[0])
    out[key] = jax.make_array_from_callback(
        value.shape, sharding, lambda index, v=value: v[index])
  return out


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))


# ------------------------------------------------------------------- losses


def loss_kind(label_feature) -> tuple[str, int]:
  """(loss, num_outputs) for a dataset's `label` feature."""
  names = getattr(label_feature, 'names', None)
  if names is not None:
    return 'softmax', len(names)
  return 'sigmoid', int(label_feature.shape[-1])


def per_sample_loss(logits: jax.Array, labels: jax.Array,
                    loss: str) -> jax.Array:
  """Cross-entropy, or BCE-with-logits averaged over the labels (SPEC §6)."""
  logits = logits.astype(jnp.float32)
  if loss == 'softmax':
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if loss == 'sigmoid':
    return optax.sigmoid_binary_cross_entropy(
        logits, labels.astype(jnp.float32)).mean(axis=-1)
  raise ValueError(f'Unknown loss {loss!r}; expected one of {LOSSES}.')


def correct(logits: jax.Array, labels: jax.Array, loss: str) -> jax.Array:
  """Per-sample top-1 hit (softmax) or fraction of attributes right."""
  if loss == 'softmax':
    return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return ((logits > 0) == (labels > 0)).astype(jnp.float32).mean(axis=-1)


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


# -------------------------------------------------------------- train state


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       rng: jax.Array, *, image_size: int,
                       mesh: Mesh | None = None) -> TrainState:
  """A fresh state, replicated over `mesh` if one is given."""

  def init(rng):
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    variables = model.init(rng, x, train=False)
    return TrainState(step=jnp.zeros((), jnp.int32),
                      params=variables['params'],
                      batch_stats=variables['batch_stats'],
                      opt_state=tx.init(variables['params']))

  if mesh is None:
    return jax.jit(init)(rng)
  return jax.jit(init, out_shardings=replicated(mesh))(rng)


def abstract_train_state(model, tx, *, image_size: int, mesh: Mesh):
  """Shapes, dtypes and shardings of a state, for restoring checkpoints."""
  shapes = jax.eval_shape(
      lambda: create_train_state(model, tx, jax.random.key(0),
                                 image_size=image_size))
  sharding = replicated(mesh)
  return jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
      shapes)


def apply_model(model: nn.Module, params, batch_stats, images: jax.Array, *,
                train: bool):
  """Logits, and the updated batch statistics when `train`."""
  variables = {'params': params, 'batch_stats': batch_stats}
  if not train:
    return model.apply(variables, images, train=False), batch_stats
  logits, updates = model.apply(variables, images, train=True,
                                mutable=['batch_stats'])
  return logits, updates['batch_stats']


# -------------------------------------------------------------------- steps


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *,
                    mesh: Mesh, loss: str, augment: bool = True,
                    image_size: int | None = None) -> Callable:
  """Jitted `(state, batch, rng) -> (state, measurements)`; state donated.

  `batch` is {'image': uint8 or float [B, H, W, 3], 'label'} laid out by
  `shard_batch`. The augmentation draws from `rng` folded with the step, so
  an interrupted run resumes with the same draws.
  """
  if loss not in LOSSES:
    raise ValueError(f'Unknown loss {loss!r}; expected one of {LOSSES}.')

  def step(state: TrainState, batch: Batch, rng: jax.Array):
    images = preprocess(batch['image'], image_size)
    if augment:
      images = input_pipeline.augment(images,
                                      jax.random.fold_in(rng, state.step))

    def loss_fn(params):
      logits, batch_stats = apply_model(model, params, state.batch_stats,
                                        images, train=True)
      losses = per_sample_loss(logits, batch['label'], loss)
      return losses.mean(), (logits, batch_stats)

    (mean_loss, (logits, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
    return new_state, {
        'loss': mean_loss,
        'accuracy': correct(logits, batch['label'], loss).mean(),
    }

  return jax.jit(step, donate_argnums=0,
                 out_shardings=(replicated(mesh), replicated(mesh)))


def make_eval_step(model: nn.Module, *, mesh: Mesh, loss: str,
                   image_size: int | None = None) -> Callable:
  """Jitted `(variables, batch) -> {'logits', 'loss'}`, eval mode.

  Per-sample losses are taken without augmentation (SPEC §6).
  """
  if loss not in LOSSES:
    raise ValueError(f'Unknown loss {loss!r}; expected one of {LOSSES}.')

  def step(variables, batch):
    logits = model.apply(variables, preprocess(batch['image'], image_size),
                         train=False).astype(jnp.float32)
    return {'logits': logits,
            'loss': per_sample_loss(logits, batch['label'], loss)}

  return jax.jit(step)


def evaluate(eval_step: Callable, variables, data: Batch, *, mesh: Mesh,
             loss: str, batch_size: int = 256) -> dict[str, Any]:
  """Logits, per-sample losses and accuracies of a whole split.

  Eval mode has no batch dependence, so batches are padded to a size that
  shards evenly and the padding is dropped afterwards.
  """
  n = len(data['label'])
  devices = mesh.devices.size
  batch_size = -(-min(batch_size, max(n, 1)) // devices) * devices
  logits, losses = [], []
  for start in range(0, n, batch_size):
    batch = {k: data[k][start:start + batch_size] for k in ('image', 'label')}
    real = len(batch['label'])
    if real < batch_size:
      batch = {k: np.concatenate([v, np.zeros((batch_size - real,) + v.shape[1:],
                                              v.dtype)])
               for k, v in batch.items()}
    out = eval_step(variables, shard_batch(batch, mesh))
    logits.append(np.asarray(out['logits'])[:real])
    losses.append(np.asarray(out['loss'])[:real])
  logits = np.concatenate(logits) if logits else np.zeros((0, 0), np.float32)
  losses = np.concatenate(losses) if losses else np.zeros((0,), np.float32)
  return {'logits': logits, 'loss': losses,
          **accuracies(logits, np.asarray(data['label']), loss)}


def accuracies(logits: np.ndarray, labels: np.ndarray,
               loss: str) -> dict[str, Any]:
  """SPEC §6 utility: top-1 (and top-2 with > 2 classes), or multi-label."""
  if loss == 'sigmoid':
    per_attribute = metrics.multilabel_accuracies(logits, labels)
    return {'accuracy': float(per_attribute.mean()),
            'attribute_accuracies': [float(a) for a in per_attribute]}
  out = {'accuracy': metrics.top_k_accuracy(logits, labels, k=1)}
  if logits.shape[-1] > 2:
    out['top2_accuracy'] = metrics.top_k_accuracy(logits, labels, k=2)
  return out


# ------------------------------------------------------------------ recipes


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How a model is trained from scratch (SPEC §4)."""
  learning_rate: float
  momentum: float
  epochs: int
  # The learning rate is divided by 10 at the start of each of these epochs.
  decay_epochs: tuple[int, ...] = ()
  batch_size: int = 64

  @classmethod
  def from_config(cls, config) -> Recipe:
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in dict(config).items() if k in fields}
    values['decay_epochs'] = tuple(values.get('decay_epochs', ()))
    return cls(**values)


def make_optimizer(recipe: Recipe,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """torch.optim.SGD (no weight decay) with the recipe's step schedule."""
  schedule = optax.piecewise_constant_schedule(
      recipe.learning_rate,
      {e * steps_per_epoch: 0.1 for e in recipe.decay_epochs})
  # torch's momentum buffer is optax's trace: buf = m * buf + g, p -= lr * buf.
  return optax.sgd(schedule, momentum=recipe.momentum or None)


# ---------------------------------------------------------------- the loop


def log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def _checkpoint_manager(directory: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def fit(recipe: Recipe, *, model: nn.Module, loss: str, train_data: Batch,
        mesh: Mesh, checkpoint_dir: str, seed: int,
        eval_data: Mapping[str, Batch] | None = None,
        image_size: int | None = None, log_every_s: float = 30.0,
        on_epoch_end: Callable[[int, dict], None] | None = None
        ) -> tuple[TrainState, list[dict]]:
  """Trains `model` from scratch on `train_data` ({'image', 'label'} numpy).

  Saves the state in `checkpoint_dir` after every epoch, and resumes from the
  last saved epoch when started again with the same recipe, so that a killed
  run ends with the same parameters as an uninterrupted one. Returns the final
  state and one log record per epoch (train and eval accuracies).
  """
  n = len(train_data['label'])
  if n == 0:
    raise ValueError('The training split is empty.')
  size = image_size or train_data['image'].shape[1]
  steps_per_epoch = input_pipeline.num_batches(n, recipe.batch_size)
  tx = make_optimizer(recipe, steps_per_epoch)
  fingerprint = {'recipe': dataclasses.asdict(recipe), 'loss': loss,
                 'seed': seed, 'examples': n, 'image_size': size,
                 'model': repr(model)}
  init_rng, aug_rng = jax.random.split(jax.random.key(seed))

  manager = _checkpoint_manager(checkpoint_dir)
  history: list[dict] = []
  latest = manager.latest_step()
  if latest is None:
    state = create_train_state(model, tx, init_rng, image_size=size,
                               mesh=mesh)
  else:
    restored = manager.restore(latest, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(
            abstract_train_state(model, tx, image_size=size, mesh=mesh)),
        meta=ocp.args.JsonRestore()))
    if restored['meta']['fingerprint'] != json.loads(json.dumps(fingerprint)):
      raise ValueError(
          f'{checkpoint_dir} holds a checkpoint of a different run '
          f'({restored["meta"]["fingerprint"]}); use another directory or '
          'delete it to start over.')
    state, history = restored['state'], restored['meta']['history']
    log(f'resuming from the checkpoint of epoch {latest} in {checkpoint_dir}')

  train_step = make_train_step(model, tx, mesh=mesh, loss=loss,
                               image_size=image_size)
  eval_step = make_eval_step(model, mesh=mesh, loss=loss,
                             image_size=image_size)
  aug_rng = replicate(aug_rng, mesh)
  try:
    for epoch in range(len(history), recipe.epochs):
      state, record = _train_epoch(
          train_step, state, train_data, epoch=epoch, epochs=recipe.epochs,
          seed=seed, rng=aug_rng, mesh=mesh, batch_size=recipe.batch_size,
          log_every_s=log_every_s)
      for name, data in (eval_data or {}).items():
        record[f'{name}_accuracy'] = evaluate(
            eval_step, state.variables, data, mesh=mesh, loss=loss)['accuracy']
      history.append(record)
      log(f'epoch {epoch + 1}/{recipe.epochs}: ' + ', '.join(
          f'{k.replace("_", " ")} {record[k]:.4f}' for k in record
          if k.endswith(('loss', 'accuracy')))
          + f', {record["img_per_s"]:.1f} img/s, {record["seconds"]:.1f} s')
      manager.save(epoch + 1, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          meta=ocp.args.JsonSave({'fingerprint': fingerprint,
                                  'history': history})))
      if on_epoch_end is not None:
        manager.wait_until_finished()
        on_epoch_end(epoch, record)
  finally:
    manager.wait_until_finished()
    manager.close()
  return state, history


def _train_epoch(train_step, state, data, *, epoch, epochs, seed, rng,
                 mesh, batch_size, log_every_s) -> tuple[TrainState, dict]:
  """One epoch over `data`, reshuffled by (seed, epoch)."""
  n = len(data['label'])
  steps = input_pipeline.num_batches(n, batch_size)
  start = last_log = time.perf_counter()
  sums = {'loss': 0.0, 'accuracy': 0.0}
  pending = []  # measurements not yet fetched, so the host does not block
  seen = 0
  for i, idx in enumerate(input_pipeline.batch_indices(
      n, batch_size, shuffle=True, seed=seed, epoch=epoch, process_count=1,
      process_index=0)):
    batch = shard_batch({'image': data['image'][idx],
                         'label': data['label'][idx]}, mesh)
    state, measured = train_step(state, batch, rng)
    pending.append((len(idx), measured))
    now = time.perf_counter()
    if now - last_log >= log_every_s or i + 1 == steps:
      for count, m in jax.device_get(pending):
        sums['loss'] += float(m['loss']) * count
        sums['accuracy'] += float(m['accuracy']) * count
        seen += count
      pending = []
      now = last_log = time.perf_counter()
      if i + 1 < steps:
        log(f'  epoch {epoch + 1}/{epochs} step {i + 1}/{steps}: '
            f'{seen / (now - start):.1f} img/s, loss {sums["loss"] / seen:.4f}, '
            f'accuracy {sums["accuracy"] / seen:.4f}')
  seconds = time.perf_counter() - start
  return state, {'epoch': epoch + 1, 'train_loss': sums['loss'] / n,
                 'train_accuracy': sums['accuracy'] / n,
                 'img_per_s': n / seconds, 'seconds': seconds}
