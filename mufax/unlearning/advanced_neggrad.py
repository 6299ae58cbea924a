"""Advanced NegGrad, the paper's proposal (protocol §5).

Each step descends the retain loss and ascends the forget loss, weights 1:1,
with two forward passes (retain first), so in train mode the running
statistics update twice per step.
"""

from __future__ import annotations

from mufax import objectives
from mufax import plans
from mufax.unlearning import core
from mufax.unlearning import finetune

# Whether retain batches drive the reference's loop, per task family (the
# MUFAC notebook's); the others zip retain with forget.
RETAIN_DRIVEN = {'mufac': True, 'binary': False, 'multilabel': False}


def retain_minus_forget(forward, inputs, prepared):
  del prepared
  retain_loss = inputs.task_loss(inputs.logits(forward, 'retain'), 'retain')
  forget_loss = inputs.task_loss(inputs.logits(forward, 'forget'), 'forget')
  return retain_loss - forget_loss, {'retain_loss': retain_loss,
                                     'forget_loss': forget_loss}


@core.register('advanced_neggrad')
class AdvancedNegGrad(core.SGDMethod):
  Hparams = finetune.FineTuneHparams

  def stages(self, ctx):
    hp = self.hparams(ctx)
    epochs, bs = hp.epochs, hp.batch_size
    sizes = ctx.size('retain'), ctx.size('forget')
    if ctx.task.per_family(RETAIN_DRIVEN):
      plan = plans.retain_driven(*sizes, bs, epochs=epochs, seed=ctx.seed,
                                 use_retain=True)
    else:
      plan = plans.zipped(*sizes, bs, epochs=epochs, seed=ctx.seed)
    return [core.Stage(
        row='advanced_neggrad', plan=plans.step_plan('step', plan),
        objectives={'step': objectives.Objective(retain_minus_forget,
                                                 pads=True)},
        learning_rate=hp.lr, bn_train=ctx.bn_train(),
        epochs=epochs)]
