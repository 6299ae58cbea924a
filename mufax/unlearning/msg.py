"""Masked Small Gradients (MSG): re-initialise the convolution weights whose
retain-minus-forget gradient is smallest, then fine-tune with the others
damped.

The NeurIPS 2023 Machine Unlearning challenge's 2nd-placed Kaggle entry, as
DeepUnlearn re-implemented it (Cadet, Gayet et al., "Deep Unlearn:
Benchmarking Machine Unlearning for Image Classification", arXiv 2410.01276,
2024; github.com/xcadet/deepunlearn, munl/unlearning/kgltop2.py, `KGLTop2`,
'MSG' in munl/settings.py). As the reference:

1. One gradient, summed over batches of mean losses: the task loss on a
   random subset of retain as large as forget, minus the task loss on forget
   (`get_grads_for_snip`: `loss.backward()` on retain, then on `-loss` on
   forget, into the same `.grad`). mufax sums the two in passes of their own
   ('retain_gradients', 'forget_gradients'; `gradient_sum`) and subtracts.
   The model is in train mode there, as the reference left it, so BatchNorm
   normalises by each batch.
2. In every convolution (the stem's, the blocks' and the shortcuts'), the
   `init_rate` fraction of the kernel's elements with the smallest |gradient|
   (per layer: `round(init_rate * size)` of them) are drawn afresh from the
   layer's initialisation, kaiming_normal_(mode='fan_out') (the N(0, 2 /
   fan_out) of `models.conv_init`, from the member's key); the rest keep
   their values (`re_init_model_snip_ver2_little_grad`).
3. SGD with momentum on retain, the convolutions' gradients multiplied by 1
   on the re-initialised elements and by 0.1 on the others (the reference's
   `Masker` autograd function); BatchNorm and the head train at full rate.
   The learning rate follows the reference's `LinearAnnealingLR`, stepped per
   epoch: up linearly over (epochs + 1) // 2 epochs, then down
   (lr x [1/3, 2/3, 1, 2/3, 1/3] for 5 epochs).

Every stage, the gradient passes included, sees the images as stored,
without the training transforms (`Stage.augment`), as the reference's
`KGLTop2` reads DeepUnlearn's un-augmented `default_loaders` (test-time
transforms; munl/settings.py), whose datasets `get_grads_for_snip` also
samples its retain subset from.

Where mufax departs from the reference: no weight decay (it used 5e-4); each
epoch is a stage of its own, at its learning rate, so the momentum buffer
restarts at each epoch; the gradient passes' BatchNorm running statistics are
not kept (the reference's train-mode passes moved them; the fine-tuning in
train mode that follows renews them); the task loss is the task's (sigmoid
cross-entropy on multi-label MUCAC; the reference knew only softmax); the
retain gradient pass batches by `batch_size` (the reference fixed 64, also
the default).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mufax import plans
from mufax import search_spaces
from mufax.unlearning import core
from mufax.unlearning import hparams
from mufax.unlearning import finetune

_SOURCE = ('Cadet, Gayet et al. 2024 (DeepUnlearn), github.com/xcadet/'
           'deepunlearn, munl/unlearning/kgltop2.py')
# The stream that draws the retain subset of the gradient pass.
_SUBSET_STREAM = 3


def is_conv_kernel(path, leaf) -> bool:
  """Whether one model's params leaf is a convolution kernel ([H, W, in,
  out]; the head's kernel is 2-D)."""
  return getattr(path[-1], 'key', None) == 'kernel' and np.ndim(leaf) == 4


def small_gradient_mask(gradient: jax.Array, count) -> jax.Array:
  """True on the `count` (it may be traced) elements of smallest |gradient|
  (one model's kernel; ties go to the lower flat index)."""
  flat = jnp.abs(gradient).reshape(-1)
  order = jnp.argsort(flat, stable=True)
  return jnp.zeros(flat.size, bool).at[order].set(
      jnp.arange(flat.size) < count).reshape(gradient.shape)


def reinitialised_counts(gradients, fractions):
  """Each member's {conv kernel: how many of its elements are re-drawn,
  round(fraction * size) in float64 as the reference} (0 on every other
  leaf), int32 [members], from a population's `gradients` and each
  member's fraction."""

  def counts(path, g):
    one = jax.ShapeDtypeStruct(g.shape[1:], g.dtype)
    size = int(np.prod(one.shape)) if is_conv_kernel(path, one) else 0
    return np.asarray([round(float(f) * size) for f in fractions], np.int32)

  return jax.tree_util.tree_map_with_path(counts, gradients)


def conv_init_std(shape) -> float:
  """The standard deviation of `models.conv_init` for a kernel [H, W, in,
  out]: torch's kaiming_normal_(mode='fan_out', nonlinearity='relu'),
  sqrt(2 / (H * W * out))."""
  return float(np.sqrt(2.0 / (np.prod(shape[:-2]) * shape[-1])))


def _masks(measurements, counts):
  """One model's {conv kernel: elements to re-initialise} (a False scalar
  on every other leaf), by the gradient Σ ∇(retain loss) − Σ ∇(forget
  loss) of its `measurements`, `counts` of each (`reinitialised_counts`)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, r, f, c: (small_gradient_mask(r - f, c)
                             if is_conv_kernel(path, r)
                             else jnp.zeros((), bool)),
      measurements['retain_gradients'], measurements['forget_gradients'],
      counts)


@jax.jit
@jax.vmap
def _reinitialise(params, measurements, rng, counts):
  """One model's params with its masked conv elements drawn afresh from the
  layer's initialisation; one normal draw from `rng` serves every layer (a
  single random program, where a draw per layer shape would compile one
  each)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  masks = treedef.flatten_up_to(_masks(measurements, counts))
  convs = [i for i, (path, p) in enumerate(leaves) if is_conv_kernel(path, p)]
  normal = jax.random.normal(
      rng, (sum(leaves[i][1].size for i in convs),), jnp.float32)
  out, start = [p for _, p in leaves], 0
  for i in convs:
    p = out[i]
    fresh = normal[start:start + p.size].reshape(p.shape) * conv_init_std(
        p.shape)
    start += p.size
    out[i] = jnp.where(masks[i], fresh.astype(p.dtype), p)
  return jax.tree_util.tree_unflatten(treedef, out)


@jax.jit
@jax.vmap
def _scales(measurements, counts, damping):
  return jax.tree_util.tree_map_with_path(
      lambda path, r, m: (jnp.where(m, 1.0, damping).astype(r.dtype)
                          if is_conv_kernel(path, r) else jnp.ones_like(r)),
      measurements['retain_gradients'], _masks(measurements, counts))


def _gradient_sums(measurements):
  return {name: measurements[name]
          for name in ('retain_gradients', 'forget_gradients')}


def reinitialise(variables, measurements, rngs, values):
  """`edit`: a population's variables with each member's small-gradient
  convolution elements (its fraction `values['init_rate']`) re-drawn from
  the convolutions' initialisation."""
  sums = _gradient_sums(measurements)
  return {**variables, 'params': _reinitialise(
      variables['params'], sums, rngs, reinitialised_counts(
          sums['retain_gradients'], values['init_rate']))}


def gradient_scales(variables, measurements, rngs, values):
  """`gradient_scale`: 1 on the re-initialised elements and on every
  parameter but the convolutions', each member's
  `values['kept_gradient_scale']` on the other conv elements."""
  del variables, rngs
  sums = _gradient_sums(measurements)
  return _scales(sums, reinitialised_counts(sums['retain_gradients'],
                                            values['init_rate']),
                 np.asarray(values['kept_gradient_scale'], np.float32))


def linear_annealing(lr: float, epochs: int) -> list[float]:
  """The reference's `LinearAnnealingLR(num_annealing_steps=(epochs + 1) //
  2, num_total_steps=epochs + 1)`, stepped after each epoch: epoch e runs at
  its `_step_count` e + 1."""
  up, total = (epochs + 1) // 2, epochs + 1
  return [lr * s / up if s <= up else lr * (total - s) / (total - up)
          for s in range(1, epochs + 1)]


@dataclasses.dataclass(frozen=True)
class MSGHparams(hparams.SGDHparams):
  batch_size: int = hparams.hparam(
      64, source=_SOURCE + ', KGLTop2.ORIGINAL_BATCH_SIZE (the retain '
      'gradient pass\'s batch_size=64 too; mufax uses this for both '
      'gradient passes)', minimum=1)
  lr: float = hparams.hparam(
      0.001, source=_SOURCE + ', KGLTop2.ORIGINAL_LR', positive=True,
      **search_spaces.LEARNING_RATES)
  epochs: int = hparams.hparam(
      5, source=_SOURCE + ', KGLTop2.ORIGINAL_NUM_EPOCHS', minimum=1,
      **search_spaces.EPOCHS)
  momentum: float = hparams.hparam(
      0.9, source=_SOURCE + ', KGLTop2.ORIGINAL_MOMENTUM', minimum=0.0,
      maximum=1.0)
  # Fraction of each convolution's elements re-initialised.
  init_rate: float = hparams.hparam(
      0.3, source=_SOURCE + ', KGLTop2.ORIGINAL_INIT_RATE', minimum=0.0,
      maximum=1.0, search=search_spaces.Uniform(0.0, 1.0),
      search_source='DeepUnlearn, munl/unlearning/kgltop2.py (init_rate: '
      'uniform 0..1)', per_member=True)
  # Gradient multiplier of the conv elements kept.
  kept_gradient_scale: float = hparams.hparam(
      0.1, source=_SOURCE + ', re_init_model_snip_ver2_little_grad '
      '(grad_mask[grad_mask == 0] += 0.1)', minimum=0.0, per_member=True)


def retain_subset_plan(n_retain: int, n_forget: int, batch_size: int, *,
                       seed: int) -> plans.Batches:
  """A random subset of retain as large as forget, in batches (the
  reference's `randperm(len(retain))[:len(forget)]`, shuffled)."""
  order = np.random.default_rng([seed, _SUBSET_STREAM]).permutation(
      n_retain)[:n_forget]
  return [{'retain': order[i:i + batch_size]}
          for i in range(0, len(order), batch_size)]


@core.register('msg')
class MSG(core.SGDMethod):
  Hparams = MSGHparams

  def stages(self, ctx):
    hp = self.hparams(ctx)
    bn_train = ctx.bn_train()
    measure = dict(objectives={'retain': finetune.RETAIN_LOSS,
                               'forget': finetune.FORGET_LOSS},
                   learning_rate=0.0, bn_train=bn_train, epochs=1,
                   optimizer='gradient_sum', augment=False)
    stages = [
        core.Stage(row=None, name='retain_gradients',
                   plan=plans.step_plan('retain', retain_subset_plan(
                       ctx.size('retain'), ctx.size('forget'),
                       hp.batch_size, seed=ctx.seed)), **measure),
        core.Stage(row=None, name='forget_gradients',
                   plan=plans.step_plan('forget', plans.passes(
                       'forget', ctx.size('forget'), hp.batch_size, epochs=1,
                       seed=ctx.seed)), **measure),
    ]
    for epoch, lr in enumerate(linear_annealing(hp.lr, hp.epochs)):
      last = epoch == hp.epochs - 1
      stages.append(core.Stage(
          row='msg' if last else None,
          name=f'msg epoch {epoch + 1}/{hp.epochs}',
          plan=plans.step_plan('retain', plans.passes(
              'retain', ctx.size('retain'), hp.batch_size, epochs=1,
              seed=ctx.seed, first_epoch=epoch)),
          objectives={'retain': finetune.RETAIN_LOSS}, learning_rate=lr,
          bn_train=bn_train, epochs=1, optimizer='scaled_sgd',
          momentum=hp.momentum, edit=reinitialise if epoch == 0 else None,
          gradient_scale=gradient_scales, augment=False,
          values={'init_rate': hp.init_rate,
                  'kept_gradient_scale': hp.kept_gradient_scale}))
    return stages
