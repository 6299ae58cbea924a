"""UNSIR, task-agnostic adjustment (protocol §5): impair with noise, then repair.

Stage 1 (impair), per step over zipped full (retain, forget) batches: noise
drawn N(0, 1) is pushed by a few Adam steps to maximise the MSE between the
model's logits on it and on the forget batch, clamped to [0, 1], and trained
on with the retain labels alongside the retain batch. Stage 2 (repair) is
fine-tuning on retain. Both models are reported, as `unsir_stage1` and
`unsir_stage2`. On MUFAC the reference ran both stages with BatchNorm in eval
mode; in train mode every forward pass, the noise search's included, updates
the running statistics, as it did in the reference.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from mufax import objectives
from mufax import plans
from mufax import search_spaces
from mufax.unlearning import core
from mufax.unlearning import hparams
from mufax.unlearning import finetune


@dataclasses.dataclass(frozen=True)
class NoiseSynthesis:
  """Error-maximising noise for the step's forget batch; a `prepare` hook.
  Its Adam's learning rate is the member's value 'noise_lr'
  (`Inputs.value`)."""
  steps: int = 5

  def __call__(self, forward: objectives.Forward,
               inputs: objectives.Inputs) -> jax.Array:
    forget = inputs.images('forget')
    target = jax.lax.stop_gradient(forward(forget))
    noise = jax.random.normal(inputs.rng, forget.shape, jnp.float32)
    adam = optax.adam(inputs.value('noise_lr'))

    def negative_mse(noise, batch_stats):
      logits, batch_stats = forward.apply(batch_stats, noise)
      return -jnp.mean((logits.astype(jnp.float32) - target) ** 2), batch_stats

    def adam_step(_, carry):
      noise, opt_state, batch_stats = carry
      grad, batch_stats = jax.grad(negative_mse, has_aux=True)(noise,
                                                              batch_stats)
      updates, opt_state = adam.update(grad, opt_state, noise)
      return optax.apply_updates(noise, updates), opt_state, batch_stats

    noise, _, forward.batch_stats = jax.lax.fori_loop(
        0, self.steps, adam_step,
        (noise, adam.init(noise), forward.batch_stats))
    return jnp.clip(noise, 0.0, 1.0)


def impair_loss(forward, inputs, noise):
  labels = inputs.labels('retain')
  noise_loss = inputs.loss(forward(noise), labels)
  retain_loss = inputs.loss(forward(inputs.images('retain')), labels)
  return noise_loss + retain_loss, {'noise_loss': noise_loss,
                                    'retain_loss': retain_loss,
                                    'noise_min': noise.min(),
                                    'noise_max': noise.max()}


# UNSIR has no published sweep; its official notebook runs 1 impair and 1
# repair epoch and 40 noise steps at Adam lr 0.1: the ranges hold those and
# the reference's values.
_SEARCH_SOURCE = ('mufax: around Tarun et al.\'s notebook, '
                  'github.com/vikram2000b/Fast-Machine-Unlearning, and '
                  'protocol §5')


@dataclasses.dataclass(frozen=True)
class UNSIRHparams(hparams.SGDHparams):
  # Both stages' learning rate.
  lr: float = hparams.hparam(
      0.001, source=hparams.REFERENCE_SOURCE, positive=True,
      **search_spaces.LEARNING_RATES)
  epochs: int = hparams.hparam(
      2, source=hparams.REFERENCE_SOURCE + ', stage 1', minimum=1,
      search=search_spaces.IntRange(1, 5), search_source=_SEARCH_SOURCE)
  repair_epochs: int = hparams.hparam(
      1, source=hparams.REFERENCE_SOURCE + ', stage 2', minimum=1,
      search=search_spaces.IntRange(1, 5), search_source=_SEARCH_SOURCE)
  noise_steps: int = hparams.hparam(
      5, source=hparams.REFERENCE_SOURCE, minimum=0,
      search=search_spaces.IntRange(1, 64), search_source=_SEARCH_SOURCE)
  noise_lr: float = hparams.hparam(
      0.01, source=hparams.REFERENCE_SOURCE, positive=True,
      search=search_spaces.LogUniform(1e-3, 1.0),
      search_source=_SEARCH_SOURCE, per_member=True)


@core.register('unsir')
class UNSIR(core.SGDMethod):
  Hparams = UNSIRHparams

  def stages(self, ctx):
    hp = self.hparams(ctx)
    impair = objectives.Objective(impair_loss,
                                  prepare=NoiseSynthesis(hp.noise_steps))
    plan = plans.zipped(ctx.size('retain'), ctx.size('forget'),
                        hp.batch_size, epochs=hp.epochs, seed=ctx.seed)
    return [
        core.Stage(row='unsir_stage1', plan=plans.step_plan('impair', plan),
                   objectives={'impair': impair}, learning_rate=hp.lr,
                   bn_train=ctx.bn_train(reference_eval=True),
                   epochs=hp.epochs, values={'noise_lr': hp.noise_lr}),
        finetune.retain_stage(ctx, 'unsir_stage2', learning_rate=hp.lr,
                              epochs=hp.repair_epochs,
                              batch_size=hp.batch_size, reference_eval=True),
    ]
