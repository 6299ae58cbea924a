"""random_labels, bad_teaching and l1_sparse: plans, objectives, teachers."""

import dataclasses
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import trees_testing
import unlearning_test as ut

from mufax import objectives
from mufax import sharding
from mufax import unlearning
from mufax.unlearning import bad_teaching
from mufax.unlearning import core
from mufax.unlearning import finetune
from mufax.unlearning import l1_sparse
from mufax.unlearning import random_labels
from mufax.unlearning import scrub


# Compiles faster than the 4 devices conftest makes.
ONE_DEVICE = jax.devices()[:1]


def batch(ctx, split, n=ut.BATCH):
  """The first `n` examples of a split, unaugmented, as an objective sees
  them."""
  return (jnp.asarray(ctx.data[split]['image'][:n] / 255.0, jnp.float32),
          jnp.asarray(ctx.data[split]['label'][:n]))


def forward_of(ctx, variables, *, train):
  return objectives.Forward(ctx.engine.model, variables['params'],
                            variables['batch_stats'], train=train)


def run_measuring(ctx, method, original):
  """The method's rows and each stage's `RunResult` (its measurements)."""
  results = []
  run_stage = core.SGDMethod._run_stage

  def spy(self, *args, **kwargs):
    state, result = run_stage(self, *args, **kwargs)
    results.append(result)
    return state, result

  with mock.patch.object(core.SGDMethod, '_run_stage', spy):
    rows = ut.rows_of(ctx, method, original)
  return rows, results


def first_steps(ctx, method, original, **fields):
  """The variables of the method's row (named as the method) when each of
  its stages runs only its first step, with `fields` replacing the stages'
  own (e.g. augment=True)."""
  cls = type(unlearning.METHODS[method])
  stages = cls.stages

  def cut(self, ctx):
    return [dataclasses.replace(s, plan=s.plan[:1], **fields)
            for s in stages(self, ctx)]

  with mock.patch.object(cls, 'stages', cut):
    return ut.host(ut.rows_of(ctx, method, original)[method].variables)


def constant_model(variables, bias):
  """`variables` with every kernel zero and the head's bias `bias`: logits
  `bias` whatever the images, in train and eval mode alike."""
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.zeros_like(x) if path[-1].key == 'kernel' else x,
      variables['params'])
  params['fc']['bias'] = jnp.broadcast_to(jnp.asarray(bias, jnp.float32),
                                          params['fc']['bias'].shape)
  return {'params': params, 'batch_stats': variables['batch_stats']}


def l1_of(params) -> float:
  return float(sum(np.abs(np.asarray(x)).sum()
                   for x in jax.tree.leaves(params)))


class PlanTest(parameterized.TestCase):
  """Step plans on full-size MUFAC splits (1500 forget, 8525 retain)."""

  def test_random_labels_forget_pass_then_retain_pass(self):
    ctx = ut.sized_context('mufac/paper', 1500, 8525)
    stage, = unlearning.METHODS['random_labels'].stages(ctx)
    keys = [key for key, _ in stage.plan]
    # 10 epochs of 6 forget batches of 256 (the last of 220), then 34 retain.
    self.assertEqual(keys, (['forget'] * 6 + ['retain'] * 34) * 10)
    first = np.concatenate([b['forget'] for _, b in stage.plan[:6]])
    self.assertCountEqual(first, range(1500))
    second = np.concatenate([b['forget'] for _, b in stage.plan[40:46]])
    self.assertFalse(np.array_equal(first, second))  # reshuffled
    self.assertEqual((stage.learning_rate, stage.momentum, stage.bn_train),
                     (0.01, 0.9, True))

  def test_l1_sparse_decays_alpha_linearly_per_epoch(self):
    ctx = ut.sized_context('mufac/paper', 1500, 8525)
    stage, = unlearning.METHODS['l1_sparse'].stages(ctx)
    loss = stage.objectives['retain'].loss
    # 34 retain steps per epoch: the weight of step s is that of its epoch.

    class Forward:
      params = {'w': jnp.ones(3)}

      def __call__(self, images, mask=None):
        del mask
        return jnp.zeros((images.shape[0], 8))

    batch = (jnp.zeros((2, 4, 4, 3)), jnp.zeros((2,), jnp.int32))
    for step in (0, 33, 34, 100, 339):
      inputs = objectives.Inputs({'retain': batch}, jax.random.key(0),
                                 'softmax', step=step, values=stage.values)
      _, measured = loss(Forward(), inputs, None)
      self.assertAlmostEqual(float(measured['alpha']),
                             1e-4 * (1 - (step // 34) / 10), places=10)
    self.assertLen(stage.plan, 340)
    # The batches are those of plain fine-tuning.
    plain = finetune.retain_stage(ctx, None, learning_rate=0.01, epochs=10,
                                  batch_size=256, reference_eval=False)
    for (_, a), (_, b) in zip(stage.plan, plain.plan, strict=True):
      np.testing.assert_array_equal(a['retain'], b['retain'])

  def test_bad_teaching_mixes_forget_with_a_retain_subset(self):
    ctx = ut.sized_context('mufac/paper', 1500, 8525, epochs=2)
    stage, = unlearning.METHODS['bad_teaching'].stages(ctx)
    self.assertEqual(stage.optimizer, 'adam')
    self.assertEqual(stage.teachers, ('original', 'incompetent'))
    subset_size = int(0.3 * 8525)
    # ceil((1500 + 2557) / 256) steps per epoch; 256 each but the last.
    self.assertLen(stage.plan, 2 * 16)
    sizes = [sum(len(v) for v in b.values()) for _, b in stage.plan[:16]]
    self.assertEqual(sizes, [256] * 15 + [1500 + subset_size - 15 * 256])
    epochs = [stage.plan[:16], stage.plan[16:]]
    subsets = []
    for steps in epochs:
      forget = np.concatenate([b['forget'] for _, b in steps])
      retain = np.concatenate([b['retain'] for _, b in steps])
      self.assertCountEqual(forget, range(1500))
      self.assertLen(retain, subset_size)
      self.assertLen(set(retain), subset_size)
      subsets.append(set(retain))
      # Every batch holds the forget share of 1500 / 4057, to rounding.
      for _, b in steps[:-1]:
        self.assertBetween(len(b['forget']), 94, 95)
    # The subset is drawn once; each epoch reshuffles it.
    self.assertEqual(subsets[0], subsets[1])
    self.assertFalse(np.array_equal(epochs[0][0][1]['retain'],
                                    epochs[1][0][1]['retain']))

  def test_bad_teaching_counts_leave_out_an_empty_split(self):
    # 20 forget and 13 retain in batches of 8: the last batch holds one
    # forget example and no retain.
    self.assertEqual(bad_teaching.mixed_counts(20, 13, 8),
                     [(5, 3), (5, 3), (5, 3), (4, 4), (1, 0)])
    plan = bad_teaching.mixed_plan(20, np.arange(13), 8, epochs=1, seed=0)
    self.assertEqual(sorted(plan[-1]), ['forget'])


class RandomLabelsTest(parameterized.TestCase):

  @parameterized.parameters('mufac/paper', 'mucac/multilabel')
  def test_forget_objective_trains_on_drawn_labels(self, dataset):
    """The forget objective is the task loss against `draw_labels` of the
    step's key: by default from every label ('all'); with 'other' never
    the true one."""
    base, original = ut.tiny_context(ONE_DEVICE, dataset=dataset)
    images, labels = batch(base, 'forget')
    variables = sharding.member(original, 0)
    forward = forward_of(base, variables, train=False)
    logits = forward(images)
    for setting, draw in ((None, 'all'), ('other', 'other')):
      ctx = dataclasses.replace(base, hparams={
          **base.hparams, **({'labels': setting} if setting else {})})
      stage, = unlearning.METHODS['random_labels'].stages(ctx)
      objective = stage.objectives['forget']
      self.assertEqual(objective.loss.draw, draw)
      drawn = []
      for seed in (0, 1):
        rng = jax.random.key(seed)
        inputs = objectives.Inputs({'forget': (images, labels)}, rng,
                                   ctx.task.loss_kind)
        value, _ = objective.loss(forward, inputs, None)
        expected = random_labels.draw_labels(rng, labels,
                                             ctx.task.num_outputs,
                                             ctx.task.loss_kind, draw)
        self.assertAlmostEqual(float(value),
                               float(inputs.loss(logits, expected)),
                               places=5)
        if draw == 'other':
          differs = np.asarray(expected != labels)
          self.assertTrue(differs.reshape(len(labels), -1).any(axis=1).all())
        drawn.append(np.asarray(expected))
      # Drawn afresh from the step's key.
      self.assertFalse(np.array_equal(*drawn))

  def test_labels_setting_is_checked(self):
    method = unlearning.METHODS['random_labels']
    hp = method.hparams(ut.sized_context('mufac/paper', 20, 46))
    self.assertEqual(hp.labels, 'all')
    self.assertEqual(hp.settings()['labels'], 'all')
    with self.assertRaisesRegex(ValueError,
                                r"^labels='any': choose one of all, other\.$"):
      method.hparams(ut.sized_context('mufac/paper', 20, 46, labels='any'))


class BadTeachingTest(parameterized.TestCase):

  def test_incompetent_teacher_is_a_fresh_model_of_its_member(self):
    method = unlearning.METHODS['bad_teaching']
    made = {}
    for seed in (5, 6):
      ctx, original = ut.tiny_context(ONE_DEVICE, seeds=(seed,))
      teachers = method.teachers(ctx, original)
      self.assertIs(teachers['original'], original)
      made[seed] = ut.host(teachers['incompetent'])
      self.assertEqual(sharding.members(made[seed]), 1)
    # Made from the member's seed: the same seed, the same teacher.
    jax.tree.map(np.testing.assert_array_equal, made[6],
                 ut.host(method.teachers(ctx, original)['incompetent']))
    # Not the model `Engine.init` starts from with the same seed (the seed's
    # key split), nor the original, nor another member's teacher.
    fresh = ut.host(bad_teaching.init_population(
        ctx.engine.model, jax.random.split(jax.random.key(6))[:1],
        ctx.engine.input_size))
    kernel = lambda tree: tree['params']['layer1_0']['conv1']['kernel']
    for other in (fresh, ut.host(original), made[5]):
      self.assertFalse(np.array_equal(kernel(made[6]), kernel(other)))
    # A fresh model: untouched BatchNorm statistics.
    np.testing.assert_array_equal(made[6]['batch_stats']['bn1']['var'],
                                  np.ones_like(
                                      made[6]['batch_stats']['bn1']['var']))

  @parameterized.parameters(('mufac/paper', False), ('mucac/multilabel', True))
  def test_objective_distils_each_split_from_its_teacher(self, dataset,
                                                         bernoulli):
    """The objective's KL on forget examples is that of the incompetent
    teacher's eval-mode logits, on retain that of the original's, against
    the student's train-mode logits of the mixed batch."""
    ctx, original = ut.tiny_context(ONE_DEVICE, dataset=dataset)
    method = unlearning.METHODS['bad_teaching']
    stage, = method.stages(ctx)
    objective = stage.objectives['distil']
    teachers = {name: forward_of(ctx, sharding.member(t, 0), train=False)
                for name, t in method.teachers(ctx, original).items()}
    batches = {'forget': batch(ctx, 'forget', 5),
               'retain': batch(ctx, 'retain', 3)}
    inputs = objectives.Inputs(batches, jax.random.key(0), ctx.task.loss_kind,
                               teachers, values=stage.values)
    student = forward_of(ctx, sharding.member(original, 0), train=True)
    prepared = objective.prepare(student, inputs)
    value, measured = objective.loss(student, inputs, prepared)

    forget_images, retain_images = batches['forget'][0], batches['retain'][0]
    student_logits = forward_of(ctx, sharding.member(original, 0), train=True)(
        jnp.concatenate([forget_images, retain_images]))
    kl = scrub.bernoulli_kl if bernoulli else scrub.softmax_kl
    competent = teachers['original'](forget_images)
    by_hand = {
        'forget': kl(teachers['incompetent'](forget_images),
                     student_logits[:5]),
        'retain': kl(teachers['original'](retain_images),
                     student_logits[5:])}
    for name in by_hand:
      self.assertAlmostEqual(float(measured[f'{name}_kl']),
                             float(by_hand[name].mean()), places=5)
    self.assertAlmostEqual(
        float(value), float(jnp.concatenate(list(by_hand.values())).mean()),
        places=5)
    # The two teachers disagree, so taking the wrong one would show.
    self.assertGreater(abs(float(kl(competent, student_logits[:5]).mean())
                           - float(by_hand['forget'].mean())), 1e-3)

  def test_run_reads_both_teachers_and_writes_neither(self):
    """With teachers whose logits are constant, each split's KL at the first
    step is known whatever the images: the run must measure those, and
    leave both teachers' buffers as they were. On multi-label MUCAC."""
    # One step of all 20 forget and 13 (30% of 46) retain examples.
    ctx, original = ut.tiny_context(ONE_DEVICE, dataset='mucac/multilabel',
                                    protocol='clean', lr=1e-3, batch_size=33)
    student_bias = np.array([-1.0, 0.5, 2.0])
    original = jax.tree.map(lambda x: x[None], constant_model(
        sharding.member(original, 0), student_bias))
    bad_bias = np.array([1.5, -2.0, 0.0])
    method = unlearning.METHODS['bad_teaching']
    real_teachers = type(method).teachers
    made = {}

    def constant_teachers(self, ctx, original):
      incompetent = jax.vmap(lambda v: constant_model(v, bad_bias))(
          real_teachers(self, ctx, original)['incompetent'])
      made['teachers'] = {'original': original, 'incompetent': incompetent}
      made['copies'] = ut.host(made['teachers'])
      return made['teachers']

    # The constant models' logits, checked rather than assumed.
    images = batch(ctx, 'forget')[0]
    for train in (True, False):
      np.testing.assert_allclose(
          forward_of(ctx, sharding.member(original, 0), train=train)(images),
          np.broadcast_to(student_bias, (ut.BATCH, 3)), atol=1e-6)

    with mock.patch.object(type(method), 'teachers', constant_teachers):
      rows, results = run_measuring(ctx, 'bad_teaching', original)
    measured = results[0].measured
    self.assertEqual(rows['bad_teaching'].update_steps, 1)
    expected = scrub.bernoulli_kl(jnp.asarray(bad_bias)[None],
                                  jnp.asarray(student_bias)[None])[0]
    self.assertGreater(float(expected), 0.1)
    self.assertAlmostEqual(float(measured['forget_kl'][0, 0]),
                           float(expected), places=5)
    self.assertAlmostEqual(float(measured['retain_kl'][0, 0]), 0.0,
                           places=6)
    # The student moved, and stayed finite; the teachers' buffers did not.
    params = ut.host(rows['bad_teaching'].variables['params'])
    self.assertTrue(jax.tree.all(jax.tree.map(
        lambda p: bool(np.isfinite(p).all()), params)))
    self.assertGreater(trees_testing.largest_difference(
        ut.host(original['params']), params), 1e-4)
    self.assertEqual(set(made['teachers']), {'original', 'incompetent'})
    jax.tree.map(np.testing.assert_array_equal, made['copies'],
                 ut.host(made['teachers']))


  def test_student_and_teachers_see_batches_as_stored(self):
    """The first step gives, bit for bit, what it gives with augmentation
    off, and not what it gives with augmentation on: the reference never
    augmented."""
    # One step of all 20 forget and 13 (30% of 46) retain examples.
    ctx, original = ut.tiny_context(ONE_DEVICE, batch_size=33)
    stage, = unlearning.METHODS['bad_teaching'].stages(ctx)
    self.assertFalse(stage.augment)
    declared = first_steps(ctx, 'bad_teaching', original)
    jax.tree.map(np.testing.assert_array_equal, declared,
                 first_steps(ctx, 'bad_teaching', original, augment=False))
    self.assertGreater(trees_testing.largest_difference(
        declared['params'], first_steps(ctx, 'bad_teaching', original,
                                        augment=True)['params']), 1e-6)


class L1SparseTest(parameterized.TestCase):

  def test_objective_adds_the_weighted_l1_norm(self):
    ctx, original = ut.tiny_context(ONE_DEVICE)
    variables = sharding.member(original, 0)
    images, labels = batch(ctx, 'retain')
    inputs = objectives.Inputs({'retain': (images, labels)}, jax.random.key(0),
                               ctx.task.loss_kind, values={'alpha': 0.5})
    value, measured = l1_sparse.RetainL1Loss()(
        forward_of(ctx, variables, train=False), inputs, None)
    task = inputs.loss(forward_of(ctx, variables, train=False)(images),
                       labels)
    l1 = l1_of(variables['params'])
    self.assertAlmostEqual(float(measured['l1']), l1, delta=1e-5 * l1)
    self.assertAlmostEqual(float(value), float(task) + 0.5 * l1,
                           delta=1e-5 * l1)

  def test_alpha_zero_is_fine_tuning_and_alpha_shrinks_the_weights(self):
    # 2 batches of 23 retain examples.
    hparams = dict(lr=0.01, epochs=1, batch_size=23)

    class Plain(core.SGDMethod):
      """Fine-tuning on retain with l1_sparse's settings."""

      def stages(self, ctx):
        hp = l1_sparse.L1SparseHparams.from_overrides(ctx.hparams)
        return [finetune.retain_stage(
            ctx, 'plain', learning_rate=hp.lr, epochs=hp.epochs,
            batch_size=hp.batch_size, reference_eval=False,
            momentum=hp.momentum)]

    ctx, original = ut.tiny_context(ONE_DEVICE, **hparams)
    start = ut.host(original)
    plain = ut.host({r.name: r.variables
                     for r in Plain('plain').run(ctx, original)}['plain'])
    tuned = {}
    for alpha in (0.0, 0.05):
      ctx, _ = ut.tiny_context(ONE_DEVICE, alpha=alpha, **hparams)
      tuned[alpha] = ut.host(
          ut.rows_of(ctx, 'l1_sparse', original)['l1_sparse'].variables)
    difference = trees_testing.largest_difference(plain, tuned[0.0])
    change = trees_testing.largest_difference(start, plain)
    self.assertLessEqual(difference, 1e-5 * change)
    self.assertLess(l1_of(tuned[0.05]['params']),
                    l1_of(plain['params']) - 1.0)


if __name__ == '__main__':
  absltest.main()
