r"""One training epoch of the original MUFAC model: mufax against the reference.

"Same work as the reference": one epoch of the original model's recipe on
real MUFAC (the train split, 10,025 images; SGD lr 0.01, momentum 0.9,
softmax cross-entropy, batch 64, shuffled, the train-time augmentation of
protocol §2.3), followed by the per-epoch evaluation of the test split (1,539
images: per-sample losses and logits, eval mode), timed on both sides in one
process:

- mufax: an `engine.Engine(models.ResNet18(num_outputs=8), loss_kind='softmax')`
  holding the prepared train and test splits on the device (uint8, 128x128,
  resized on the device to --image_size). An epoch is what `train.fit` does:
  `plans.epoch_plan` + `Plan.stack`, `with_learning_rate`, `Engine.run` (one
  compiled loop on an accelerator, queued programs per step on CPU; gather,
  resize, augmentation, forward, backward and update all on the device),
  the mean train loss and accuracy, then
  `Engine.predict(state.variables, 'test')` and the test accuracy. One
  warm-up epoch first compiles every program: a whole one, since an
  accelerator's compiled loop is specialised to the plan's length (its
  step count per batch shape), so that a shorter plan would not compile
  the epoch's program. Its compile seconds are reported apart; the timed
  epochs compile nothing (and any compilation in them would be reported and
  left out of their seconds, as `RunResult.seconds` leaves it out).
- reference: the reference notebooks' pipeline (01_MUFAC
  Machine_Unlearning_MUFAC_Base_Models.ipynb): a torch `Dataset` opening each
  JPEG of the unzipped archive with PIL (`custom_train_dataset.csv` +
  `train_images/` for train, `custom_val_dataset.csv` + `val_images/` for
  test, labels a..h -> 0..7), torchvision's Compose([Resize(size),
  RandomHorizontalFlip(), RandomAffine(0, shear=10, scale=(0.8, 1.2)),
  ColorJitter(0.2, 0.2, 0.2), ToTensor()]) for training and Compose([Resize(
  size), ToTensor()]) for test, `DataLoader(batch_size=64, shuffle=True)`
  (test: shuffle=False) with num_workers=0 as the MUFAC notebooks have it
  (their default; only the MUCAC notebooks pass num_workers=2), the eager
  torchvision ResNet-18 of `mufax.torch_resnet`, SGD lr 0.01 momentum 0.9,
  cross-entropy, the notebook's per-batch loss.item() and accuracy sums; then
  the test evaluation under `torch.inference_mode()` with per-sample losses.
  A few warm-up steps (--torch_warmup_steps) come first: eager PyTorch has
  nothing to compile. The archive is unzipped under --reference_dir, untimed.

Each side's epoch seconds are split into the train part (everything up to
the trained model and its train metrics, data loading and augmentation
included) and the eval part. The ratio is reference seconds / mufax seconds
(> 1: mufax is faster). With --epochs > 1 the sides' epochs interleave
(mufax, reference, mufax, ...) so that load from other processes falls on
both alike, and the figures are medians over the epochs.

Host share (mufax): the fraction of the epoch's wall time spent outside the
compiled programs. Every executable the engine runs comes from its
`Compiler`; the benchmark wraps it so that each call is timed from its
dispatch until its outputs are ready (a call the engine would have let run
asynchronously is made to finish first; `Engine.run` waits for each span
anyway, and the test split is one evaluation call). Host share = (epoch wall
time - seconds inside those calls) / epoch wall time, where the wall time
covers the whole epoch as above: planning, uploading the plan, the run's
bookkeeping and the copies back to the host included. Compilation is
excluded from both (none happens in a timed epoch; it is reported if it
does).

  python -m benchmarks.epoch --json=benchmarks/results/epoch.json

The data are prepared with TFDS if needed (`--data_dir`, from the archive in
`--manual_dir`). PyTorch and torchvision are optional dependencies needed only
here: `pip install -r benchmarks/requirements.txt` (see there).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import importlib.util
import os
import statistics
import time
import zipfile

from absl import app
from absl import flags
import jax
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import metadata
from configs import default
from mufax import cluster
from mufax import compilation
from mufax import engine as engine_lib
from mufax import input_pipeline
from mufax import losses
from mufax import models
from mufax import objectives
from mufax import optimizers
from mufax import plans
from mufax import torch_resnet
from mufax import train
from mufax.data import prepare

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_DATA_DIR = flags.DEFINE_string('data_dir', 'runs/tfds',
                                'Where the prepared TFDS dataset lives.')
_MANUAL_DIR = flags.DEFINE_string(
    'manual_dir', os.path.normpath(os.path.join(_ROOT, '..', 'shared', 'data',
                                                'mufac')),
    'The folder holding custom_korean_family_dataset_resolution_128.zip.')
_REFERENCE_DIR = flags.DEFINE_string(
    'reference_dir', 'runs/epoch_reference',
    'Where the archive\'s train and val folders are unzipped for the '
    'reference pipeline (once; reused when present).')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 64, 'Height and width the '
                                   'models see (both sides resize to it).')
_EPOCHS = flags.DEFINE_integer('epochs', 1, 'Timed epochs per side.')
_TORCH_THREADS = flags.DEFINE_integer(
    'torch_threads', None, 'torch.set_num_threads; default: torch\'s own.')
_TORCH_WARMUP_STEPS = flags.DEFINE_integer(
    'torch_warmup_steps', 3,
    'Reference train steps and eval batches run before timing.')
_EXAMPLES = flags.DEFINE_integer(
    'examples', 0, 'Smoke tests only: use the first N images of each split '
    '(0: all). Figures made with it are not the benchmark\'s.')
_JSON = flags.DEFINE_string('json', None, 'Also write the results here.')

DATASET = 'mufac/paper'
ARCHIVE = 'custom_korean_family_dataset_resolution_128.zip'
ARCHIVE_ROOT = 'custom_korean_family_dataset_resolution_128'
# split -> (CSV, image folder) in the archive; the benchmark's test split is
# the archive's val folder (protocol §2.1).
REFERENCE_FILES = {'train': ('custom_train_dataset.csv', 'train_images'),
                   'test': ('custom_val_dataset.csv', 'val_images')}
AGE_CLASSES = 'abcdefgh'
NUM_OUTPUTS = 8
BATCH_SIZE = 64
LEARNING_RATE = 0.01
MOMENTUM = 0.9
SEED = 42
NUM_WORKERS = 0  # what the MUFAC notebooks' DataLoaders use (the default)


def median(values):
  return statistics.median(values)


# -------------------------------------------------------------------- mufax


class TimedCompiler:
  """The engine's `Compiler`, with every call of its executables timed until
  the outputs are ready (`seconds_in_calls`)."""

  def __init__(self, compiler: compilation.Compiler):
    self.inner = compiler
    self.seconds_in_calls = 0.0

  def __getattr__(self, name):
    return getattr(self.inner, name)

  def __call__(self, jitted, *args, **memory):
    compiled = self.inner(jitted, *args, **memory)

    def call(*call_args):
      start = time.perf_counter()
      out = jax.block_until_ready(compiled.call(*call_args))
      self.seconds_in_calls += time.perf_counter() - start
      return out

    return dataclasses.replace(compiled, call=call)


def load_splits(data_dir: str, manual_dir: str, examples: int):
  """The prepared train and test splits as numpy (what `load_task` reads)."""
  builder = prepare.prepare(DATASET, data_dir=data_dir,
                            manual_dir=manual_dir)
  splits = {}
  for name in ('train', 'test'):
    source = builder.as_data_source(name)
    indices = np.arange(min(examples, len(source)) if examples
                        else len(source))
    splits[name] = input_pipeline.read_split(source, indices)
  return splits


class MufaxSide:
  """The original model's epochs through the engine, as `train.fit` runs
  them (without checkpoints)."""

  def __init__(self, splits, image_size: int):
    self.engine = engine_lib.Engine(
        models.ResNet18(num_outputs=NUM_OUTPUTS), loss_kind='softmax',
        splits=splits, log_every_s=default.get_config().log_every_s,
        image_size=image_size)
    self.timer = TimedCompiler(self.engine.compiler)
    self.engine.compiler = self.timer
    self.seeds = [SEED]
    self.state = self.engine.init(
        optimizers.sgd(LEARNING_RATE, MOMENTUM), self.seeds)
    self.rngs = train.augmentation_keys(self.seeds)
    self.update = objectives.Update(objectives.TASK_OBJECTIVE, optimizers.SGD)
    self.labels = splits['test']['label']
    self.pools = [np.arange(len(splits['train']['label']))]
    self.epoch = 0

  def run_epoch(self) -> dict:
    """One epoch (the next of the recipe), timed."""
    engine = self.engine
    compile_before = engine.compiler.seconds
    calls_before = self.timer.seconds_in_calls
    start = time.perf_counter()
    plan = plans.Plan.stack(plans.epoch_plan(
        self.pools, batch_size=BATCH_SIZE, seeds=self.seeds,
        epoch=self.epoch))
    state = optimizers.with_learning_rate(self.state, LEARNING_RATE)
    state, result = engine.run(plan, {'train': self.update}, state,
                               self.rngs, sources={'train': 'train'})
    sizes = np.asarray([plan.images(i) for i in range(len(plan))])
    train_loss = float((result.measured['loss'][:, 0] * sizes).sum()
                       / sizes.sum())
    train_accuracy = float((result.measured['accuracy'][:, 0] * sizes).sum()
                           / sizes.sum())
    trained = time.perf_counter()
    train_compile = engine.compiler.seconds - compile_before
    evaluated = engine.predict(state.variables, 'test')
    test_accuracy = losses.accuracies(evaluated['logits'][0], self.labels,
                                      'softmax')['accuracy']
    done = time.perf_counter()
    eval_compile = engine.compiler.seconds - compile_before - train_compile
    self.state = state
    self.epoch += 1
    train_s = trained - start - train_compile
    eval_s = done - trained - eval_compile
    total = train_s + eval_s
    in_calls = self.timer.seconds_in_calls - calls_before
    return {'train_seconds': train_s, 'eval_seconds': eval_s,
            'total_seconds': total,
            'run_result_seconds': result.seconds,
            'seconds_in_compiled_calls': in_calls,
            'host_share': (total - in_calls) / total,
            'compile_seconds': {'train': train_compile,
                                'eval': eval_compile},
            'train_loss': train_loss, 'train_accuracy': train_accuracy,
            'test_accuracy': float(test_accuracy)}


# ---------------------------------------------------------------- reference


_TORCH_LIBRARIES = []  # kept alive: a torch.library.Library unregisters on
                       # deletion


def import_transforms():
  """torchvision.transforms, also beside a torch build its wheel was not
  built for.

  PyPI's torchvision 0.28.0 is the CUDA build: beside the CPU torch build
  its C++ extension does not load, and the import then fails on the fake
  (meta) registrations of its `nms` ops, whose schemas the extension would
  have defined. Defining those two schemas first lets it import; the PIL
  transforms used here need none of its C++ ops.
  """
  spec = importlib.util.find_spec('torchvision')
  if spec is None:
    raise ImportError('The reference side needs torchvision: pip install '
                      'torchvision==0.28.0 --no-deps (see '
                      'benchmarks/requirements.txt).')
  loaded = False
  for path in glob.glob(os.path.join(spec.submodule_search_locations[0],
                                     '_C*.so')):
    try:
      torch.ops.load_library(path)
      loaded = True
    except OSError:
      pass
  if not loaded:
    lib = torch.library.Library('torchvision', 'FRAGMENT')
    lib.define('nms(Tensor dets, Tensor scores, float iou_threshold) '
               '-> Tensor')
    lib.define('qnms(Tensor qdets, Tensor scores, float iou_threshold) '
               '-> Tensor')
    _TORCH_LIBRARIES.append(lib)
  from torchvision import transforms  # pylint: disable=g-import-not-at-top
  return transforms


def unzip_reference(manual_dir: str, target: str) -> str:
  """The archive's train and val CSVs and folders under `target` (as the
  notebooks unzip it); returns the dataset folder."""
  root = os.path.join(target, ARCHIVE_ROOT)
  marker = os.path.join(root, '.complete')
  if not os.path.exists(marker):
    wanted = tuple(f'{ARCHIVE_ROOT}/{name}' for pair in
                   REFERENCE_FILES.values() for name in pair)
    with zipfile.ZipFile(os.path.join(manual_dir, ARCHIVE)) as z:
      z.extractall(target, [n for n in z.namelist() if n.startswith(wanted)])
    open(marker, 'w').close()
  return root


class FaceDataset(torch.utils.data.Dataset):
  """The notebooks' `Dataset`: (PIL image through `transform`, label)."""

  def __init__(self, csv_path: str, image_directory: str, transform,
               examples: int = 0):
    with open(csv_path, newline='') as f:
      rows = [(r['image_path'], r['age_class']) for r in csv.DictReader(f)]
    self.rows = rows[:examples] if examples else rows
    self.image_directory = image_directory
    self.transform = transform

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, idx):
    # pylint: disable=g-import-not-at-top
    from PIL import Image
    image_path, age_class = self.rows[idx]
    img = Image.open(os.path.join(self.image_directory, image_path))
    return self.transform(img), AGE_CLASSES.index(age_class)


class ReferenceSide:
  """The reference notebook's `train()` and evaluation, on the CPU or GPU
  torch has."""

  def __init__(self, root: str, image_size: int, examples: int):
    transforms = import_transforms()
    train_transform = transforms.Compose([
        transforms.Resize(image_size),
        transforms.RandomHorizontalFlip(),
        transforms.RandomAffine(0, shear=10, scale=(0.8, 1.2)),
        transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        transforms.ToTensor()])
    test_transform = transforms.Compose([transforms.Resize(image_size),
                                         transforms.ToTensor()])
    datasets = {}
    for split, transform in (('train', train_transform),
                             ('test', test_transform)):
      csv_name, folder = REFERENCE_FILES[split]
      datasets[split] = FaceDataset(os.path.join(root, csv_name),
                                    os.path.join(root, folder), transform,
                                    examples)
    torch.manual_seed(SEED)
    self.train_loader = torch.utils.data.DataLoader(
        datasets['train'], batch_size=BATCH_SIZE, shuffle=True,
        num_workers=NUM_WORKERS)
    self.test_loader = torch.utils.data.DataLoader(
        datasets['test'], batch_size=BATCH_SIZE, shuffle=False,
        num_workers=NUM_WORKERS)
    self.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    self.model = torch_resnet.resnet18(num_classes=NUM_OUTPUTS).to(
        self.device)
    self.optimizer = torch.optim.SGD(self.model.parameters(),
                                     lr=LEARNING_RATE, momentum=MOMENTUM)
    self.criterion = torch.nn.CrossEntropyLoss()

  def _sync(self):
    if self.device == 'cuda':
      torch.cuda.synchronize()

  def train(self, max_steps: int | None = None) -> dict:
    """The notebook's train(): returns its loss and accuracy, and the
    seconds spent waiting for the DataLoader."""
    model = self.model
    model.train()
    total, running_loss, running_corrects = 0, 0.0, 0
    data_seconds = 0.0
    began = time.perf_counter()
    for i, (imgs, labels) in enumerate(self.train_loader):
      data_seconds += time.perf_counter() - began
      imgs, labels = imgs.to(self.device), labels.to(self.device)
      outputs = model(imgs)
      self.optimizer.zero_grad()
      _, preds = torch.max(outputs, 1)
      loss = self.criterion(outputs, labels)
      loss.backward()
      self.optimizer.step()
      total += labels.shape[0]
      running_loss += loss.item() * labels.shape[0]
      running_corrects += int(torch.sum(preds == labels.data))
      if max_steps is not None and i + 1 >= max_steps:
        break
      began = time.perf_counter()
    self._sync()
    # The mean over images, as mufax reports it (the notebook divides its
    # sum of batch means by the image count).
    return {'train_loss': running_loss / total,
            'train_accuracy': running_corrects / total,
            'data_seconds': data_seconds}

  def evaluate(self, max_batches: int | None = None) -> dict:
    """Eval-mode logits and per-sample losses of the test split."""
    model = self.model
    model.eval()
    logits, per_sample, labels_all = [], [], []
    data_seconds = 0.0
    began = time.perf_counter()
    with torch.inference_mode():
      for i, (imgs, labels) in enumerate(self.test_loader):
        data_seconds += time.perf_counter() - began
        imgs, labels = imgs.to(self.device), labels.to(self.device)
        z = model(imgs).float()
        per_sample.append(F.cross_entropy(z, labels,
                                          reduction='none').cpu().numpy())
        logits.append(z.cpu().numpy())
        labels_all.append(labels.cpu().numpy())
        if max_batches is not None and i + 1 >= max_batches:
          break
        began = time.perf_counter()
    logits = np.concatenate(logits)
    labels_all = np.concatenate(labels_all)
    return {'test_accuracy': float(np.mean(logits.argmax(-1) == labels_all)),
            'test_loss': float(np.concatenate(per_sample).mean()),
            'data_seconds': data_seconds}

  def warm_up(self, steps: int) -> None:
    if steps > 0:
      self.train(max_steps=steps)
      self.predict(max_batches=steps)

  def run_epoch(self) -> dict:
    start = time.perf_counter()
    trained = self.train()
    middle = time.perf_counter()
    evaluated = self.predict()
    done = time.perf_counter()
    return {'train_seconds': middle - start, 'eval_seconds': done - middle,
            'total_seconds': done - start,
            'data_seconds': {'train': trained['data_seconds'],
                             'eval': evaluated['data_seconds']},
            'train_loss': trained['train_loss'],
            'train_accuracy': trained['train_accuracy'],
            'test_accuracy': evaluated['test_accuracy']}


# --------------------------------------------------------------------- main


def summary(epochs: list[dict], train_images: int, test_images: int) -> dict:
  """Medians over the timed epochs, and each epoch's record."""
  out = {key: median([e[key] for e in epochs])
         for key in ('train_seconds', 'eval_seconds', 'total_seconds')}
  out['img_per_s'] = {'train': train_images / out['train_seconds'],
                      'eval': test_images / out['eval_seconds'],
                      'epoch': (train_images + test_images)
                               / out['total_seconds']}
  out['epochs'] = epochs
  return out


def main(argv):
  del argv
  recorder = metadata.Recorder()
  if _TORCH_THREADS.value:
    torch.set_num_threads(_TORCH_THREADS.value)
  size = _IMAGE_SIZE.value

  start = time.perf_counter()
  splits = load_splits(_DATA_DIR.value, _MANUAL_DIR.value, _EXAMPLES.value)
  read_seconds = time.perf_counter() - start
  train_images = len(splits['train']['label'])
  test_images = len(splits['test']['label'])
  root = unzip_reference(_MANUAL_DIR.value, _REFERENCE_DIR.value)
  cluster.log(f'read train {train_images} and test {test_images} images '
              f'in {read_seconds:.1f} s; reference files in {root}')

  mufax = MufaxSide(splits, size)
  reference = ReferenceSide(root, size, _EXAMPLES.value)
  if len(reference.train_loader.dataset) != train_images or len(
      reference.test_loader.dataset) != test_images:
    raise ValueError('The reference CSVs and the prepared dataset disagree '
                     'on the split sizes.')

  start = time.perf_counter()
  warm = mufax.run_epoch()
  warm_seconds = time.perf_counter() - start
  cluster.log(
      f'mufax warm-up epoch: {warm_seconds:.1f} s, of which compiling '
      f'{sum(warm["compile_seconds"].values()):.1f} s')
  start = time.perf_counter()
  reference.warm_up(_TORCH_WARMUP_STEPS.value)
  cluster.log(f'reference warm-up ({_TORCH_WARMUP_STEPS.value} steps): '
              f'{time.perf_counter() - start:.1f} s')

  mufax_epochs, reference_epochs = [], []
  for epoch in range(_EPOCHS.value):
    mufax_epochs.append(mufax.run_epoch())
    cluster.log(f'timed epoch {epoch + 1}: mufax '
                f'{mufax_epochs[-1]["total_seconds"]:.1f} s')
    reference_epochs.append(reference.run_epoch())
    cluster.log(f'timed epoch {epoch + 1}: reference '
                f'{reference_epochs[-1]["total_seconds"]:.1f} s')

  m = summary(mufax_epochs, train_images, test_images)
  r = summary(reference_epochs, train_images, test_images)
  m['compile_seconds'] = warm['compile_seconds']
  m['warmup_epoch_seconds'] = warm_seconds
  m['host_share'] = median([e['host_share'] for e in mufax_epochs])
  m['timed_compile_seconds'] = sum(sum(e['compile_seconds'].values())
                                   for e in mufax_epochs)
  r['num_workers'] = NUM_WORKERS
  r['warmup_steps'] = _TORCH_WARMUP_STEPS.value
  ratio = {part: r[f'{part}_seconds'] / m[f'{part}_seconds']
           for part in ('train', 'eval', 'total')}
  results = {
      'mufax': m, 'reference': r, 'ratio': ratio,
      'image_size': size, 'batch_size': BATCH_SIZE,
      'train_images': train_images, 'test_images': test_images,
      'epochs': _EPOCHS.value, 'subset': bool(_EXAMPLES.value),
  }

  print(f'\nOne MUFAC epoch: train {train_images} + test {test_images} '
        f'images, ResNet-18, {size}x{size}, batch {BATCH_SIZE}; jax '
        f'{jax.default_backend()}, torch {reference.device}'
        + (f'; median of {_EPOCHS.value} epochs' if _EPOCHS.value > 1 else '')
        + (' [SUBSET: not the benchmark]' if _EXAMPLES.value else ''))
  print(f'{"":22s} {"train s":>8s} {"eval s":>8s} {"total s":>8s} '
        f'{"train img/s":>12s} {"eval img/s":>11s} {"epoch img/s":>12s}')
  for name, side in (('mufax', m), ('reference (PyTorch)', r)):
    print(f'{name:22s} {side["train_seconds"]:8.1f} '
          f'{side["eval_seconds"]:8.2f} {side["total_seconds"]:8.1f} '
          f'{side["img_per_s"]["train"]:12.1f} '
          f'{side["img_per_s"]["eval"]:11.1f} '
          f'{side["img_per_s"]["epoch"]:12.1f}')
  print(f'{"ratio reference/mufax":22s} {ratio["train"]:8.2f} '
        f'{ratio["eval"]:8.2f} {ratio["total"]:8.2f}   (> 1: mufax faster)')
  print(f'mufax compile s (warm-up epoch): train '
        f'{m["compile_seconds"]["train"]:.1f}, eval '
        f'{m["compile_seconds"]["eval"]:.1f}; timed epochs compiled '
        f'{m["timed_compile_seconds"]:.1f} s')
  last = mufax_epochs[-1]
  print(f'mufax host share: {100 * m["host_share"]:.2f}% of the epoch '
        f'outside compiled calls (last epoch: {last["total_seconds"]:.2f} s '
        f'wall, {last["seconds_in_compiled_calls"]:.2f} s in compiled calls; '
        f'RunResult.seconds {last["run_result_seconds"]:.2f})')
  rl = reference_epochs[-1]
  print(f'reference: num_workers {NUM_WORKERS}, {torch.get_num_threads()} '
        f'torch threads; waiting for the DataLoader (decode + augment): '
        f'train {rl["data_seconds"]["train"]:.1f} s, eval '
        f'{rl["data_seconds"]["eval"]:.2f} s (last epoch)')
  print('metrics (last epoch): ' + '; '.join(
      f'{name} train loss {e["train_loss"]:.3f} acc '
      f'{e["train_accuracy"]:.3f}, test acc {e["test_accuracy"]:.3f}'
      for name, e in (('mufax', last), ('reference', rl))))
  print('load average before: {:.2f} {:.2f} {:.2f}; after: {:.2f} {:.2f} '
        '{:.2f}'.format(*recorder.load_before, *os.getloadavg()))
  if _JSON.value:
    recorder.write(_JSON.value, results)


if __name__ == '__main__':
  app.run(main)
