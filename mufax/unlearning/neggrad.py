"""NegGrad (protocol §5): gradient ascent on the forget loss alone."""

from __future__ import annotations

from mufax import objectives
from mufax import plans
from mufax.unlearning import finetune
from mufax.unlearning import core

# Whether the reference loops over forget alone, per task family: the
# multi-label notebook does; the others loop over retain (`forget_ascent`
# leaves its batches unused).
FORGET_LOOP = {'mufac': False, 'binary': False, 'multilabel': True}


def forget_ascent(forward, inputs, prepared):
  del prepared
  forget_loss = inputs.task_loss(inputs.logits(forward, 'forget'), 'forget')
  return -forget_loss, {'forget_loss': forget_loss}


@core.register('neggrad')
class NegGrad(core.SGDMethod):
  Hparams = finetune.FineTuneHparams

  def stages(self, ctx):
    hp = self.hparams(ctx)
    epochs, bs = hp.epochs, hp.batch_size
    if ctx.task.per_family(FORGET_LOOP):
      # Skipping forget's short batch, as the reference does.
      plan = plans.full_batches('forget', ctx.size('forget'), bs,
                                epochs=epochs, seed=ctx.seed)
    else:
      # Retain batches drive the loop but are not used (MUFAC: 255 steps).
      plan = plans.retain_driven(ctx.size('retain'), ctx.size('forget'), bs,
                                 epochs=epochs, seed=ctx.seed,
                                 use_retain=False)
    return [core.Stage(
        row='neggrad', plan=plans.step_plan('neggrad', plan),
        objectives={'neggrad': objectives.Objective(forget_ascent, pads=True)},
        learning_rate=hp.lr, bn_train=ctx.bn_train(),
        epochs=epochs)]
