"""Two processes through jax.distributed give what one process gives."""

import functools
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl.testing import absltest

from configs import quickstart
from mufax import checkpoints
from mufax import cluster
from mufax import experiment
from mufax import optimizers
from mufax import run_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


class LaunchTest(absltest.TestCase):

  def test_environment_of_several_processes_is_recognised(self):
    for env, expected in (({'SLURM_NTASKS': '4'}, 'SLURM_NTASKS=4'),
                          ({'SLURM_NTASKS': '1'}, None),
                          ({'OMPI_COMM_WORLD_SIZE': '2'},
                           'OMPI_COMM_WORLD_SIZE=2'),
                          ({'JAX_COORDINATOR_ADDRESS': 'h:1234'},
                           'JAX_COORDINATOR_ADDRESS')):
      with absltest.mock.patch.dict(os.environ, env, clear=True):
        with absltest.mock.patch('glob.glob', return_value=[]):
          self.assertEqual(cluster.launched_as_several(), expected, env)


class TwoProcessTest(absltest.TestCase):
  """2 processes of 2 CPU devices each against 1 process of 4 devices:
  training, one method and the evaluation of a population of 2, whose
  members the 2 x 2 mesh places one in each process."""

  OVERRIDES = {'model.name': 'resnet_tiny', 'model.num_filters': 0,
               # A few steps: 4 of training, 3 of fine-tuning.
               'original.epochs': 1, 'original.decay_epochs': (),
               'original.batch_size': 250, 'unlearn.finetune.epochs': 1,
               'unlearn.finetune.batch_size': 200,
               'methods': 'original,finetune', 'population.size': 2}

  def command(self, data_dir, workdir, cache):
    return ([sys.executable, 'run_main.py', '--config=configs/quickstart.py',
             f'--config.compilation_cache_dir={cache}']
            + [f'--config.{k}={v}' for k, v in self.OVERRIDES.items()]
            + [f'--config.data.data_dir={data_dir}', f'--workdir={workdir}'])

  def parameters(self, data_dir, workdir):
    """The originals' parameters as the run checkpointed them."""
    config = quickstart.get_config()
    for key, value in self.OVERRIDES.items():
      *path, name = key.split('.')
      functools.reduce(getattr, path, config)[name] = value
    config.data.data_dir = data_dir
    task, data = experiment.load_task(config)
    eng = experiment.make_engine(config, task, data)
    seeds = run_config.seeds_of(config, 'original')
    self.assertEqual(seeds, (42, 43))
    folder = checkpoints.folder(config, workdir, 'original', seeds)
    with ocp.CheckpointManager(folder) as manager:
      return manager.restore(1, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(eng.abstract_state(
              optimizers.sgd(0.1, 0.9), len(seeds)))))['state'].params

  def environment(self, devices):
    env = dict(os.environ)
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
    env['JAX_PLATFORMS'] = 'cpu'
    return env

  def test_two_processes_equal_one_process_of_four_devices(self):
    data_dir = self.create_tempdir().full_path
    one = self.create_tempdir().full_path
    two = self.create_tempdir().full_path
    subprocess.run(self.command(data_dir, one, os.path.join(one, 'cache')),
                   cwd=REPO, env=self.environment(4), check=True,
                   capture_output=True, timeout=1800)
    address = f'localhost:{free_port()}'
    processes = [subprocess.Popen(
        self.command(data_dir, two, os.path.join(two, 'cache'))
        + [f'--coordinator_address={address}', '--num_processes=2',
           f'--process_id={i}'],
        cwd=REPO, env=self.environment(2), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=1800)[0] for p in processes]
    for p, output in zip(processes, outputs):
      self.assertEqual(p.returncode, 0, output)
    self.assertIn('2 processes (the command line), 4 devices', outputs[0])
    # Process 0 alone prints progress and writes results.
    self.assertNotIn('original: accuracy', outputs[1])

    with open(os.path.join(one, 'results.json')) as f:
      alone = json.load(f)
    with open(os.path.join(two, 'results.json')) as f:
      together = json.load(f)
    self.assertEqual(together['devices'], alone['devices'])
    for a, b in zip(alone['records'], together['records'], strict=True):
      self.assertEqual(a['method'], b['method'])
      self.assertEqual(a['update_steps'], b['update_steps'])
      self.assertEqual(b['seeds'], [42, 43])
      # Each member's numbers, not only their means. The AUC ranks every
      # (forget, unseen) pair of losses: two within rounding of each other
      # may swap or tie, and move it by 1 / (400 x 400) or half that.
      for m, n in zip(a['members'], b['members'], strict=True):
        self.assertEqual(m['seed'], n['seed'])
        for key, delta in (('accuracy', 1e-6), ('mia', 1e-6),
                           ('nomus', 1e-6), ('loss_auc', 3e-5)):
          self.assertAlmostEqual(m[key], n[key], delta=delta,
                                 msg=(a['method'], m['seed'], key))
      with np.load(os.path.join(one, 'losses', f'{a["method"]}.npz')) as x, \
           np.load(os.path.join(two, 'losses', f'{a["method"]}.npz')) as y:
        self.assertEqual(sorted(x.files), sorted(y.files))
        for split in x.files:
          self.assertEqual(y[split].shape[0], 2, split)
          # The same sums over the same devices, only reduced over TCP.
          np.testing.assert_allclose(x[split], y[split], rtol=1e-4,
                                     atol=1e-6, err_msg=split)

    alone, together = (self.parameters(data_dir, one),
                       self.parameters(data_dir, two))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(
        np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6), alone, together)
    # Two originals of their own seeds, not one twice.
    kernel = np.asarray(together['fc']['kernel'])
    self.assertGreater(np.abs(kernel[0] - kernel[1]).max(), 1e-3)


if __name__ == '__main__':
  absltest.main()
