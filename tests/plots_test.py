"""Result plots: PNGs are written, also for degenerate inputs."""

from __future__ import annotations

import os
import warnings

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image

from mufax import datasets
from mufax import plots
from mufax import published


def _png_size(path: str) -> tuple[int, int]:
  """(width, height) of the PNG at `path`; fails if it is not a PNG."""
  with Image.open(path) as image:
    if image.format != 'PNG':
      raise AssertionError(f'{path} is a {image.format}, not a PNG.')
    image.load()  # A truncated file fails here, not at open.
    return image.size


def _mean_pixel(path: str) -> float:
  with Image.open(path) as image:
    return float(np.asarray(image.convert('L')).mean())


class LossHistogramsTest(absltest.TestCase):

  def test_writes_a_png_grid_in_a_new_folder(self):
    rng = np.random.default_rng(0)
    losses = {
        method: dict(forget=rng.exponential(scale, 300).astype(np.float32),
                     unseen=rng.exponential(1.0, 200))
        for method, scale in (('original', 0.1), ('retrain', 1.0),
                              ('neggrad', 5.0), ('scrub', 0.5))
    }
    # A few huge losses, as gradient ascent produces, must not break the bins.
    losses['neggrad']['forget'][:3] = (1e4, 1e7, 1e30)
    path = os.path.join(self.create_tempdir().full_path, 'new', 'dir', 'h.png')
    plots.plot_loss_histograms(losses, path, mia={'original': 0.7136},
                               title='mufac/paper')
    width, height = _png_size(path)
    # Four panels make a grid of 3 columns and 2 rows.
    self.assertGreater(width, 1000)
    self.assertGreater(height, 600)
    self.assertGreater(width, height)

  def test_degenerate_losses(self):
    losses = {
        'empty': dict(forget=np.array([]), unseen=np.array([])),
        'one_empty': dict(forget=np.array([]), unseen=np.array([0.3, 0.7])),
        'constant': dict(forget=np.zeros(5), unseen=np.zeros(7)),
        'single': dict(forget=[2.0], unseen=[2.0]),
        'non_finite': dict(forget=[np.inf, np.nan], unseen=[1.0, np.inf]),
    }
    path = os.path.join(self.create_tempdir().full_path, 'degenerate.png')
    # A density of no samples or a zero-width range would warn (0/0) first.
    with warnings.catch_warnings():
      warnings.simplefilter('error')
      plots.plot_loss_histograms(losses, path)
    width, height = _png_size(path)
    self.assertGreater(width, 300)
    self.assertGreater(height, 200)

  def test_one_method_is_one_panel(self):
    tmp = self.create_tempdir().full_path
    one = os.path.join(tmp, 'one.png')
    two = os.path.join(tmp, 'two.png')
    split = dict(forget=np.linspace(0, 1, 50), unseen=np.linspace(0, 2, 50))
    plots.plot_loss_histograms({'a': split}, one)
    plots.plot_loss_histograms({'a': split, 'b': split}, two)
    self.assertLess(_png_size(one)[0], _png_size(two)[0])

  def test_no_methods(self):
    path = os.path.join(self.create_tempdir().full_path, 'none.png')
    with self.assertRaisesRegex(ValueError, 'no methods'):
      plots.plot_loss_histograms({}, path)
    self.assertFalse(os.path.exists(path))


class AccuracyVsForgettingTest(parameterized.TestCase):

  def test_with_published_points(self):
    records = [
        dict(method='original', accuracy=0.61, forgetting_score=0.2,
             nomus=0.605),
        dict(method='scrub', accuracy=0.58, forgetting_score=0.12,
             nomus=0.67),
    ]
    task = datasets.task_of('mufac/paper')
    reference = [dict(method=m, **published.published(task, m))
                 for m in published.METHODS]
    tmp = self.create_tempdir().full_path
    path = os.path.join(tmp, 'sub', 'scatter.png')
    plots.plot_accuracy_vs_forgetting(records, path, lam=0.5,
                                      published=reference, title='mufac')
    width, height = _png_size(path)
    self.assertBetween(width, 400, 2000)
    self.assertBetween(height, 300, 2000)
    # The hollow published markers and their labels add ink to the figure.
    bare = os.path.join(tmp, 'bare.png')
    plots.plot_accuracy_vs_forgetting(records, bare, lam=0.5, title='mufac')
    self.assertLess(_mean_pixel(path), _mean_pixel(bare))

  @parameterized.parameters(0.0, 0.5, 1.0)
  def test_single_record(self, lam):
    path = os.path.join(self.create_tempdir().full_path, 'one.png')
    plots.plot_accuracy_vs_forgetting(
        [dict(method='retrain', accuracy=0.49, forgetting_score=0.0445)], path,
        lam=lam)
    self.assertGreater(_png_size(path)[0], 400)

  def test_no_records(self):
    path = os.path.join(self.create_tempdir().full_path, 'empty.png')
    plots.plot_accuracy_vs_forgetting([], path, lam=0.5)
    self.assertGreater(_png_size(path)[0], 400)

  @parameterized.parameters(-0.1, 1.5, float('nan'), float('inf'))
  def test_bad_lambda(self, lam):
    path = os.path.join(self.create_tempdir().full_path, 'bad.png')
    with self.assertRaisesRegex(ValueError, 'lambda'):
      plots.plot_accuracy_vs_forgetting([], path, lam=lam)
    self.assertFalse(os.path.exists(path))



class EvaluationPlotsTest(absltest.TestCase):

  def test_epsilon_distributions_one_panel_row_per_row(self):
    rng = np.random.default_rng(0)
    tables = {
        name: {'examples': [{'epsilon': e} for e in rng.exponential(s, 40)],
               'identities': [{'epsilon': e} for e in rng.exponential(s, 6)]}
        for name, s in (('oracle', 0.3), ('original', 5.0), ('neggrad', 1.0),
                        ('scrub', 0.5))}
    tables['retrain'] = {}  # not scored against itself: no panel
    path = os.path.join(self.create_tempdir().full_path, 'eps.png')
    plots.plot_epsilon_distributions(tables, path)
    width, height = _png_size(path)
    # Two columns (per example, per identity), three rows (not the oracle's).
    small = os.path.join(self.create_tempdir().full_path, 'one.png')
    plots.plot_epsilon_distributions(
        {'oracle': tables['oracle'], 'scrub': tables['scrub']}, small)
    self.assertEqual(_png_size(small)[0], width)
    self.assertGreater(height, _png_size(small)[1] * 2)

  def test_epsilon_distributions_of_nothing_writes_nothing(self):
    path = os.path.join(self.create_tempdir().full_path, 'eps.png')
    plots.plot_epsilon_distributions({'retrain': {}}, path)
    self.assertFalse(os.path.exists(path))

  def test_accuracy_vs_forget_score(self):
    path = os.path.join(self.create_tempdir().full_path, 'f.png')
    plots.plot_accuracy_vs_forget_score(
        {'oracle': {'F': 0.6, 'test_accuracy': 0.5,
                    'test_accuracy_ci95': 0.02},
         'original': {'F': 0.05, 'test_accuracy': 0.55,
                      'test_accuracy_ci95': float('nan')},
         'retrain': {'test_accuracy': 0.5}}, path)
    self.assertEqual(_png_size(path), (840, 660))

if __name__ == '__main__':
  absltest.main()
