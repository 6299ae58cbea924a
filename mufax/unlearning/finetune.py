"""Fine-tuning (protocol §5): more epochs of the task loss on retain only."""

from __future__ import annotations

import dataclasses

from mufax import objectives
from mufax import plans
from mufax import search_spaces
from mufax.unlearning import core
from mufax.unlearning import hparams


def role_task_loss(role: str) -> objectives.Objective:
  """The task loss on the batch of one role, as an objective."""

  def loss(forward, inputs, prepared):
    del prepared
    return inputs.task_loss(inputs.logits(forward, role), role), {}

  return objectives.Objective(loss, pads=True)


RETAIN_LOSS = role_task_loss('retain')
# Nothing descends it: MSG and SalUn sum its gradient over the forget set
# (MSG's gradient masks, SalUn's saliency).
FORGET_LOSS = role_task_loss('forget')


def retain_stage(ctx: core.Context, row: str | None, *, learning_rate: float,
                 epochs: int, batch_size: int, reference_eval: bool,
                 **stage) -> core.Stage:
  """Epochs of retain-only training (fine-tuning, CF-k, UNSIR stage 2, and
  the repair of later methods); `stage` sets other `core.Stage` fields."""
  return core.Stage(
      row=row,
      plan=plans.step_plan('retain', plans.passes(
          'retain', ctx.size('retain'), batch_size, epochs=epochs,
          seed=ctx.seed)),
      objectives={'retain': RETAIN_LOSS}, learning_rate=learning_rate,
      bn_train=ctx.bn_train(reference_eval=reference_eval), epochs=epochs,
      **stage)


@dataclasses.dataclass(frozen=True)
class FineTuneHparams(hparams.SGDHparams):
  lr: float = hparams.hparam(
      0.001, source=hparams.REFERENCE_SOURCE, positive=True,
      **search_spaces.LEARNING_RATES)
  epochs: int = hparams.hparam(
      2, source=hparams.REFERENCE_SOURCE, minimum=1, **search_spaces.EPOCHS)


@core.register('finetune')
class FineTune(core.SGDMethod):
  Hparams = FineTuneHparams

  def stages(self, ctx):
    hp = self.hparams(ctx)
    return [retain_stage(ctx, 'finetune', learning_rate=hp.lr,
                         epochs=hp.epochs, batch_size=hp.batch_size,
                         reference_eval=True)]
