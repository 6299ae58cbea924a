"""Checkpoints in the workdir: the folder of each population, Orbax saves
and restores that name the folder when they fail, and a method's `Progress`
after each of its stages.
"""

from __future__ import annotations

import os
import re
import shutil

import jax
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
  """A checkpoint folder that cannot be resumed from; the message names it."""


def folder(config, workdir: str, kind: str, seeds: tuple[int, ...]) -> str:
  """One population per dataset, kind, protocol and seeds; methods share it."""
  name = re.sub(r'[^A-Za-z0-9]+', '-', config.data.dataset)
  which = (f'seed{seeds[0]}' if len(seeds) == 1
           else f'seeds{seeds[0]}-{seeds[-1]}')
  return os.path.join(workdir, 'checkpoints',
                      f'{name}-{kind}-{config.protocol}-{which}')


def open_manager(directory: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def restore(manager, checkpoint_dir: str, step: int, **items):
  """One item of checkpoint `step`; a folder that does not read back is
  refused with its name rather than a traceback."""
  (name, arg), = items.items()
  try:
    return manager.restore(step, args=ocp.args.Composite(**{name: arg}))[name]
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f'{checkpoint_dir}: the checkpoint of epoch {step} is corrupt or '
        f'unreadable ({type(e).__name__}: {str(e)[:200]}); delete that '
        'folder to train again.') from e


def save(manager, checkpoint_dir: str, step: int, *, wait: bool = False,
         **items) -> None:
  """Saves checkpoint `step` (waiting for it to be written if `wait`); a
  save the file system refuses (a full disk) is named with its folder."""
  try:
    if items:
      manager.save(step, args=ocp.args.Composite(**items))
    if wait or not items:
      manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f'{checkpoint_dir}: checkpoint {step} could not be written '
        f'({type(e).__name__}: {str(e)[:200]}); the ones before it '
        'are kept: free space, then run the same command again.') from e


class Progress:
  """A method's progress after each of its finished stages (the population's
  variables, its gradient measurements and the bookkeeping of its rows), so
  that a method killed inside resumes after its last finished stage rather
  than from zero."""

  def __init__(self, directory: str):
    self.directory = directory
    self._manager = None

  def _open(self) -> ocp.CheckpointManager:
    if self._manager is None:
      self._manager = open_manager(self.directory)
    return self._manager

  def restore(self) -> tuple[int, dict, dict] | None:
    """(stages finished, arrays, bookkeeping) of the last save, or None."""
    if not os.path.isdir(self.directory):
      return None
    manager = self._open()
    latest = manager.latest_step()
    if latest is None:
      return None
    meta = restore(manager, self.directory, latest,
                   meta=ocp.args.JsonRestore())
    # Measurements are params-shaped dicts, so the saved tree needs no
    # target; the arrays come back on the devices they were saved from.
    arrays = restore(manager, self.directory, latest,
                     arrays=ocp.args.StandardRestore())
    return latest, arrays, meta

  def save(self, finished: int, arrays: dict, meta: dict) -> None:
    save(self._open(), self.directory, finished, wait=True,
         arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta))

  def clear(self) -> None:
    """Forgets the progress once the method's rows are all written."""
    if self._manager is not None:
      self._manager.close()
      self._manager = None
    if jax.process_index() == 0:
      shutil.rmtree(self.directory, ignore_errors=True)
