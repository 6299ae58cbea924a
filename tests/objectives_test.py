"""Each unlearning objective against protocol §5's formula written out in
numpy, on a tiny model with fixed weights and fixed batches; the teachers a
real run hands its objectives; the gradient passes of MSG and SSD."""

import dataclasses
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import new_methods_test as nmt
import unlearning_test as ut

from mufax import engine
from mufax import objectives
from mufax import sharding
from mufax import unlearning
from mufax.unlearning import advanced_neggrad
from mufax.unlearning import bad_teaching
from mufax.unlearning import core
from mufax.unlearning import scrub
from mufax.unlearning import ssd
from mufax.unlearning import unsir

ONE_DEVICE = nmt.ONE_DEVICE
T = 4.0


# ----------------------------------------------------- the formulas, by hand


def log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def cross_entropy(logits, labels):
  """Mean over the batch of −log softmax(logits)[label]."""
  return -log_softmax(logits)[np.arange(len(labels)), labels].mean()


def distillation_kl(teacher_logits, student_logits, t=T):
  """T² · KL(softmax(t/T) ‖ softmax(s/T)) summed over classes, batch mean."""
  log_t, log_s = log_softmax(teacher_logits / t), log_softmax(
      student_logits / t)
  return t * t * (np.exp(log_t) * (log_t - log_s)).sum(axis=-1).mean()


def logits_of(model, variables, images, *, train):
  """The model's logits by flax itself: in train mode normalised by the
  batch's own statistics."""
  if train:
    return np.asarray(model.apply(variables, images, train=True,
                                  mutable=['batch_stats'])[0])
  return np.asarray(model.apply(variables, images, train=False))


def with_running_statistics(variables, mean=-0.1, var=0.5):
  """`variables` whose BatchNorm running statistics are `mean` and `var`
  everywhere: far from any batch's, so that eval-mode and train-mode logits
  differ. (A positive mean such as 0.3 would silence every ReLU of the tiny
  model at its initialisation, and its eval-mode logits would not depend on
  the images.)"""
  stats = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.full_like(x, mean if path[-1].key == 'mean'
                                    else var), variables['batch_stats'])
  return {'params': variables['params'], 'batch_stats': stats}


class Fixture:
  """A tiny context, a teacher (the original, with non-default running
  statistics) and a student of other weights, with fixed batches."""

  def __init__(self):
    self.ctx, population = ut.tiny_context(ONE_DEVICE, seeds=(0, 1))
    self.model = self.ctx.engine.model
    self.teacher = with_running_statistics(sharding.member(population, 0))
    self.student = sharding.member(population, 1)
    self.retain = nmt.batch(self.ctx, 'retain')
    self.forget = nmt.batch(self.ctx, 'forget')

  def forward(self, variables, *, train):
    return nmt.forward_of(self.ctx, variables, train=train)

  def inputs(self, stage=None, **batches):
    """The step's inputs, with `stage`'s values (if given)."""
    return objectives.Inputs(
        batches, jax.random.key(3), 'softmax',
        {'original': self.forward(self.teacher, train=False)},
        values=stage.values if stage else {})

  def logits(self, variables, images, *, train):
    return logits_of(self.model, variables, images, train=train)


def call(objective, forward, inputs):
  prepared = (objective.prepare(forward, inputs)
              if objective.prepare is not None else None)
  value, measured = objective.loss(forward, inputs, prepared)
  return float(value), {k: np.asarray(v) for k, v in measured.items()}


class ObjectiveValueTest(parameterized.TestCase):
  """The value each objective hands the optimiser to minimise."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.f = Fixture()

  @parameterized.parameters(True, False)
  def test_advanced_neggrad_is_retain_loss_minus_forget_loss(self, train):
    f = self.f
    objective = unlearning.METHODS['advanced_neggrad'].stages(
        f.ctx)[0].objectives['step']
    self.assertIs(objective.loss, advanced_neggrad.retain_minus_forget)
    value, measured = call(objective, f.forward(f.student, train=train),
                           f.inputs(retain=f.retain, forget=f.forget))
    retain = cross_entropy(f.logits(f.student, f.retain[0], train=train),
                           f.retain[1])
    forget = cross_entropy(f.logits(f.student, f.forget[0], train=train),
                           f.forget[1])
    self.assertAlmostEqual(value, retain - forget, places=5)
    self.assertAlmostEqual(float(measured['retain_loss']), retain, places=5)
    self.assertAlmostEqual(float(measured['forget_loss']), forget, places=5)
    # Either term with the other sign would be off by twice its size.
    self.assertGreater(min(retain, forget), 1.0)

  def test_scrub_retain_pass_is_task_loss_plus_distillation(self):
    f = self.f
    stage = unlearning.METHODS['scrub'].stages(f.ctx)[0]
    value, measured = call(stage.objectives['retain'],
                           f.forward(f.student, train=True),
                           f.inputs(stage, retain=f.retain))
    student = f.logits(f.student, f.retain[0], train=True)
    teacher = f.logits(f.teacher, f.retain[0], train=False)
    task, kl = cross_entropy(student, f.retain[1]), distillation_kl(teacher,
                                                                    student)
    self.assertAlmostEqual(value, task + kl, places=4)
    self.assertAlmostEqual(float(measured['task_loss']), task, places=5)
    self.assertAlmostEqual(float(measured['kl']), kl, places=4)
    # The KL is large enough that a flipped sign, the reversed KL or T
    # instead of T² would show.
    self.assertGreater(kl, 0.1)
    self.assertGreater(abs(distillation_kl(student, teacher) - kl), 0.01)

  def test_scrub_forget_pass_is_minus_the_distillation(self):
    f = self.f
    stage = unlearning.METHODS['scrub'].stages(f.ctx)[0]
    value, measured = call(stage.objectives['forget'],
                           f.forward(f.student, train=True),
                           f.inputs(stage, forget=f.forget))
    kl = distillation_kl(f.logits(f.teacher, f.forget[0], train=False),
                         f.logits(f.student, f.forget[0], train=True))
    self.assertGreater(kl, 0.1)
    self.assertAlmostEqual(value, -kl, places=4)
    self.assertAlmostEqual(float(measured['kl']), kl, places=4)

  @parameterized.parameters(True, False)
  def test_unsir_step_loss_is_noise_loss_plus_retain_loss(self, train):
    """Both terms against the retain labels, each batch through the model on
    its own (in train mode, normalised by its own statistics)."""
    f = self.f
    objective = unlearning.METHODS['unsir'].stages(f.ctx)[0].objectives[
        'impair']
    self.assertIs(objective.loss, unsir.impair_loss)
    noise = jnp.asarray(np.random.default_rng(0).random(f.retain[0].shape),
                        jnp.float32)
    value, measured = objective.loss(f.forward(f.student, train=train),
                                     f.inputs(retain=f.retain), noise)
    noise_loss = cross_entropy(f.logits(f.student, noise, train=train),
                               f.retain[1])
    retain_loss = cross_entropy(f.logits(f.student, f.retain[0],
                                         train=train), f.retain[1])
    self.assertAlmostEqual(float(value), noise_loss + retain_loss, places=5)
    self.assertAlmostEqual(float(measured['noise_loss']), noise_loss,
                           places=5)
    self.assertAlmostEqual(float(measured['retain_loss']), retain_loss,
                           places=5)
    self.assertGreater(min(noise_loss, retain_loss), 1.0)


class NoiseSearchTest(absltest.TestCase):
  """UNSIR's noise: Adam steps that maximise the MSE between the model's
  logits on the noise and on the forget batch, then clamped to [0, 1]."""

  def test_adam_steps_ascend_the_mse_to_the_forget_logits(self):
    f = Fixture()
    impair = unlearning.METHODS['unsir'].stages(f.ctx)[0]
    search = impair.objectives['impair'].prepare
    self.assertEqual(search, unsir.NoiseSynthesis(steps=5))
    self.assertEqual(impair.values, {'noise_lr': 0.01})
    images = f.forget[0]
    inputs = f.inputs(impair, forget=f.forget)
    model, variables = f.model, f.teacher

    def mse(noise):
      target = model.apply(variables, images, train=False)
      return jnp.mean((model.apply(variables, noise, train=False)
                       - target) ** 2)

    # Adam (torch's defaults) written out, ascending the MSE.
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    noise = np.asarray(jax.random.normal(inputs.rng, images.shape,
                                         jnp.float32), np.float64)
    m, v = np.zeros_like(noise), np.zeros_like(noise)
    path = [noise]
    for step in range(1, 6):
      g = np.asarray(jax.grad(mse)(jnp.asarray(noise, jnp.float32)),
                     np.float64)
      m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
      noise = noise + lr * (m / (1 - b1**step)) / (
          np.sqrt(v / (1 - b2**step)) + eps)
      path.append(noise)
    values = [float(mse(jnp.asarray(n, jnp.float32))) for n in path]
    # The steps climb: the written-out search is the one that maximises.
    self.assertTrue(all(b > a for a, b in zip(values, values[1:])), values)

    for steps in (1, 5):
      searched = dataclasses.replace(search, steps=steps)(
          f.forward(variables, train=False), inputs)
      np.testing.assert_allclose(np.asarray(searched),
                                 np.clip(path[steps], 0.0, 1.0), atol=1e-5,
                                 err_msg=f'{steps} steps')
    # Elements inside [0, 1] move by about lr a step, where a descent would
    # land 2 lr away: far beyond the tolerance.
    moved = np.abs(np.clip(path[1], 0, 1) - np.clip(path[0], 0, 1))
    self.assertGreater(np.mean(moved > 0.5 * lr), 0.1)


def learnable_context(**hparams):
  """`ut.tiny_context` on splits whose labels a few steps can learn: each
  class is a colour, with pixel noise (the fixture's random labels would
  leave little to learn from augmented batches)."""
  ctx, original = ut.tiny_context(ONE_DEVICE, **hparams)
  rng = np.random.default_rng(0)
  palette = rng.integers(0, 256, (8, 3))

  def split(n):
    labels = rng.integers(0, 8, n)
    noise = rng.integers(-30, 31, (n, ut.IMAGE_SIZE, ut.IMAGE_SIZE, 3))
    images = palette[labels][:, None, None, :] + noise
    return {'image': np.clip(images, 0, 255).astype(np.uint8),
            'label': labels}

  data = {'forget': split(20), 'retain': split(46)}
  return dataclasses.replace(ctx, data=data, engine=engine.Engine(
      ctx.engine.model, loss_kind='softmax', splits=data, log_every_s=1e9,
      devices=ONE_DEVICE)), original


class RetainLossTest(parameterized.TestCase):
  """Fine-tuning and CF-k lower the retain loss."""

  @parameterized.parameters(('finetune', 'finetune', False),
                            ('cf_k', 'cf3', True))
  def test_a_few_steps_lower_the_retain_loss(self, method, row, train):
    # The loss in the stage's own BatchNorm mode (paper MUFAC fine-tunes in
    # eval mode; CF-k trains in train mode, where the running statistics it
    # moves do not enter), over all of retain as stored.
    ctx, original = learnable_context(epochs=2, lr=0.05)
    self.assertEqual(unlearning.METHODS[method].stages(ctx)[0].bn_train,
                     train)
    images, labels = nmt.batch(ctx, 'retain', ctx.size('retain'))

    def retain_loss(variables):
      return cross_entropy(logits_of(ctx.engine.model, variables, images,
                                     train=train), labels)

    before = retain_loss(sharding.member(original, 0))
    after = retain_loss(sharding.member(
        ut.rows_of(ctx, method, original)[row].variables, 0))
    self.assertLess(after, before - 0.05)


# ---------------------------------------------------- teachers in eval mode


def recording(cls, record):
  """`cls.loss` that also measures what the step's objective saw: the
  teacher logits it was prepared with and the images they are of."""
  loss = cls.loss

  def spy(self, forward, inputs, teacher_logits):
    value, measured = loss(self, forward, inputs, teacher_logits)
    return value, {**measured, **record(self, inputs, teacher_logits)}

  return mock.patch.object(cls, 'loss', spy)


class TeachersInEvalModeTest(absltest.TestCase):
  """In a real run, the teacher logits an objective receives are the
  eval-mode logits of the teacher, with its own running statistics."""

  def assert_eval_mode_logits(self, model, variables, images, logits):
    images = images.reshape((-1,) + images.shape[-3:])
    logits = logits.reshape(-1, logits.shape[-1])
    np.testing.assert_allclose(
        logits, logits_of(model, variables, images, train=False), atol=1e-5)
    # Train mode gives other logits, so the check could fail.
    self.assertGreater(np.abs(logits - logits_of(
        model, variables, images, train=True)).max(), 0.05)

  def test_scrub_distils_from_the_original_in_eval_mode(self):
    ctx, population = ut.tiny_context(ONE_DEVICE, epochs=1, lr=0.05)
    original = with_running_statistics(sharding.member(population, 0))
    with recording(scrub.Distillation, lambda self, inputs, logits: {
        'teacher': logits, 'images': inputs.images(self.split)}):
      _, results = nmt.run_measuring(
          ctx, 'scrub', jax.tree.map(lambda x: x[None], original))
    measured = results[0].measured
    # A pass over retain and one over forget.
    self.assertLen(measured['teacher'], 6 + 3)
    self.assert_eval_mode_logits(ctx.engine.model, original,
                                 measured['images'], measured['teacher'])

  def test_bad_teaching_distils_from_both_teachers_in_eval_mode(self):
    # Two steps of all 20 forget and 13 (30% of 46) retain examples.
    ctx, population = ut.tiny_context(ONE_DEVICE, batch_size=33, epochs=2,
                                      lr=1e-3)
    original = with_running_statistics(sharding.member(population, 0))
    method = type(unlearning.METHODS['bad_teaching'])
    made = method.teachers
    teachers = {}

    def kept(self, ctx, original):
      # The incompetent teacher the run makes (new_methods_test checks it is
      # a fresh model of the member's seed).
      teachers.update(made(self, ctx, original))
      return teachers

    with mock.patch.object(method, 'teachers', kept), recording(
        bad_teaching.BadTeaching, lambda self, inputs, logits: {
            **{f'{n}_teacher': x for n, x in logits.items()},
            **{f'{n}_images': inputs.images(n) for n in logits}}):
      _, results = nmt.run_measuring(
          ctx, 'bad_teaching', jax.tree.map(lambda x: x[None], original))
    measured = results[0].measured
    self.assertLen(measured['forget_teacher'], 2)
    teachers = {'original': original,
                'incompetent': sharding.member(teachers['incompetent'], 0)}
    for split, teacher in bad_teaching.TEACHERS.items():
      self.assert_eval_mode_logits(ctx.engine.model, teachers[teacher],
                                   measured[f'{split}_images'],
                                   measured[f'{split}_teacher'])


# ------------------------------------------------------ the gradient passes


class Recorded(core.SGDMethod):
  """One measuring stage of a method, then an edit that keeps its sums
  (not registered)."""

  def __init__(self, method, stage):
    super().__init__('recorded')
    self.method, self.stage, self.sums = method, stage, None

  def stages(self, ctx):
    measuring, = [s for s in unlearning.METHODS[self.method].stages(ctx)
                  if s.name == self.stage]

    def keep(variables, measurements, rngs, values):
      del rngs, values
      self.sums = ut.host(measurements[self.stage])
      return variables

    return [measuring, core.Stage(
        row='recorded', plan=[], objectives={}, learning_rate=0.0,
        bn_train=False, epochs=0, name='keep', edit=keep)]


class GradientSumTest(absltest.TestCase):
  """`gradient_sum` and `squared_gradient_sum` stages leave Σ∇ and Σ∇² of
  the batch-mean task loss over their batches, as jax.grad gives them batch
  by batch."""

  def test_sums_over_the_stage_batches(self):
    # The forget passes of MSG (train mode) and SSD (eval mode), in two
    # batches of 10, for two members.
    seeds = (5, 6)
    ctx, population = ut.tiny_context(ONE_DEVICE, seeds=seeds,
                                      batch_size=10)
    images = nmt.batch(ctx, 'forget', ctx.size('forget'))[0]
    labels = ctx.data['forget']['label']
    for method, name, power, train in (
        ('msg', 'forget_gradients', 1, True),
        ('ssd', ssd.FORGET, 2, False)):
      recorder = Recorded(method, name)
      list(recorder.run(ctx, population))
      for k, seed in enumerate(seeds):
        variables = sharding.member(population, k)
        stage = recorder.stages(ctx.for_seed(seed))[0]
        self.assertEqual(
            (stage.optimizer, stage.bn_train, stage.augment, len(stage.plan)),
            (('gradient_sum', 'squared_gradient_sum')[power - 1], train,
             False, 2))

        def loss(params, batch, train=train):
          logits = ctx.engine.model.apply(
              {'params': params, 'batch_stats': variables['batch_stats']},
              images[batch['forget']], train=train,
              mutable=['batch_stats'])[0]
          return -jnp.mean(jax.nn.log_softmax(logits)[
              jnp.arange(len(logits)), labels[batch['forget']]])

        grads = [jax.grad(loss)(variables['params'], batch)
                 for _, batch in stage.plan]
        expected = jax.tree.map(
            lambda *g: np.sum([np.asarray(x, np.float64) ** power
                               for x in g], axis=0), *grads)
        measured = sharding.member(recorder.sums, k)
        for (path, e), m in zip(
            jax.tree_util.tree_flatten_with_path(expected)[0],
            jax.tree.leaves(measured), strict=True):
          scale = np.abs(e).max()
          np.testing.assert_allclose(
              m, e, atol=1e-4 * scale, rtol=1e-4,
              err_msg=f'{name} {jax.tree_util.keystr(path)}')


if __name__ == '__main__':
  absltest.main()
