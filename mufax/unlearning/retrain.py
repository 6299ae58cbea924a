"""Retraining from scratch on retain (protocol §4): the gold standard row.

It ignores the original model; the runner trains it (or reuses its
checkpoint) with the dataset's recipe, one model per seed.
"""

from __future__ import annotations

from mufax.unlearning import core


@core.register('retrain')
class Retrain(core.Method):
  needs_original = False

  def run(self, ctx, original):
    del original
    if ctx.train_from_scratch is None:
      raise ValueError(f'{self.name} needs a context that can train models.')
    yield ctx.train_from_scratch(self.name)


# A second retrained population with its own seeds: the forget score F that
# retraining itself reaches against `retrain` (docs/evaluation.md §3).
core.register('oracle')(Retrain)
