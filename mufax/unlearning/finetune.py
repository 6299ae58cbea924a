"""Fine-tuning (protocol §5): more epochs of the task loss on retain only."""

from __future__ import annotations

from mufax import engine
from mufax.unlearning import core
from mufax.unlearning import loops


def retain_loss(forward, inputs, prepared):
  del prepared
  return inputs.loss(forward(inputs.images('retain')),
                     inputs.labels('retain')), {}


RETAIN_LOSS = engine.Objective(retain_loss)


def retain_stage(ctx: core.Context, row: str, *, epochs: int,
                 reference_eval: bool,
                 trainable: frozenset[str] | None = None) -> core.Stage:
  """Epochs of retain-only training at lr 0.001 (fine-tuning, CF-k, UNSIR 2)."""
  return core.Stage(
      row=row,
      plan=core.step_plan('retain', loops.passes(
          'retain', ctx.size('retain'), ctx.batch_size, epochs=epochs,
          seed=ctx.seed)),
      objectives={'retain': RETAIN_LOSS},
      learning_rate=ctx.hp('lr', 0.001),
      bn_train=ctx.bn_train(reference_eval=reference_eval), epochs=epochs,
      trainable=trainable)


@core.register('finetune')
class FineTune(core.SGDMethod):

  def stages(self, ctx):
    return [retain_stage(ctx, 'finetune', epochs=ctx.hp('epochs', 2),
                         reference_eval=True)]
