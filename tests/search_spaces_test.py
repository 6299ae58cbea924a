"""Search ranges: seeded draws and grids inside their ranges, declared once
beside each hyperparameter's default, refused where they leave the values
the field may take."""

import dataclasses

from absl.testing import absltest
from absl.testing import parameterized

from mufax import search_spaces
from mufax import unlearning
from mufax.unlearning import core
from mufax.unlearning import hparams

SPACES = {'lr': search_spaces.LogUniform(1e-4, 1e-1),
          'weight': search_spaces.Uniform(0.0, 2.0),
          'epochs': search_spaces.IntRange(1, 10),
          'labels': search_spaces.Choice(('all', 'other'))}


class SpacesTest(parameterized.TestCase):

  def test_draws_are_seeded_and_inside_their_ranges(self):
    first = search_spaces.sample(SPACES, 200, seed=3)
    self.assertEqual(first, search_spaces.sample(SPACES, 200, seed=3))
    self.assertNotEqual(first, search_spaces.sample(SPACES, 200, seed=4))
    for candidate in first:
      self.assertBetween(candidate['lr'], 1e-4, 1e-1)
      self.assertBetween(candidate['weight'], 0.0, 2.0)
      self.assertIn(candidate['epochs'], range(1, 11))
      self.assertIsInstance(candidate['epochs'], int)
      self.assertIn(candidate['labels'], ('all', 'other'))
    # Log-uniform: as many draws per decade.
    decades = [sum(10**-(e + 1) <= c['lr'] < 10**-e for c in first)
               for e in (1, 2, 3)]
    self.assertGreater(min(decades), 40)
    self.assertEqual({c['epochs'] for c in first}, set(range(1, 11)))

  def test_grid_covers_each_range_end_to_end(self):
    candidates = search_spaces.grid(SPACES, 3)
    self.assertLen(candidates, 3 * 3 * 3 * 2)
    self.assertSequenceAlmostEqual(sorted({c['lr'] for c in candidates}),
                                   [1e-4, 10 ** -2.5, 1e-1], delta=1e-12)
    self.assertEqual(sorted({c['epochs'] for c in candidates}), [1, 6, 10])
    self.assertEqual({c['labels'] for c in candidates}, {'all', 'other'})

  @parameterized.parameters(
      (search_spaces.LogUniform, (0.0, 1.0)),
      (search_spaces.Uniform, (1.0, 1.0)),
      (search_spaces.IntRange, (3, 2)))
  def test_empty_ranges_are_refused(self, kind, ends):
    with self.assertRaises(ValueError):
      kind(*ends)

  def test_a_range_beyond_the_allowed_values_is_refused_at_registration(self):

    @dataclasses.dataclass(frozen=True)
    class _Hparams(hparams.SGDHparams):
      lr: float = hparams.hparam(
          0.01, source='a test', positive=True,
          search=search_spaces.Uniform(0.0, 0.1), search_source='a test')

    class _Method(core.SGDMethod):
      Hparams = _Hparams

    with self.assertRaisesRegex(
        ValueError, r"'search_test_lr': the search range of lr \(uniform "
        r'\[0, 0.1\]\) reaches lr=0.0: must be > 0'):
      core.register('search_test_lr')(_Method)
    self.assertNotIn('search_test_lr', unlearning.METHODS)

  def test_a_range_needs_its_source(self):
    with self.assertRaisesRegex(ValueError, 'search and search_source'):
      hparams.hparam(0.1, source='a test',
                  search=search_spaces.LogUniform(0.01, 1.0))

  def test_the_methods_ranges_are_read_from_their_declarations(self):

    @dataclasses.dataclass(frozen=True)
    class _Hparams(hparams.SGDHparams):
      lr: float = hparams.hparam(
          0.01, source='a test', positive=True,
          search=search_spaces.LogUniform(1e-3, 1.0), search_source='a test')
      mode: str = hparams.hparam('a', source='a test', choices=('a', 'b'))

    self.assertEqual(hparams.search_spaces_of(_Hparams),
                     {'lr': search_spaces.LogUniform(1e-3, 1.0)})


class DeclaredRangesTest(absltest.TestCase):

  def test_every_method_that_trains_searches_its_learning_rate_and_epochs(self):
    for name, method in unlearning.METHODS.items():
      fields = {f.name for f in dataclasses.fields(method.Hparams)}
      spaces = unlearning.search_spaces_of(method.Hparams)
      for field in {'lr', 'epochs'} & fields:
        self.assertIn(field, spaces, name)
      for field, space in spaces.items():
        source = next(f for f in dataclasses.fields(method.Hparams)
                      if f.name == field).metadata['search_source']
        self.assertTrue(source, (name, field))
        self.assertIsInstance(space, (search_spaces.LogUniform,
                                      search_spaces.Uniform,
                                      search_spaces.IntRange,
                                      search_spaces.Choice))

  def test_ssd_can_select_weights_on_a_forget_set_of_mufac_size(self):
    # MUFAC's forget set is 1,500 of train's 10,025 images: a forget
    # importance above about |D|/|f| times the training one cannot occur.
    spaces = unlearning.search_spaces_of(unlearning.METHODS['ssd'].Hparams)
    self.assertLess(spaces['alpha'].low, 10025 / 1500 / 2)


if __name__ == '__main__':
  absltest.main()
