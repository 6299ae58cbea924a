r"""Same-original fidelity: mufax's unlearning against the reference's loop.

Is a method's mufax implementation the reference's? One seed per side cannot
say, and neither can two sides that start from different originals. This
harness takes ONE original model and runs a paper method from its very
weights (BatchNorm running statistics included) S times on each side:

- mufax: `METHODS[name].run` on a population of S members sharing the
  original, seeds config.seed + 0..S-1, through the engine as a run does.
- reference: the reference notebooks' loop for the method (protocol §5,
  01_MUFAC/Machine_Unlearning_MUFAC_*.ipynb), written here in PyTorch:
  `mufax.torch_resnet` loaded with the original's converted weights,
  torchvision's transforms on PIL images, shuffling `DataLoader`s of batch 64,
  `torch.optim.SGD` without momentum, the notebooks' BatchNorm modes (on
  MUFAC under `paper` fine-tuning and both UNSIR stages in eval mode, the
  rest in train mode; SCRUB's teacher in eval mode) and loop structures;
  `torch.manual_seed(seed_k)` before each stage, as the notebooks call
  `set_seed(42)` before each training cell.

Both sides read the same prepared splits (the archive's JPEGs as TFDS
decoded them; the reference side makes a PIL image of each), and every model
of both sides is evaluated by one evaluator, mufax's (`evaluate_model`:
protocol §6), so that only the unlearning differs. Per row (UNSIR gives two,
`unsir_stage1` and `unsir_stage2`) and per metric (test top-1 accuracy, MIA,
NoMUS at λ = config.lam, mean forget loss) the report gives each side's mean
± 95% t interval, the difference of the means, Welch's t test and a seeded
permutation test of the difference of the means (exact when the splits are
few), and flags a metric where both p-values fall below 0.05 (no correction
for the several metrics and rows; with 3 seeds a side the permutation test
cannot go below 0.1, and the report says so). It also sets each row's
stages side by side (learning rate, epochs, BatchNorm mode, trainable
groups, update steps).

Results go to --out/fidelity.json and fidelity.md after each side of each
method; run again with the same settings, the harness keeps what is done.

  # SCRUB on real MUFAC at 64x64, 5 seeds per side (CPU).
  python -m benchmarks.fidelity --config=configs/mufac_scrub.py \
      --config.data.manual_dir=../shared/data/mufac \
      --config.data.data_dir=runs/tfds --config.data.image_size=64 \
      --methods=scrub --seeds=5 --original_dir=runs/fidelity/original \
      --out=runs/fidelity/scrub

`--original_dir` holds the original as `train.fit` saves it (under
checkpoints/, as a run's workdir does): trained with config.original's
recipe if absent, reused if present (a run_main.py workdir of the same
dataset, image size, model, protocol and seed serves). A converted reference
checkpoint (`--config.original.checkpoint`, see mufax/convert.py) is used
instead where given.

Check mode: `--batches=mufax --augment=false` feeds the PyTorch loop mufax's
own batch plan (`mufax.plans`) and the images as stored, and UNSIR
mufax's noise: the two sides then compute the same thing, and their models
agree as far as float32 rounding lets a chain of steps agree
(tests/fidelity_test.py checks every paper method; UNSIR's noise search,
Adam normalising near-zero gradients, amplifies rounding most).

The reference side needs torchvision (benchmarks/requirements.txt) for its
transforms, except in check mode. Only MUFAC-family datasets (mufac/*,
synthetic_faces/*) are supported: those are the loops written here.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
from scipy import stats
import torch
import torch.nn.functional as F

from mufax import checkpoints
from mufax import cluster
from mufax import compilation
from mufax import engine as engine_lib
from mufax import experiment
from mufax import files
from mufax import models
from mufax import objectives
from mufax import plans
from mufax import run_config
from mufax import sharding
from mufax import tasks
from mufax import torch_resnet
from mufax import train
from mufax import unlearning
from mufax.data.errors import DataError
from mufax.evaluators import intervals
from mufax.unlearning import core

# The metrics compared, as the report names them.
METRICS = {'accuracy': 'accuracy', 'mia': 'MIA', 'nomus': 'NoMUS',
           'forget_loss': 'forget loss'}
PAPER_METHODS = ('finetune', 'cf_k', 'neggrad', 'advanced_neggrad', 'unsir',
                 'scrub')
SIDES = ('mufax', 'reference')
ALPHA = 0.05
# Resamples of the permutation test where the exact one would enumerate
# more splits than this; its seed, so that a report is reproducible.
PERMUTATIONS = 10_000
PERMUTATION_SEED = 0

# Protocol §5 on MUFAC, as the notebooks set them; not read from mufax.
BATCH_SIZE = 64
REFERENCE_HPARAMS = {
    'finetune': {'lr': 0.001, 'epochs': 2},
    'cf_k': {'lr': 0.001, 'epochs': 2, 'k': 3},
    'neggrad': {'lr': 0.001, 'epochs': 2},
    'advanced_neggrad': {'lr': 0.001, 'epochs': 2},
    'unsir': {'lr': 0.001, 'epochs': 2, 'repair_epochs': 1, 'noise_steps': 5,
              'noise_lr': 0.01},
    'scrub': {'lr': 0.001, 'epochs': 2, 'temperature': 4.0},
}
# The CF-k units, input to output, as torchvision's modules: CF-3 trains
# layer3, layer4 and fc (the notebook also "unfreezes" avgpool, which holds
# no parameters).
TORCH_GROUPS = (('stem', ('conv1', 'bn1')), ('layer1', ('layer1',)),
                ('layer2', ('layer2',)), ('layer3', ('layer3',)),
                ('layer4', ('layer4',)), ('fc', ('fc',)))
# What a stage's settings must agree on between the sides.
STAGE_KEYS = ('learning_rate', 'momentum', 'epochs', 'batch_norm', 'steps',
              'trainable')


log = cluster.log


# ----------------------------------------------------------------- setup


@dataclasses.dataclass
class Setup:
  """The data, the engine and the one original both sides start from."""
  task: tasks.Task
  engine: engine_lib.Engine
  # One model's variables (no member axis), host arrays.
  original: Any
  protocol: str = 'paper'
  lam: float = 0.5
  # Where the original came from, for the report.
  source: str = ''

  @property
  def image_size(self) -> int:
    return self.engine.input_size

  @property
  def arch(self) -> dict[str, Any]:
    model = self.engine.model
    return {'stage_sizes': list(model.stage_sizes),
            'num_filters': model.num_filters,
            'num_outputs': model.num_outputs}


def check_task(dataset: str, task: tasks.Task) -> None:
  """Refuses a task whose reference loops are not written here."""
  if task.family != 'mufac':
    raise ValueError(f'{dataset}: the harness writes the reference loops '
                     'of MUFAC (protocol §5, mufac/* and synthetic_faces/*); '
                     f'this is a {task.family} task.')


def load_setup(config, original_dir: str) -> Setup:
  """The config's data and engine, and its original: a converted reference
  checkpoint (config.original.checkpoint), or the mufax original trained
  under `original_dir` with config.original's recipe (reused if there)."""
  if config.model.dtype != 'float32':
    raise ValueError('The reference side computes in float32: set '
                     'config.model.dtype=float32.')
  task, data = experiment.load_task(config)
  check_task(config.data.dataset, task)
  engine = experiment.make_engine(config, task, data)
  if config.original.checkpoint:
    row = experiment.converted_original(config, engine, task)
    source = f'converted reference checkpoint {config.original.checkpoint}'
  else:
    # One original whatever config.population says.
    config = copy.deepcopy(config)
    config.population.size = 1
    row = train.from_scratch('original', config, task=task, engine=engine,
                             workdir=original_dir)
    source = 'mufax original, ' + checkpoints.folder(
        config, original_dir, 'original', (config.seed,))
  return Setup(task=task, engine=engine,
               original=sharding.member(row.variables, 0),
               protocol=config.protocol, lam=config.lam, source=source)


def fingerprint(variables) -> str:
  """A short hash of every array of `variables`, in tree order."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(variables):
    digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return digest.hexdigest()[:16]


def method_names(methods: str) -> list[str]:
  """'scrub,unsir' or 'paper' (every paper method) as a list."""
  names = []
  for name in (m.strip() for m in methods.split(',') if m.strip()):
    for n in PAPER_METHODS if name == 'paper' else (name,):
      if n not in PAPER_METHODS:
        raise ValueError(f'--methods: {n!r} has no reference loop here; '
                         f'choose from {", ".join(PAPER_METHODS)} or paper.')
      if n not in names:
        names.append(n)
  return names


# ----------------------------------------------------------------- mufax


class _AsStored(core.SGDMethod):
  """A method whose stages see their batches as stored, without the
  training transforms (check mode)."""

  def __init__(self, method: core.SGDMethod):
    super().__init__(method.name)
    self.method = method
    self.Hparams = method.Hparams

  def stages(self, ctx):
    return [dataclasses.replace(s, augment=False)
            for s in self.method.stages(ctx)]

  def teachers(self, ctx, original):
    return self.method.teachers(ctx, original)

  def settings(self, ctx):
    return self.method.settings(ctx)


def stage_settings(settings: Mapping[str, Any]) -> list[dict]:
  """The STAGE_KEYS of each stage a mufax row's settings record."""
  return [{k: s.get(k, 0.0 if k == 'momentum' else None) for k in STAGE_KEYS}
          for s in settings.get('stages', [settings])]


def run_mufax(setup: Setup, name: str, seeds: Sequence[int], *,
              hparams: Mapping[str, Any] | None = None,
              augment: bool = True) -> dict[str, dict]:
  """Method `name` as mufax runs it, one member per seed, all from the
  original: {row: {'variables' (population), 'stages', 'diverged'}}."""
  method = unlearning.METHODS[name]
  if not augment:
    method = _AsStored(method)
  ctx = unlearning.Context(
      task=setup.task, protocol=setup.protocol, data=setup.engine.splits,
      engine=setup.engine, seeds=tuple(seeds), hparams=dict(hparams or {}))
  original = jax.tree.map(lambda x: np.asarray(x)[None], setup.original)
  return {row.name: {'variables': row.variables,
                     'stages': stage_settings(row.settings),
                     'diverged': row.diverged}
          for row in method.run(ctx, original)}


# ------------------------------------------------------------- reference


def to_torch(variables, arch: Mapping[str, Any], device: str = 'cpu'):
  """A `torch_resnet.ResNet` holding Flax `variables`."""
  net = torch_resnet.ResNet(arch['stage_sizes'],
                            num_classes=arch['num_outputs'],
                            width=arch['num_filters'])
  net.load_state_dict({k: torch.tensor(np.ascontiguousarray(v))
                       for k, v in models.to_torch_state_dict(
                           variables).items()})
  return net.to(device)


def to_flax(net: torch.nn.Module, template) -> dict:
  """The variables `net` holds now: copies, which its later steps (UNSIR's
  repair after the impair row) leave alone."""
  return models.from_torch_state_dict(
      {k: v.detach().cpu().numpy().copy()
       for k, v in net.state_dict().items()}, template)


def set_seed(seed: int) -> None:
  """The notebooks' set_seed."""
  torch.manual_seed(seed)
  torch.cuda.manual_seed_all(seed)
  torch.backends.cudnn.deterministic = True
  torch.backends.cudnn.benchmark = False
  np.random.seed(seed)
  random.seed(seed)


class _ArraySplit(torch.utils.data.Dataset):
  """The notebooks' Dataset over decoded images: (transform(PIL), label)."""

  def __init__(self, split: Mapping[str, np.ndarray], transform):
    self.images, self.labels = split['image'], split['label']
    self.transform = transform

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    return self.transform(Image.fromarray(self.images[i])), int(
        self.labels[i])


class _OnDevice:
  """A loader whose batches are moved to `device`."""

  def __init__(self, loader, device: str):
    self.loader, self.device = loader, device

  def __len__(self):
    return len(self.loader)

  def __iter__(self):
    batches = iter(self.loader)
    return ((x.to(self.device), y.to(self.device)) for x, y in batches)


@functools.cache
def torchvision_transforms():
  """torchvision.transforms, made importable by benchmarks/epoch.py; once
  per process, since that registers torchvision's ops, which may be
  registered only once."""
  from benchmarks import epoch  # pylint: disable=g-import-not-at-top
  return epoch.import_transforms()


class ReferenceBatches:
  """The reference's training loaders: torchvision's transforms on PIL
  images (protocol §2.3; with `augment=False` the evaluation transform),
  `DataLoader(batch_size, shuffle=True)`, shuffled and augmented from
  torch's global generator."""

  def __init__(self, splits, image_size: int, *, augment: bool = True,
               batch_size: int = BATCH_SIZE, num_workers: int = 0,
               device: str = 'cpu'):
    transforms = torchvision_transforms()
    random_part = [
        transforms.RandomHorizontalFlip(),
        transforms.RandomAffine(0, shear=10, scale=(0.8, 1.2)),
        transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
    ] if augment else []
    self.transform = transforms.Compose(
        [transforms.Resize(image_size)] + random_part
        + [transforms.ToTensor()])
    self.splits, self.batch_size = splits, batch_size
    self.num_workers, self.device = num_workers, device

  def train(self, name: str) -> Iterable:
    """A new shuffling loader over split `name`."""
    return _OnDevice(torch.utils.data.DataLoader(
        _ArraySplit(self.splits[name], self.transform),
        batch_size=self.batch_size, shuffle=True,
        num_workers=self.num_workers), self.device)


class _PlannedSplit:
  """A loader whose k-th pass is mufax's k-th shuffled pass of the split."""

  def __init__(self, name, split, batch_size, seed, prepare, device):
    self.name, self.split, self.batch_size = name, split, batch_size
    self.seed, self.prepare, self.device = seed, prepare, device
    self.passes = 0

  def __len__(self):
    return math.ceil(len(self.split['label']) / self.batch_size)

  def __iter__(self):
    # The pass is fixed when the loop asks for it, as a DataLoader's.
    order = plans.shuffled_batches(self.name, len(self.split['label']),
                                   self.batch_size, seed=self.seed,
                                   epoch=self.passes)
    self.passes += 1
    return (self._batch(indices) for indices in order)

  def _batch(self, indices):
    images = np.asarray(self.prepare(self.split['image'][indices]))
    return (torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(
        self.device), torch.from_numpy(
            self.split['label'][indices].astype(np.int64)).to(self.device))


@functools.cache
def _preprocess(image_size: int):
  """The engine's `preprocess` at `image_size`, compiled once per size."""
  return jax.jit(functools.partial(objectives.preprocess,
                                   image_size=image_size))


class PlannedBatches:
  """Check mode: mufax's batch plan for `seed` (each loader's k-th pass is
  `plans.shuffled_batches(..., epoch=k)`) and its images as stored
  (`objectives.preprocess`), so that the reference loop sees what a mufax stage
  with `augment=False` sees."""

  def __init__(self, splits, image_size: int, *, seed: int,
               batch_size: int = BATCH_SIZE, device: str = 'cpu'):
    self.splits, self.seed, self.batch_size = splits, seed, batch_size
    self.device = device
    self.prepare = _preprocess(image_size)

  def train(self, name: str) -> Iterable:
    """A loader over split `name` whose passes start again at mufax's
    first: mufax plans each stage from pass 0."""
    return _PlannedSplit(name, self.splits[name], self.batch_size, self.seed,
                         self.prepare, self.device)


# noise(update step of the stage, NCHW shape) -> the stage's starting noise.
Noise = Callable[[int, tuple], torch.Tensor]


def torch_noise(step: int, shape: tuple) -> torch.Tensor:
  """The notebook's Noise: torch.randn from the global generator."""
  del step
  return torch.randn(shape)


def mufax_noise(seed: int, stage: int = 0) -> Noise:
  """Check mode: the noise mufax's UNSIR draws at each step of stage
  `stage` for `seed` (SGDMethod.run keys a stage by fold_in(key(seed),
  stage), the engine a step by fold_in(., step), and `Inputs.rng` folds in
  the step's number of batches: retain and forget)."""

  def noise(step, shape):
    key = jax.random.fold_in(jax.random.key(seed), stage)
    key = jax.random.fold_in(jax.random.fold_in(key, step), 2)
    n, c, h, w = shape
    drawn = np.asarray(jax.random.normal(key, (n, h, w, c), jnp.float32))
    return torch.from_numpy(drawn.transpose(0, 3, 1, 2).copy())

  return noise


def distill_kl(student, teacher, temperature):
  """The notebook's DistillKL: T² · KL(softmax(t/T) ‖ softmax(s/T)),
  summed over classes, divided by the batch size."""
  t = temperature
  return F.kl_div(F.log_softmax(student / t, dim=1),
                  F.softmax(teacher / t, dim=1),
                  reduction='sum') * t * t / student.shape[0]


class _Progress:
  """Progress lines of a reference loop, every `every_s` seconds."""

  def __init__(self, label: str, every_s: float):
    self.label, self.every_s = label, every_s
    self.start = self.last = time.perf_counter()
    self.steps = 0
    self.diverged_at = None

  def step(self, optimizer, loss) -> None:
    """The notebooks' update: zero_grad, backward, step."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    self.steps += 1
    value = loss.item()
    if self.diverged_at is None and not math.isfinite(value):
      self.diverged_at = self.steps
    now = time.perf_counter()
    if now - self.last >= self.every_s:
      self.last = now
      log(f'  {self.label} step {self.steps}: loss {value:.4f}, '
          f'{self.steps / (now - self.start):.2f} steps/s')


def _stage(lr, epochs, bn_train, steps, trainable=None) -> dict:
  return {'learning_rate': lr, 'momentum': 0.0, 'epochs': epochs,
          'batch_norm': 'train' if bn_train else 'eval', 'steps': steps,
          'trainable': sorted(trainable) if trainable else None}


def _retain_epochs(net, batches, lr, epochs, progress, params=None):
  """Fine-tuning's loop: epochs of the task loss over retain."""
  optimizer = torch.optim.SGD(net.parameters() if params is None else params,
                              lr=lr)
  retain = batches.train('retain')
  first = progress.steps
  for _ in range(epochs):
    for x, y in retain:
      progress.step(optimizer, F.cross_entropy(net(x), y))
  return progress.steps - first


def _scrub(net, teacher, batches, hp, progress):
  optimizer = torch.optim.SGD(net.parameters(), lr=hp['lr'])
  retain, forget = batches.train('retain'), batches.train('forget')
  t = hp['temperature']
  for _ in range(hp['epochs']):
    net.train()
    teacher.eval()
    for x, y in retain:
      student = net(x)
      with torch.no_grad():
        target = teacher(x)
      progress.step(optimizer, F.cross_entropy(student, y)
                    + distill_kl(student, target, t))
    for x, _ in forget:
      student = net(x)
      with torch.no_grad():
        target = teacher(x)
      progress.step(optimizer, -distill_kl(student, target, t))
  return progress.steps


def _negative_gradient(net, batches, hp, progress, *, use_retain: bool):
  """NegGrad (use_retain False) and Advanced NegGrad: the loop runs over
  retain and takes forget batches from an iterator made again when used up,
  skipping steps whose two batches differ in size."""
  optimizer = torch.optim.SGD(net.parameters(), lr=hp['lr'])
  retain, forget = batches.train('retain'), batches.train('forget')
  forget_batches = iter(forget)
  for _ in range(hp['epochs']):
    for x_retain, y_retain in retain:
      try:
        x_forget, y_forget = next(forget_batches)
      except StopIteration:
        forget_batches = iter(forget)
        x_forget, y_forget = next(forget_batches)
      if x_forget.size(0) != x_retain.size(0):
        continue
      if use_retain:
        loss = (F.cross_entropy(net(x_retain), y_retain)
                - F.cross_entropy(net(x_forget), y_forget))
      else:
        loss = -F.cross_entropy(net(x_forget), y_forget)
      progress.step(optimizer, loss)
  return progress.steps


def _unsir_impair(net, batches, hp, progress, noise: Noise):
  """UNSIR stage 1 as the notebook runs it: per zipped pair of full batches,
  5 Adam steps on fresh noise towards the forget batch's logits (taken again
  under no_grad at every step), the noise clamped to [0, 1], then one SGD
  step on loss(noise, y_retain) + loss(x_retain, y_retain)."""
  optimizer = torch.optim.SGD(net.parameters(), lr=hp['lr'])
  retain, forget = batches.train('retain'), batches.train('forget')
  bs = hp['batch_size']
  for _ in range(hp['epochs']):
    for (x_retain, y_retain), (x_forget, _) in zip(retain, forget):
      if x_retain.size(0) != bs or x_forget.size(0) != bs:
        continue
      start = torch.nn.Parameter(
          noise(progress.steps, tuple(x_forget.shape)).to(x_forget.device))
      noise_optimizer = torch.optim.Adam([start], lr=hp['noise_lr'])
      for _ in range(hp['noise_steps']):
        outputs = net(start)
        with torch.no_grad():
          target = net(x_forget)
        noise_optimizer.zero_grad()
        # Like the notebook, this also leaves gradients in the model, which
        # the SGD step's zero_grad clears.
        (-F.mse_loss(outputs, target)).backward()
        noise_optimizer.step()
      clamped = torch.clamp(start.detach(), 0, 1)
      progress.step(optimizer, F.cross_entropy(net(clamped), y_retain)
                    + F.cross_entropy(net(x_retain), y_retain))
  return progress.steps


def reference_bn_train(name: str, protocol: str) -> bool:
  """Protocol §5: on MUFAC under `paper`, fine-tuning and both UNSIR stages
  ran in eval mode (an evaluation call left the model so)."""
  return not (protocol == 'paper' and name in ('finetune', 'unsir'))


def run_reference(setup: Setup, name: str, seed: int, *, batches,
                  hparams: Mapping[str, Any] | None = None,
                  log_every_s: float, noise: Noise = torch_noise,
                  device: str = 'cpu') -> dict[str, dict]:
  """Method `name` as the reference's loop runs it from the original, for
  one seed: {row: {'variables' (one model), 'stages', 'diverged'}}.

  `batches.train(split)` gives a stage's loaders (`ReferenceBatches`, or
  `PlannedBatches` in check mode); `hparams` override REFERENCE_HPARAMS.
  """
  hp = {'batch_size': BATCH_SIZE, **REFERENCE_HPARAMS[name],
        **(hparams or {})}
  net = to_torch(setup.original, setup.arch, device)
  bn_train = reference_bn_train(name, setup.protocol)
  net.train(bn_train)
  label = f'reference {name} seed {seed}'
  progress = _Progress(label, log_every_s)
  rows = {}

  def row(row_name, stages):
    rows[row_name] = {'variables': to_flax(net, setup.original),
                      'stages': stages,
                      'diverged': progress.diverged_at}

  set_seed(seed)
  lr, epochs = hp['lr'], hp['epochs']
  if name == 'finetune':
    steps = _retain_epochs(net, batches, lr, epochs, progress)
    row('finetune', [_stage(lr, epochs, bn_train, steps)])
  elif name == 'cf_k':
    groups = TORCH_GROUPS[-hp['k']:]
    for p in net.parameters():
      p.requires_grad = False
    for _, modules in groups:
      for module in modules:
        for p in getattr(net, module).parameters():
          p.requires_grad = True
    steps = _retain_epochs(
        net, batches, lr, epochs, progress,
        params=[p for p in net.parameters() if p.requires_grad])
    row(f'cf{hp["k"]}', [_stage(lr, epochs, bn_train, steps,
                                [g for g, _ in groups])])
  elif name in ('neggrad', 'advanced_neggrad'):
    steps = _negative_gradient(net, batches, hp, progress,
                               use_retain=name == 'advanced_neggrad')
    row(name, [_stage(lr, epochs, bn_train, steps)])
  elif name == 'unsir':
    impair = [_stage(lr, epochs, bn_train,
                     _unsir_impair(net, batches, hp, progress, noise))]
    row('unsir_stage1', impair)
    set_seed(seed)
    steps = _retain_epochs(net, batches, lr, hp['repair_epochs'], progress)
    row('unsir_stage2', impair + [_stage(lr, hp['repair_epochs'], bn_train,
                                         steps)])
  elif name == 'scrub':
    teacher = to_torch(setup.original, setup.arch, device)
    steps = _scrub(net, teacher, batches, hp, progress)
    row('scrub', [_stage(lr, hp['epochs'], True, steps)])
  else:
    raise ValueError(f'No reference loop for {name!r}.')
  return rows


# ------------------------------------------------------ evaluation, tests


def stack(members: Sequence[Any]):
  """One model's variables each -> a population."""
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]),
                      *members)


def evaluate(setup: Setup, population, seeds: Sequence[int]) -> list[dict]:
  """Protocol §6 for each member (mufax's evaluator): test accuracy, MIA,
  NoMUS and more, and the mean per-sample forget loss."""
  record, arrays = experiment.evaluate_model(
      population, engine=setup.engine, task=setup.task, lam=setup.lam,
      seeds=tuple(seeds))
  members = record.get('members') or [record]
  out = []
  for k, (seed, member) in enumerate(zip(seeds, members)):
    out.append({'seed': int(seed),
                **{key: float(member[key]) for key in (
                    'accuracy', 'top2_accuracy', 'retain_accuracy', 'mia',
                    'forgetting_score', 'nomus', 'loss_auc') if key in member},
                'forget_loss': float(np.mean(arrays['forget'][k]))})
  return out


def _finite(value: float) -> float | None:
  return float(value) if math.isfinite(value) else None


def two_sample(a: Sequence[float], b: Sequence[float], *,
               resamples: int = PERMUTATIONS,
               seed: int = PERMUTATION_SEED) -> dict[str, Any]:
  """Welch's t test and a two-sided permutation test of mean(a) - mean(b).

  The permutation test enumerates every split of the pooled values into
  groups of len(a) and len(b) when there are at most `resamples` of them
  (p = the share as extreme as the observed one, the observed included), and
  otherwise draws `resamples` seeded permutations (p = (extreme + 1) /
  (resamples + 1)); `permutation_floor` is the smallest p it can give (3
  seeds a side: 0.1, so it can never flag). A value NaN where a test is
  undefined (Welch with no spread at all) is None.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  difference = float(a.mean() - b.mean())
  welch = stats.ttest_ind(a, b, equal_var=False)
  pooled = np.concatenate([a, b])
  n, total = len(a), len(pooled)
  if math.comb(total, n) <= resamples:
    splits = np.asarray(list(itertools.combinations(range(total), n)))
    chosen = np.zeros((len(splits), total), bool)
    np.put_along_axis(chosen, splits, True, axis=1)
    exact = True
  else:
    rng = np.random.default_rng(seed)
    chosen = np.argsort(rng.random((resamples, total)), axis=1) < n
    exact = False
  first = (chosen * pooled).sum(axis=1) / n
  second = (~chosen * pooled).sum(axis=1) / (total - n)
  # The same split computed two ways may differ in the last bit.
  extreme = int(np.sum(np.abs(first - second)
                       >= abs(difference) * (1 - 1e-9) - 1e-15))
  permutation_p = (extreme / len(chosen) if exact
                   else (extreme + 1) / (resamples + 1))
  # The smallest p the test can give: the observed split and, with equal
  # groups, its mirror, are always as extreme as themselves.
  floor = ((2 if n == total - n else 1) / len(chosen) if exact
           else 1 / (resamples + 1))
  welch_p = _finite(welch.pvalue)
  return {'difference': difference, 'welch_t': _finite(welch.statistic),
          'welch_p': welch_p, 'permutation_p': permutation_p,
          'permutation_floor': floor,
          'permutations': 'exact' if exact else resamples,
          'flagged': bool(welch_p is not None and welch_p < ALPHA
                          and permutation_p < ALPHA)}


def _side_summary(values: Sequence[float]) -> dict[str, Any]:
  mean, half = intervals.t_interval(values)
  return {'mean': mean, 'ci95': _finite(half), 'values': list(values)}


def compare_rows(sides: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
  """Per row of a method both sides ran: whether their stages agree, and
  per metric each side's summary and the two-sample tests."""
  out = {}
  for row, ours in sides['mufax']['rows'].items():
    theirs = sides['reference']['rows'].get(row)
    if theirs is None:
      out[row] = {'error': 'the reference produced no such row'}
      continue
    result = {'stages_agree': ours['stages'] == theirs['stages']}
    if ours.get('diverged') or theirs.get('diverged'):
      result['diverged'] = {'mufax': ours.get('diverged'),
                            'reference': theirs.get('diverged')}
    else:
      result['metrics'] = {}
      for metric in METRICS:
        a = [m[metric] for m in ours['members']]
        b = [m[metric] for m in theirs['members']]
        result['metrics'][metric] = {
            'mufax': _side_summary(a), 'reference': _side_summary(b),
            **two_sample(a, b)}
    out[row] = result
  return out


# ---------------------------------------------------------------- a method


def run_side(setup: Setup, name: str, side: str, seeds: Sequence[int], *,
             augment: bool = True, batches: str = 'reference',
             log_every_s: float, num_workers: int = 0,
             hparams: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """One side of method `name`, S seeds, evaluated: {'rows': {row:
  {'stages', 'members' (one record per seed), 'diverged'}}, 'seconds'}.

  `batches='mufax'` (check mode, needs augment=False) feeds the reference
  loop mufax's batch plan and UNSIR noise.
  """
  if batches not in ('reference', 'mufax'):
    raise ValueError(f'batches={batches!r}: choose reference or mufax.')
  if batches == 'mufax' and augment:
    raise ValueError('mufax\'s batch plan is only reproduced without '
                     'augmentation: set augment=False.')
  start = time.perf_counter()
  if side == 'mufax':
    produced = run_mufax(setup, name, seeds, hparams=hparams,
                         augment=augment)
    populations = {row: r['variables'] for row, r in produced.items()}
  else:
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    bs = (hparams or {}).get('batch_size', BATCH_SIZE)
    per_seed = []
    for seed in seeds:
      if batches == 'mufax':
        loaders = PlannedBatches(setup.engine.splits, setup.image_size,
                                 seed=seed, batch_size=bs, device=device)
        noise = mufax_noise(seed)
      else:
        loaders = ReferenceBatches(setup.engine.splits, setup.image_size,
                                   augment=augment, batch_size=bs,
                                   num_workers=num_workers, device=device)
        noise = torch_noise
      per_seed.append(run_reference(setup, name, seed, batches=loaders,
                                    hparams=hparams, noise=noise,
                                    device=device, log_every_s=log_every_s))
    produced = {row: {'stages': per_seed[0][row]['stages'],
                      'diverged': [s for s, r in zip(seeds, per_seed)
                                   if r[row]['diverged']] or None}
                for row in per_seed[0]}
    populations = {row: stack([r[row]['variables'] for r in per_seed])
                   for row in produced}
  seconds = time.perf_counter() - start
  rows = {}
  for row, r in produced.items():
    rows[row] = {'stages': r['stages'], 'diverged': r['diverged']}
    if not r['diverged']:
      rows[row]['members'] = evaluate(setup, populations[row], seeds)
  return {'rows': rows, 'seconds': seconds}


# ----------------------------------------------------------------- reports


def _fmt(summary: Mapping[str, Any]) -> str:
  half = summary['ci95']
  return f'{summary["mean"]:.4f}' + (f' ± {half:.4f}' if half is not None
                                     else '')


def _p(value) -> str:
  return '–' if value is None else f'{value:.3g}'


def format_markdown(results: Mapping[str, Any]) -> str:
  """The report: settings, the original, and per row and metric both sides
  and the tests."""
  s = results['settings']
  lines = [
      '# Fidelity: mufax against the reference loop, from one original', '',
      f'{s["dataset"]} at {s["image_size"]}x{s["image_size"]}, protocol '
      f'{s["protocol"]}, ResNet {s["arch"]["stage_sizes"]} width '
      f'{s["arch"]["num_filters"]}, λ = {s["lam"]}; seeds {s["seeds"]} on '
      f'each side; training transforms {"on" if s["augment"] else "off"}; '
      f'batches: {s["batches"]}.',
      f'Original: {results["original"]["source"]} (fingerprint '
      f'{s["original"]}).', '']
  original = results['original'].get('metrics')
  if original:
    lines += ['Original: ' + ', '.join(
        f'{label} {original[m]:.4f}' for m, label in METRICS.items()), '']
  lines += ['| row | metric | mufax | reference | mufax − reference | '
            'Welch p | permutation p | |', '|---|---|---|---|---|---|---|---|']
  notes = []
  for name, comparison in results.get('comparison', {}).items():
    for row, c in comparison.items():
      if 'error' in c or 'diverged' in c:
        notes.append(f'- {row}: {c.get("error") or c["diverged"]}')
        continue
      if not c['stages_agree']:
        sides = results['methods'][name]
        notes.append(f'- {row}: the stages differ: mufax '
                     f'{sides["mufax"]["rows"][row]["stages"]}, reference '
                     f'{sides["reference"]["rows"][row]["stages"]}')
      for metric, m in c['metrics'].items():
        lines.append(
            f'| {row} | {METRICS[metric]} | {_fmt(m["mufax"])} | '
            f'{_fmt(m["reference"])} | {m["difference"]:+.4f} | '
            f'{_p(m["welch_p"])} | {_p(m["permutation_p"])} | '
            f'{"**differs**" if m["flagged"] else ""} |')
  lines += ['', 'Mean ± half width of the 95% t interval over the seeds. '
            f'**differs**: Welch and permutation p both below {ALPHA} (no '
            'correction for the number of rows and metrics). Both sides\' '
            'models evaluated by mufax (protocol §6).']
  floors = [m['permutation_floor'] for c in results.get(
      'comparison', {}).values() for r in c.values()
             for m in r.get('metrics', {}).values()]
  if floors and max(floors) >= ALPHA:
    lines += ['', f'With {len(s["seeds"])} seeds a side the permutation '
              f'test\'s smallest p is {max(floors):.3g}: it cannot fall below '
              f'{ALPHA}, so nothing can be marked **differs**; read Welch\'s '
              'p (approximate with so few seeds), or run more seeds (4 a side '
              'reach 2/70 = 0.029).']
  if notes:
    lines += ['', *notes]
  for name, method in results.get('methods', {}).items():
    for row in method.get('mufax', {}).get('rows', {}):
      stages = method['mufax']['rows'][row]['stages']
      lines.append(f'\n{row} stages (mufax): ' + '; '.join(
          f'lr {st["learning_rate"]}, {st["epochs"]} epoch(s), BatchNorm '
          f'{st["batch_norm"]}, {st["steps"]} steps'
          + (f', trains {", ".join(st["trainable"])}' if st['trainable']
             else '') for st in stages))
  return '\n'.join(lines) + '\n'


def write_reports(out: str, results: Mapping[str, Any]) -> None:
  with files.replaced_atomically(os.path.join(out, 'fidelity.json')) as f:
    json.dump(results, f, indent=1, default=str)
  with files.replaced_atomically(os.path.join(out, 'fidelity.md')) as f:
    f.write(format_markdown(results))


def previous_results(out: str, settings: Mapping[str, Any]) -> dict:
  """The methods' sides an earlier run with these settings finished."""
  try:
    with open(os.path.join(out, 'fidelity.json')) as f:
      saved = json.load(f)
  except FileNotFoundError:
    return {}
  if saved.get('settings') != json.loads(json.dumps(settings)):
    log(f'{out}/fidelity.json holds other settings; starting afresh')
    return {}
  return saved.get('methods', {})


# -------------------------------------------------------------------- main


_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/mufac_scrub.py', 'The run config: dataset, image size, '
    'model, the original\'s recipe, protocol, seed and λ (its methods and '
    'unlearn sections are not used).')
_METHODS = flags.DEFINE_string(
    'methods', 'scrub', f'Comma-separated: {", ".join(PAPER_METHODS)}, or '
    'paper for all of them.')
_SEEDS = flags.DEFINE_integer('seeds', 5, 'Runs per side: seeds config.seed '
                              '+ 0..N-1.')
_ORIGINAL_DIR = flags.DEFINE_string(
    'original_dir', 'runs/fidelity/original', 'Where the mufax original '
    'is trained, or found if it is there.')
_OUT = flags.DEFINE_string('out', 'runs/fidelity',
                           'Where fidelity.json and fidelity.md go.')
_AUGMENT = flags.DEFINE_boolean(
    'augment', True, 'The training transforms on both sides (protocol §2.3).')
_BATCHES = flags.DEFINE_enum(
    'batches', 'reference', ['reference', 'mufax'], 'The reference side\'s '
    'batches: its own shuffling DataLoaders, or (check mode, with '
    '--augment=false) mufax\'s batch plan.')
_NUM_WORKERS = flags.DEFINE_integer(
    'num_workers', 0, 'DataLoader workers of the reference side (the MUFAC '
    'notebooks: 0).')
# Not --torch_threads: benchmarks/epoch.py, which the reference side imports
# for torchvision, defines that one.
_REFERENCE_THREADS = flags.DEFINE_integer(
    'reference_threads', None, 'torch.set_num_threads for the reference '
    'side; default: torch\'s own.')


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  if _REFERENCE_THREADS.value:
    torch.set_num_threads(_REFERENCE_THREADS.value)
  try:
    run(_CONFIG.value)
  except (DataError, ValueError, run_config.ConfigError,
          compilation.PopulationTooLarge, engine_lib.Diverged,
          checkpoints.CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


def run(config) -> None:
  """The command: every --methods method, both sides, and the reports."""
  if (unlearning.hparams_config(config.unlearn.to_dict())
      != unlearning.hparams_config({})):
    raise app.UsageError('config.unlearn is changed: the harness runs '
                         'protocol §5\'s hyperparameters on both sides.')
  if _SEEDS.value < 2:
    raise app.UsageError('--seeds must be at least 2: the tests need a '
                         'spread on each side.')
  if _BATCHES.value == 'mufax' and _AUGMENT.value:
    raise app.UsageError('--batches=mufax (check mode) needs '
                         '--augment=false.')
  names = method_names(_METHODS.value)
  os.makedirs(_OUT.value, exist_ok=True)
  experiment.enable_compilation_cache(config, _OUT.value)
  setup = load_setup(config, _ORIGINAL_DIR.value)
  seeds = [config.seed + k for k in range(_SEEDS.value)]
  settings = {'dataset': config.data.dataset, 'protocol': setup.protocol,
              'image_size': setup.image_size, 'arch': setup.arch,
              'lam': setup.lam, 'seeds': seeds, 'augment': _AUGMENT.value,
              'batches': _BATCHES.value,
              'original': fingerprint(setup.original)}
  methods = previous_results(_OUT.value, settings)
  results = {'settings': settings,
             'original': {'source': setup.source,
                          'metrics': evaluate(
                              setup, stack([setup.original]),
                              [config.seed])[0]},
             'devices': {'mufax': f'{jax.device_count()} x '
                                  f'{jax.devices()[0].device_kind}',
                         'reference': torch.cuda.get_device_name()
                                      if torch.cuda.is_available() else
                                      f'cpu, {torch.get_num_threads()} '
                                      'threads'},
             'methods': methods, 'comparison': {}}
  for name in names:
    for side in SIDES:
      if side in methods.get(name, {}):
        log(f'{name} ({side}): done in an earlier run')
        continue
      log(f'{name} ({side}): {len(seeds)} seeds from the original')
      methods.setdefault(name, {})[side] = run_side(
          setup, name, side, seeds, augment=_AUGMENT.value,
          batches=_BATCHES.value, num_workers=_NUM_WORKERS.value,
          log_every_s=config.log_every_s)
      results['comparison'] = {n: compare_rows(m) for n, m in methods.items()
                               if all(s in m for s in SIDES)}
      write_reports(_OUT.value, results)
  results['comparison'] = {n: compare_rows(m) for n, m in methods.items()
                           if all(s in m for s in SIDES)}
  write_reports(_OUT.value, results)
  log(format_markdown(results))
  log(f'report in {_OUT.value}/fidelity.md and fidelity.json')


if __name__ == '__main__':
  app.run(main)
