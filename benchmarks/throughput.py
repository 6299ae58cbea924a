r"""Images per second of the mufax ResNet-18 against PyTorch eager, side by side.

Times, in one process and interleaved repetition by repetition (so that load
from other processes hits both sides alike):
- train: one model's train step as the engine runs it for each member (uint8
  images to float on the device, SGD with momentum 0.9, softmax
  cross-entropy, BatchNorm in train mode) against a torchvision-style
  ResNet-18 train step in PyTorch eager. The headline row runs the mufax step
  without its on-device augmentation, since PyTorch gets already-augmented
  tensors; `train_augmented` times the mufax step with it (PyTorch side
  unchanged).
- eval: the mufax eval step (eval mode, per-sample cross-entropy) against the
  same in PyTorch under `inference_mode`.

Each figure is the median over `--repeats` repetitions of `--steps` steps,
after one warm-up repetition. Compilation is timed apart (`compile_s`).

  python -m benchmarks.throughput --image_sizes=32,64,128 \
      --json=benchmarks/results/throughput.json

times each size in turn and ends with a table of the ratios at every size.

With --layers, times instead each convolution shape of the model alone
(forward, input gradient, kernel gradient): XLA's native convolution, the
formulations `mufax.conv.cpu_formulations` picks, and PyTorch's; and the max
pool.

PyTorch is an optional dependency, needed only here.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable

from absl import app
from absl import flags
import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from torch import nn
import torch.nn.functional as F

from benchmarks import metadata
from mufax import conv
from mufax import conv_formulations
from mufax import input_pipeline
from mufax import losses as losses_lib
from mufax import models
from mufax import objectives
from mufax import pooling
from mufax import torch_resnet

_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Images per step.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 128, 'Height and width.')
_IMAGE_SIZES = flags.DEFINE_list(
    'image_sizes', None, 'Several heights and widths, timed in turn; '
    'overrides --image_size.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Steps per timed repetition.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed repetitions.')
_JSON = flags.DEFINE_string('json', None, 'Also write the results here.')
_DTYPE = flags.DEFINE_enum(
    'dtype', 'float32', ['float32', 'bfloat16'],
    'Compute dtype. bfloat16: mufax with model dtype bfloat16 (parameters '
    'float32), PyTorch under torch.autocast on CUDA; on CPU PyTorch is not '
    'timed in bfloat16.')
_TORCH_THREADS = flags.DEFINE_integer(
    'torch_threads', None, 'torch.set_num_threads; default: torch\'s own.')
_AUGMENTED = flags.DEFINE_bool(
    'augmented', True, 'Also time the mufax train step with augmentation.')
_LAYERS = flags.DEFINE_bool(
    'layers', False,
    'Instead, time each convolution of ResNet-18 (and its max pool) alone: '
    'XLA\'s native convolution, the formulations mufax.conv picks, PyTorch.')

NUM_OUTPUTS = 8
LEARNING_RATE = 0.01
MOMENTUM = 0.9


# ------------------------------------------------------------------ PyTorch


def torch_steps(images: np.ndarray, labels: np.ndarray, device: str,
                autocast: bool) -> tuple[Callable, Callable]:
  """(train_steps(n), eval_steps(n)), each running n steps and syncing."""
  model = torch_resnet.resnet18(num_classes=NUM_OUTPUTS).to(device)
  opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE,
                        momentum=MOMENTUM)
  x = torch.from_numpy(images.astype(np.float32) / 255).permute(0, 3, 1, 2)
  x = x.contiguous().to(device)
  y = torch.from_numpy(labels.astype(np.int64)).to(device)

  def context():
    return torch.autocast(device, dtype=torch.bfloat16, enabled=autocast)

  def sync():
    if device == 'cuda':
      torch.cuda.synchronize()

  def train_steps(n):
    model.train()
    for _ in range(n):
      opt.zero_grad(set_to_none=True)
      with context():
        loss = F.cross_entropy(model(x), y)
      loss.backward()
      opt.step()
    sync()

  def eval_steps(n):
    model.eval()
    with torch.inference_mode(), context():
      for _ in range(n):
        logits = model(x).float()
        losses = F.cross_entropy(logits, y, reduction='none')
    del losses
    sync()

  return train_steps, eval_steps


# -------------------------------------------------------------------- mufax


def mufax_steps(images: np.ndarray, labels: np.ndarray,
                dtype: jnp.dtype) -> tuple[dict[str, Callable], dict]:
  """Named callables running n steps of the mufax steps, and compile s.

  Steps are compiled ahead of time, so that compilation is timed apart.
  """
  cpu = jax.default_backend() == 'cpu'
  model = models.for_platform(
      models.ResNet18(num_outputs=NUM_OUTPUTS, dtype=dtype),
      jax.default_backend())
  tx = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
  image_size = images.shape[1]
  images, labels = jnp.asarray(images), jnp.asarray(labels)
  rng = jax.random.key(1)
  variables = models.init_variables(model, jax.random.key(0), image_size)
  compile_s = {}

  def compiled(name, step, *args):
    start = time.perf_counter()
    executable = step.lower(*args).compile()
    compile_s[name] = time.perf_counter() - start
    return executable

  def train_step(augment, state, images, labels, rng):
    step, params, batch_stats, opt_state = state
    images = input_pipeline.to_float(images)
    if augment:
      images = input_pipeline.augment(images, jax.random.fold_in(rng, step),
                                      ops_in_loop=cpu)

    def loss_fn(params):
      logits, new_stats = objectives.apply_model(model, params, batch_stats,
                                                 images, train=True)
      return (losses_lib.per_sample_loss(logits, labels, 'softmax').mean(),
              new_stats)

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (step + 1, optax.apply_updates(params, updates), batch_stats,
            opt_state), loss

  def train_runner(augment: bool, name: str):
    state = (jnp.zeros((), jnp.int32), variables['params'],
             variables['batch_stats'], tx.init(variables['params']))
    state = jax.tree.map(jnp.copy, state)  # donated: not the shared arrays
    step = compiled(name, jax.jit(functools.partial(train_step, augment),
                                  donate_argnums=0),
                    state, images, labels, rng)

    def run(n):
      nonlocal state
      for _ in range(n):
        state, loss = step(state, images, labels, rng)
      jax.block_until_ready((state, loss))

    return run

  runners = {'train': train_runner(False, 'train')}
  if _AUGMENTED.value:
    runners['train_augmented'] = train_runner(True, 'train_augmented')

  def eval_step(variables, images, labels):
    logits = model.apply(variables, input_pipeline.to_float(images),
                         train=False).astype(jnp.float32)
    return logits, optax.softmax_cross_entropy_with_integer_labels(logits,
                                                                   labels)

  step = compiled('eval', jax.jit(eval_step), variables, images, labels)

  def eval_run(n):
    for _ in range(n):
      out = step(variables, images, labels)
    jax.block_until_ready(out)

  runners['eval'] = eval_run
  return runners, compile_s


# ------------------------------------------------------------------- timing


def images_per_second(runs: dict[str, Callable], steps: int, repeats: int,
                      batch_size: int) -> dict[str, list[float]]:
  """img/s of each repetition of each run; repetitions interleave the runs,
  so that load from other processes falls on all of them alike."""
  for run in runs.values():
    run(1)  # warm-up: first-call allocations, caches, torch's lazy init
  rates = {name: [] for name in runs}
  for _ in range(repeats):
    for name, run in runs.items():
      start = time.perf_counter()
      run(steps)
      rates[name].append(steps * batch_size / (time.perf_counter() - start))
  return rates


# ------------------------------------------------------------ layer table


def resnet18_convs(image_size: int, batch_size: int):
  """(name, count, input shape, kernel shape, stride) of each convolution."""
  b = batch_size
  convs = [('conv1', 1, (b, image_size, image_size, 3), (7, 7, 3, 64), 2)]
  h = conv_formulations.output_size(  # + pool
      conv_formulations.output_size(image_size, 7, 2), 3, 2)
  cin = 64
  for i, cout in enumerate((64, 128, 256, 512), 1):
    if i > 1:
      convs += [(f'layer{i}_0/conv1', 1, (b, h, h, cin), (3, 3, cin, cout), 2),
                (f'layer{i}_0/downsample', 1, (b, h, h, cin),
                 (1, 1, cin, cout), 2)]
      h = conv_formulations.output_size(h, 3, 2)
    convs.append((f'layer{i} 3x3/1', 4 if i == 1 else 3, (b, h, h, cout),
                  (3, 3, cout, cout), 1))
    cin = cout
  return convs


def _median_ms(fn, repeats: int) -> float:
  fn()
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    seconds.append(time.perf_counter() - start)
  return 1e3 * statistics.median(seconds)


def _torch_layer_ms(x_shape, kernel_shape, stride, repeats):
  """(forward, backward) ms of torch's conv2d; backward: input and weight
  gradients (weight only for the 3-channel stem, as in training)."""
  b, h, w, cin = x_shape
  k, _, _, cout = kernel_shape
  layer = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
  x = torch.randn(b, cin, h, w, requires_grad=cin != 3)
  g = torch.randn_like(layer(x))

  def forward():
    with torch.no_grad():
      layer(x)

  def backward():
    y = layer(x)
    start = time.perf_counter()
    y.backward(g)
    return time.perf_counter() - start

  backward()
  return (_median_ms(forward, repeats),
          1e3 * statistics.median(backward() for _ in range(repeats)))


def _jax_layer_ms(x_shape, kernel_shape, stride, plan, repeats):
  """(forward, input gradient, kernel gradient) ms of the formulations."""
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], x_shape)
  kernel = jax.random.normal(keys[1], kernel_shape)
  g = jax.random.normal(keys[2], jax.eval_shape(
      lambda: conv.conv2d(x, kernel, stride, conv.ALL_NATIVE)).shape)
  fwd = jax.jit(lambda x, k: conv.FORWARD[plan.forward](x, k, stride))
  dx = jax.jit(lambda g, k: conv.INPUT_GRAD[plan.input_grad](
      g, k, stride, x_shape))
  dw = jax.jit(lambda x, g: conv.KERNEL_GRAD[plan.kernel_grad](
      x, g, stride, kernel_shape))
  times = [_median_ms(lambda: jax.block_until_ready(fwd(x, kernel)), repeats),
           _median_ms(lambda: jax.block_until_ready(dx(g, kernel)), repeats),
           _median_ms(lambda: jax.block_until_ready(dw(x, g)), repeats)]
  if x_shape[-1] == 3:
    times[1] = None  # the image needs no gradient
  return times


def _pool_ms(image_size: int, batch_size: int, repeats: int):
  """fwd+bwd ms of the max pool: flax's, mufax.pooling's and torch's."""
  h = conv_formulations.output_size(image_size, 7, 2)
  x = jax.nn.relu(jax.random.normal(jax.random.key(0), (batch_size, h, h, 64)))
  g = jnp.ones((batch_size, conv_formulations.output_size(h, 3, 2),
                conv_formulations.output_size(h, 3, 2), 64))

  def flax_pool(x):
    return flax.linen.max_pool(x, (3, 3), strides=(2, 2),
                               padding=((1, 1), (1, 1)))

  out = {}
  for name, pool in (('flax.linen.max_pool', flax_pool),
                     ('mufax.pooling.cpu_max_pool', pooling.cpu_max_pool)):
    step = jax.jit(lambda x, g, pool=pool: jax.vjp(pool, x)[1](g))
    out[name] = _median_ms(lambda: jax.block_until_ready(step(x, g)), repeats)
  return out


def layer_table(image_size: int, batch_size: int, repeats: int):
  """Per-convolution ms rows, and the max pool's."""
  convs = resnet18_convs(image_size, batch_size)
  # PyTorch first: XLA's worker threads, still spinning after a JAX call,
  # slow down PyTorch's next parallel region.
  torch_ms = [_torch_layer_ms(x, k, s, repeats) for _, _, x, k, s in convs]
  h = conv_formulations.output_size(image_size, 7, 2)
  x = torch.relu(torch.randn(batch_size, 64, h, h)).requires_grad_()

  def torch_pool():
    x.grad = None
    F.max_pool2d(x, 3, 2, 1).sum().backward()

  pool = {'torch': _median_ms(torch_pool, repeats)}
  rows = []
  for (name, count, x_shape, kernel_shape, stride), torch_times in zip(
      convs, torch_ms):
    plan = conv.cpu_formulations(x_shape, kernel_shape, stride)
    rows.append({
        'layer': name, 'count': count, 'input': x_shape,
        'kernel': kernel_shape, 'stride': stride, 'plan': plan._asdict(),
        'native_ms': _jax_layer_ms(x_shape, kernel_shape, stride,
                                   conv.ALL_NATIVE, repeats),
        'planned_ms': _jax_layer_ms(x_shape, kernel_shape, stride, plan,
                                    repeats),
        'pytorch_ms': torch_times})
  pool.update(_pool_ms(image_size, batch_size, repeats))
  return rows, pool


def print_layer_table(rows, pool):

  def ms(values):
    return '/'.join('  -  ' if v is None else f'{v:5.1f}' for v in values)

  print(f'{"layer":22s} {"n":>2s} {"map":>4s} {"native fwd/dx/dw":>18s}   '
        f'{"planned fwd/dx/dw":>18s} {"(formulations)":24s} '
        f'{"PyTorch fwd/bwd":>15s}')
  totals = {'native_ms': 0, 'planned_ms': 0, 'pytorch_ms': 0}
  for row in rows:
    for key in totals:
      totals[key] += row['count'] * sum(v for v in row[key] if v)
    formulations = '/'.join(row['plan'].values())
    print(f'{row["layer"]:22s} {row["count"]:2d} {row["input"][1]:4d} '
          f'{ms(row["native_ms"]):>18s}   {ms(row["planned_ms"]):>18s} '
          f'{formulations:24s} {ms(row["pytorch_ms"]):>15s}')
  print(f'{"all convolutions, ms":27s} {totals["native_ms"]:18.0f}   '
        f'{totals["planned_ms"]:18.0f} {"":24s} {totals["pytorch_ms"]:15.0f}')
  print('max pool fwd+bwd, ms: ' + ', '.join(f'{k} {v:.1f}'
                                            for k, v in pool.items()))
  return totals


# --------------------------------------------------------------------- main


def time_layers(size: int) -> dict:
  load_before = os.getloadavg()[0]
  rows, pool = layer_table(size, _BATCH_SIZE.value, _REPEATS.value)
  totals = print_layer_table(rows, pool)
  print(f'load average before/after: {load_before:.2f} / '
        f'{os.getloadavg()[0]:.2f}')
  return {'layers': rows, 'totals_ms': totals, 'max_pool_ms': pool,
          'image_size': size, 'batch_size': _BATCH_SIZE.value,
          'repeats': _REPEATS.value}


def time_steps(size: int) -> dict:
  """Both sides' steps at one image size; prints their table."""
  torch_device = 'cuda' if torch.cuda.is_available() else 'cpu'
  bf16 = _DTYPE.value == 'bfloat16'
  time_torch = not (bf16 and torch_device == 'cpu')

  b = _BATCH_SIZE.value
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
  labels = rng.integers(0, NUM_OUTPUTS, (b,), dtype=np.int32)

  load_before = os.getloadavg()[0]
  mufax_runs, compile_s = mufax_steps(
      images, labels, jnp.bfloat16 if bf16 else jnp.float32)
  runs = {f'mufax_{name}': run for name, run in mufax_runs.items()}
  if time_torch:
    torch_train, torch_eval = torch_steps(images, labels, torch_device,
                                          autocast=bf16)
    runs.update(pytorch_train=torch_train, pytorch_eval=torch_eval)
  rates = images_per_second(runs, _STEPS.value, _REPEATS.value, b)
  median = {name: statistics.median(r) for name, r in rates.items()}

  results = {}
  for name in mufax_runs:
    torch_rate = median.get(f'pytorch_{name.removesuffix("_augmented")}')
    results[name] = {
        'mufax_img_per_s': median[f'mufax_{name}'],
        'pytorch_img_per_s': torch_rate,
        'ratio': median[f'mufax_{name}'] / torch_rate if torch_rate else None,
        'mufax_augments': name == 'train_augmented',
    }
  results.update(
      compile_s=compile_s, image_size=size, batch_size=b,
      dtype=_DTYPE.value, steps=_STEPS.value, repeats=_REPEATS.value,
      repetitions_img_per_s=rates)

  print(f'ResNet-18, batch {b}, {size}x{size}, {_DTYPE.value}, jax '
        f'{jax.default_backend()}, torch {torch_device}')
  print(f'{"":16s} {"mufax img/s":>12s} {"PyTorch img/s":>14s} {"ratio":>6s}')
  for name in mufax_runs:
    row = results[name]
    torch_rate = row['pytorch_img_per_s']
    print(f'{name:16s} {row["mufax_img_per_s"]:12.1f} ' + (
        f'{torch_rate:14.1f} {row["ratio"]:6.2f}' if torch_rate else
        f'{"not timed":>14s}'))
  print('compile s: ' + ', '.join(f'{k} {v:.1f}'
                                  for k, v in compile_s.items()))
  # Other processes on the machine skew the figures, PyTorch's threads more
  # than XLA's.
  print(f'load average before/after: {load_before:.2f} / '
        f'{os.getloadavg()[0]:.2f}', flush=True)
  return results


def print_summary(by_size: dict[int, dict]) -> None:
  """mufax / PyTorch img/s and their ratio, every step at every size."""
  names = [n for n in ('train', 'train_augmented', 'eval')
           if n in next(iter(by_size.values()))]
  print(f'\n{"size":>5s} ' + ' '.join(f'{n + " img/s (mufax/PyTorch)":>34s} '
                                       f'{"ratio":>6s}' for n in names))
  for size, results in by_size.items():
    cells = []
    for name in names:
      row = results[name]
      torch_rate = row['pytorch_img_per_s']
      cells.append(f'{row["mufax_img_per_s"]:15.1f} / ' + (
          f'{torch_rate:15.1f} {row["ratio"]:6.2f}' if torch_rate else
          f'{"-":>15s} {"-":>6s}'))
    print(f'{size:5d} ' + ' '.join(cells))


def main(argv):
  del argv
  recorder = metadata.Recorder()
  if _TORCH_THREADS.value:
    torch.set_num_threads(_TORCH_THREADS.value)
  sizes = ([int(s) for s in _IMAGE_SIZES.value] if _IMAGE_SIZES.value
           else [_IMAGE_SIZE.value])
  timed = time_layers if _LAYERS.value else time_steps
  by_size = {}
  for size in sizes:
    by_size[size] = timed(size)
  if not _LAYERS.value and len(sizes) > 1:
    print_summary(by_size)
  if _JSON.value:
    recorder.write(_JSON.value, {
        'image_sizes': sizes,
        'by_image_size': {str(k): v for k, v in by_size.items()}})


if __name__ == '__main__':
  app.run(main)
