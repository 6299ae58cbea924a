"""CF-k, catastrophic forgetting of the last k blocks (protocol §5).

Fine-tuning on retain with only the last k of the parameter groups
(`models.PARAM_GROUPS`: stem, layer1..layer4, fc) training; CF-3 trains layer3,
layer4 and the head. BatchNorm runs in train mode, so running statistics
update in frozen blocks too, as in the reference.
"""

from __future__ import annotations

from mufax import models
from mufax.unlearning import core
from mufax.unlearning import finetune


def trainable_groups(k: int) -> frozenset[str]:
  groups = models.PARAM_GROUPS
  if not 1 <= k <= len(groups):
    raise ValueError(f'CF-k: k={k} must lie in 1..{len(groups)} (the '
                     f'parameter groups {", ".join(groups)}).')
  return frozenset(groups[-k:])


@core.register('cf_k')
class CFk(core.SGDMethod):

  def stages(self, ctx):
    k = ctx.hp('k', 3)
    return [finetune.retain_stage(ctx, f'cf{k}', epochs=ctx.hp('epochs', 2),
                                  reference_eval=False,
                                  trainable=trainable_groups(k))]

  def settings(self, ctx):
    return {'k': ctx.hp('k', 3)}
