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

from mufax import engine
from mufax.unlearning import core
from mufax.unlearning import finetune
from mufax.unlearning import loops


@dataclasses.dataclass(frozen=True)
class NoiseSynthesis:
  """Error-maximising noise for the step's forget batch; a `prepare` hook."""
  steps: int = 5
  learning_rate: float = 0.01

  def __call__(self, forward: engine.Forward, inputs: engine.Inputs) -> jax.Array:
    forget = inputs.images('forget')
    target = jax.lax.stop_gradient(forward(forget))
    noise = jax.random.normal(inputs.rng, forget.shape, jnp.float32)
    adam = optax.adam(self.learning_rate)

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


@core.register('unsir')
class UNSIR(core.SGDMethod):

  def stages(self, ctx):
    impair = engine.Objective(impair_loss, prepare=NoiseSynthesis(
        ctx.hp('noise_steps', 5), ctx.hp('noise_lr', 0.01)))
    epochs = ctx.hp('epochs', 2)
    plan = loops.zipped(ctx.size('retain'), ctx.size('forget'),
                        ctx.batch_size, epochs=epochs, seed=ctx.seed)
    return [
        core.Stage(row='unsir_stage1', plan=core.step_plan('impair', plan),
                   objectives={'impair': impair},
                   learning_rate=ctx.hp('lr', 0.001),
                   bn_train=ctx.bn_train(reference_eval=True),
                   epochs=epochs),
        finetune.retain_stage(ctx, 'unsir_stage2',
                              epochs=ctx.hp('repair_epochs', 1),
                              reference_eval=True),
    ]

  def settings(self, ctx):
    return {'noise_steps': ctx.hp('noise_steps', 5),
            'noise_lr': ctx.hp('noise_lr', 0.01)}
