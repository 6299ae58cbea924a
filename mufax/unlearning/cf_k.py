"""CF-k, catastrophic forgetting of the last k blocks (protocol §5).

Fine-tuning on retain with only the last k of the parameter groups
(`models.PARAM_GROUPS`: stem, layer1..layer4, fc) training; CF-3 trains layer3,
layer4 and the head. BatchNorm runs in train mode, so running statistics
update in frozen blocks too, as in the reference.
"""

from __future__ import annotations

import dataclasses

from mufax import models
from mufax import search_spaces
from mufax.unlearning import core
from mufax.unlearning import hparams
from mufax.unlearning import finetune


def trainable_groups(k: int) -> frozenset[str]:
  groups = models.PARAM_GROUPS
  if not 1 <= k <= len(groups):
    raise ValueError(f'CF-k: k={k} must lie in 1..{len(groups)} (the '
                     f'parameter groups {", ".join(groups)}).')
  return frozenset(groups[-k:])


@dataclasses.dataclass(frozen=True)
class CFkHparams(finetune.FineTuneHparams):
  k: int = hparams.hparam(
      3, source='protocol §5 (the paper\'s CF-3)', minimum=1,
      maximum=len(models.PARAM_GROUPS),
      search=search_spaces.IntRange(1, len(models.PARAM_GROUPS)),
      search_source='DeepUnlearn, munl/unlearning/'
      'catastrophic_forgetting_k.py (num_blocks: integers), over all of '
      'mufax\'s parameter groups')


@core.register('cf_k')
class CFk(core.SGDMethod):
  Hparams = CFkHparams

  def stages(self, ctx):
    hp = self.hparams(ctx)
    return [finetune.retain_stage(
        ctx, f'cf{hp.k}', learning_rate=hp.lr, epochs=hp.epochs,
        batch_size=hp.batch_size, reference_eval=False,
        trainable=trainable_groups(hp.k))]
