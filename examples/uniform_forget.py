"""A mufax plugin: forget images pulled towards a uniform prediction."""
import dataclasses
import functools

import jax
import optax

from mufax import unlearning


@dataclasses.dataclass(frozen=True)
class UniformForgetHparams(unlearning.FineTuneHparams):  # lr, epochs, batch
  weight: float = unlearning.hparam(
      1.0, source='this example', minimum=0,
      search=unlearning.LogUniform(0.1, 10.0), search_source='this example')


def retain_and_uniform_forget(forward, inputs, prepared, *, weight):
  retain = inputs.loss(forward(inputs.images('retain')),
                       inputs.labels('retain'))
  logits = forward(inputs.images('forget'))
  if inputs.loss_kind == 'softmax':  # cross-entropy to uniform classes
    forget = -jax.nn.log_softmax(logits).mean()
  else:  # or to 0.5 for each attribute
    forget = optax.sigmoid_binary_cross_entropy(logits, 0.5).mean()
  return retain + weight * forget, {'forget_to_uniform': forget}


@unlearning.register('uniform_forget')
class UniformForget(unlearning.SGDMethod):
  Hparams = UniformForgetHparams

  def stages(self, ctx):
    hp = self.hparams(ctx)
    plan = unlearning.zipped(ctx.size('retain'), ctx.size('forget'),
                             hp.batch_size, epochs=hp.epochs, seed=ctx.seed)
    loss = functools.partial(retain_and_uniform_forget, weight=hp.weight)
    return [unlearning.Stage('uniform_forget',
                             unlearning.step_plan('step', plan),
                             {'step': unlearning.Objective(loss)}, hp.lr,
                             bn_train=True, epochs=hp.epochs)]
