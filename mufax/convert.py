r"""Turns a reference PyTorch checkpoint into an Orbax checkpoint of mufax.

  python -m mufax.convert --torch_checkpoint=FILE.pth --out=DIR

Accepts what the reference notebooks save (`torch.save(model.state_dict())`),
a whole pickled model, or a dict holding the state_dict under `state_dict` or
`model`. The architecture (stage sizes, width, outputs) is read off the keys
and shapes, and saved beside the variables (with the image size it was trained at) so
that `load` rebuilds the model; `--config.original.checkpoint=DIR` makes it
the original model of a run.
Needs torch, an optional dependency of this command only.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import app
from absl import flags

from mufax import models


def architecture(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """ResNet keyword arguments that fit a torchvision ResNet `state_dict`."""
  keys = [k.removeprefix('module.') for k in state_dict]
  blocks: dict[int, set[int]] = {}
  for key in keys:
    match = re.match(r'layer(\d+)\.(\d+)\.', key)
    if match:
      blocks.setdefault(int(match[1]), set()).add(int(match[2]))
  head = next((k for k in ('fc.weight', 'fc.fc.weight') if k in keys), None)
  if 'conv1.weight' not in keys or not blocks or head is None:
    raise ValueError('This is not a torchvision ResNet state_dict: it lacks '
                     'conv1.weight, layerN.M.* or fc(.fc).weight keys.')
  shape = lambda k: tuple(state_dict.get(k, state_dict.get('module.' + k)).shape)
  return {'stage_sizes': [len(blocks[i]) for i in sorted(blocks)],
          'num_filters': shape('conv1.weight')[0],
          'num_outputs': shape(head)[0]}


def read_torch_checkpoint(path: str) -> dict[str, Any]:
  """The state_dict (numpy values) stored in a `.pth` file."""
  import torch  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    raise FileNotFoundError(f'No checkpoint at {path}.')
  obj = torch.load(path, map_location='cpu', weights_only=False)
  if isinstance(obj, torch.nn.Module):
    obj = obj.state_dict()
  for key in ('state_dict', 'model', 'model_state_dict'):
    if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
      obj = obj[key]
  if not isinstance(obj, Mapping):
    raise ValueError(f'{path} holds a {type(obj).__name__}, not a state_dict.')
  return {k: v.detach().cpu().numpy() for k, v in obj.items()
          if hasattr(v, 'detach')}


def convert(state_dict: Mapping[str, Any]) -> tuple[dict, dict]:
  """(architecture, variables) of a torchvision ResNet `state_dict`."""
  arch = architecture(state_dict)
  model = models.ResNet(**arch)
  template = jax.eval_shape(
      lambda: models.init_variables(model, jax.random.key(0), 32))
  return arch, models.from_torch_state_dict(state_dict, template)


# The reference trains and evaluates on 128x128 images (protocol §2.3).
REFERENCE_IMAGE_SIZE = 128


def save(directory: str, arch: Mapping[str, Any], variables,
         source: str = '', image_size: int = REFERENCE_IMAGE_SIZE) -> None:
  with ocp.CheckpointManager(os.path.abspath(directory)) as manager:
    manager.save(0, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables),
        meta=ocp.args.JsonSave({'architecture': dict(arch),
                                'source': source,
                                'image_size': image_size})))
    manager.wait_until_finished()


def load(directory: str) -> tuple[models.ResNet, dict, int]:
  """The model, variables and training image size of a checkpoint written
  by `save`."""
  with ocp.CheckpointManager(os.path.abspath(directory)) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f'No converted checkpoint in {directory}.')
    restored = manager.restore(step, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(),
        meta=ocp.args.JsonRestore()))
  meta = restored['meta']
  arch = dict(meta['architecture'])
  arch['stage_sizes'] = tuple(arch['stage_sizes'])
  return (models.ResNet(**arch), restored['variables'],
          meta.get('image_size', REFERENCE_IMAGE_SIZE))


def main(argv):
  del argv
  args = flags.FLAGS
  try:
    state_dict = read_torch_checkpoint(args.torch_checkpoint)
    arch, variables = convert(state_dict)
  except ImportError:
    sys.exit('Converting needs torch: pip install torch')
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f'error: {e}')
  if os.path.exists(args.out) and os.listdir(args.out):
    sys.exit(f'error: {args.out} is not empty; choose a new folder.')
  save(args.out, arch, variables, source=os.path.abspath(
      args.torch_checkpoint), image_size=args.image_size)
  print(f'wrote {args.out}: ResNet {arch}')


if __name__ == '__main__':
  # The command's flags, defined only when it runs: run_main.py imports this
  # module and must not accept them.
  flags.DEFINE_string('torch_checkpoint', None,
                      'A .pth file saved by the reference code.')
  flags.DEFINE_string('out', None, 'Folder of the Orbax checkpoint.')
  flags.DEFINE_integer('image_size', REFERENCE_IMAGE_SIZE,
                       'The image size the model was trained at (the '
                       'reference: 128).')
  flags.mark_flags_as_required(['torch_checkpoint', 'out'])
  app.run(main)
