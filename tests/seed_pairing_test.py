"""Seed twins cannot flatter forgetting (docs/evaluation.md §1, §4): the
retrained populations have seeds of their own, and the attack leaves a
target's twin out of both fits."""

import os

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from configs import quickstart_population
from mufax import evaluation
from mufax import run_config

N_MODELS, N_EXAMPLES, N_PEOPLE = 16, 500, 50


def paired_populations(correlation: float, seed: int = 0):
  """Retrained φ R and unlearned φ U with identical marginals (each example
  its own mean and spread), where U's member s has correlation
  `correlation` with R's member s and is independent of every other."""
  rng = np.random.default_rng(seed)
  mean = rng.normal(0, 3, size=N_EXAMPLES)
  spread = rng.uniform(0.2, 2.0, size=N_EXAMPLES)
  r = rng.normal(size=(N_MODELS, N_EXAMPLES))
  u = (correlation * r + np.sqrt(1 - correlation**2)
       * rng.normal(size=(N_MODELS, N_EXAMPLES)))
  return mean + spread * u, mean + spread * r


def write_row(workdir: str, name: str, phi: np.ndarray) -> dict:
  """A row as the runner leaves it: its record and losses/<row>.npz."""
  os.makedirs(os.path.join(workdir, 'losses'), exist_ok=True)
  np.savez(os.path.join(workdir, 'losses', f'{name}.npz'), forget=-phi,
           phi_forget=phi)
  members = [{'accuracy': 0.5, 'retain_accuracy': 0.9, 'mia': 0.5}
             for _ in range(len(phi))]
  return {'method': name, 'members': members, 'wall_seconds': 1.0,
          'flops': 1.0}


class AttackOnPairsTest(parameterized.TestCase):

  @parameterized.parameters(0.0, 0.3, 0.6, 0.9, 0.99)
  def test_twins_of_any_correlation_score_chance(self, correlation):
    u, r = paired_populations(correlation)
    workdir = self.create_tempdir().full_path
    records = [write_row(workdir, 'original', u), write_row(workdir, 'retrain',
                                                            r)]
    identities = np.repeat(np.arange(N_PEOPLE), N_EXAMPLES // N_PEOPLE)
    scalars = evaluation.run_evaluators(workdir, records,
                                        identities)['original']['scalars']
    self.assertAlmostEqual(scalars['lira_accuracy'], 0.5, delta=0.02)
    self.assertAlmostEqual(scalars['lira_auc'], 0.5, delta=0.02)


class SeedStreamsTest(parameterized.TestCase):

  @parameterized.parameters((1, False), (2, False), (16, False), (16, True))
  def test_retrained_populations_share_no_seed(self, size, shared):
    config = quickstart_population.get_config()
    config.population.size = size
    config.population.shared_original = shared
    streams = {kind: set(run_config.seeds_of(config, kind))
               for kind in ('original', 'method', 'retrain', 'oracle')}
    self.assertLen(streams['method'], size)
    self.assertLen(streams['retrain'], size)
    for kind in ('retrain', 'oracle'):
      for other in streams:
        if other != kind:
          self.assertEmpty(streams[kind] & streams[other], (kind, other))


if __name__ == '__main__':
  absltest.main()
