"""A run's results in its workdir: `results.json` (read back so that a
stopped run loses nothing), `results.md` and its Markdown tables, each row's
per-sample losses and the plots.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time

import jax
from jax.experimental import multihost_utils
import numpy as np

from mufax import cluster
from mufax import evaluation
from mufax import files
from mufax import plots
from mufax import published
from mufax import run_config
from mufax import unlearning
from mufax.evaluators import base as evaluator_base
from mufax.evaluators import intervals

# What a run writes to its workdir, besides checkpoints.
RESULT_FILES = ('results.json', 'results.md', 'losses',
                'loss_histograms.png', 'accuracy_vs_forgetting.png',
                'epsilon_distributions.png', 'accuracy_vs_forget_score.png',
                'examples', 'identities', 'least_forgotten', 'sweep',
                'requests')


def too_few_models(config) -> str | None:
  """The line that says F and the attack are left out, for populations of
  2..MIN_MODELS-1 models; None otherwise."""
  n = config.population.size
  if 1 < n < evaluator_base.MIN_MODELS:
    return (f'config.population.size={n}: F and the likelihood-ratio attack '
            f'need at least {evaluator_base.MIN_MODELS} models per row to '
            'mean anything (docs/evaluation.md §3); the table leaves them '
            'out.')
  return None


def save_losses(workdir: str, name: str, losses: dict[str, np.ndarray]):
  with files.replaced_atomically(
      os.path.join(workdir, 'losses', f'{name}.npz'), 'wb') as f:
    np.savez(f, **losses)


def comparable_config(config: dict) -> dict:
  """The settings that decide a row's result (not which rows to run)."""
  config = json.loads(json.dumps(config, default=str))
  # How steps are executed changes float rounding only.
  for key in ('methods', 'log_every_s', 'compilation_cache_dir', 'plugins',
              'checkpoint_every_s', 'engine', 'sweep', 'requests'):
    config.pop(key, None)
  for key in ('device_memory_gb', 'members_per_call'):
    config.get('population', {}).pop(key, None)
  # A hyperparameter set to its default changes no result.
  config['unlearn'] = unlearning.hparams_config(config.get('unlearn', {}))
  return config


def settings_digest(config) -> str:
  """Short hash of the settings that decide the results: a method's saved
  progress is only resumed under the settings it was made with."""
  return hashlib.sha256(json.dumps(comparable_config(config.to_dict()),
                                   sort_keys=True).encode()).hexdigest()[:10]


def previous_records(workdir: str, config) -> dict[str, dict]:
  """Rows of an earlier run in `workdir` with the same settings, by name."""
  path = os.path.join(workdir, 'results.json')
  saved = {}
  try:
    with open(path) as f:
      saved = json.load(f)
  except FileNotFoundError:
    pass
  except (OSError, json.JSONDecodeError):
    cluster.log(f'{path} is unreadable; its rows are computed again')
  # A row saved with other seeds than seeds_of gives it (by a version that
  # seeded it otherwise) is made again.
  done = {r['method']: r for r in saved.get('records', [])
          if r.get('seed') == run_config.seeds_of(config, r['method'])[0]
          and ('diverged' in r or os.path.exists(
              os.path.join(workdir, 'losses', f'{r["method"]}.npz')))}
  if jax.process_count() > 1:
    # Every process reads the same files before process 0 moves any.
    multihost_utils.sync_global_devices('mufax: previous results read')
  if saved and comparable_config(saved.get('config', {})) != comparable_config(
      config.to_dict()):
    # Made with other settings: kept aside, not overwritten.
    if jax.process_index() == 0:
      aside = os.path.join(workdir, 'previous',
                           time.strftime('%Y%m%d-%H%M%S'))
      os.makedirs(aside)
      for name in RESULT_FILES:
        if os.path.exists(os.path.join(workdir, name)):
          os.rename(os.path.join(workdir, name), os.path.join(aside, name))
      cluster.log(f'{workdir} held results of other settings; moved to '
                  f'{aside}')
    return {}
  return done


def write_results(workdir: str, records: list[dict], config,
                  extended=None) -> None:
  devices = f'{jax.device_count()} x {jax.devices()[0].device_kind}'
  with files.replaced_atomically(os.path.join(workdir, 'results.json')) as f:
    json.dump({'records': records, 'config': config.to_dict(),
               'devices': devices}, f, indent=1, default=str)
  with files.replaced_atomically(os.path.join(workdir, 'results.md')) as f:
    f.write(f'{config.data.dataset}, protocol {config.protocol}, seed '
            f'{config.seed}, λ = {config.lam}, {devices}\n\n'
            f'{format_table(records)}\n')
    if any(r.get('published') for r in records):
      f.write(f'\n"paper" columns: {published.SOURCE}\n')
    if any(r.get('members') for r in records):
      f.write('\nA row of several models shows their mean ± the half width '
              'of its 95% t-interval.\n')
    moved = format_moved(records)
    if moved:
      f.write(f'\n## How far each row moved from the original\n\n{moved}\n')
    if extended:
      f.write('\n## Against retraining (docs/evaluation.md)\n\n'
              f'{evaluation.format_table(extended)}\n\n{EXTENDED_LEGEND}\n')
      if too_few_models(config):
        f.write(f'\n{too_few_models(config)}\n')
      least = evaluation.format_least_forgotten(extended)
      if least:
        f.write('\n### The five least-forgotten people of each row\n\n'
                'Largest ε first (identity, ε, per-person attack accuracy, '
                f'forget images); all of them in identities/<row>.csv.\n\n'
                f'{least}\n')
    tuned = os.path.join(workdir, 'sweep', 'tuned.md')
    if os.path.exists(tuned):
      with open(tuned) as t:
        f.write(f'\n## Tuned (config.sweep)\n\n{t.read()}')
    served = os.path.join(workdir, 'requests', 'requests.md')
    if os.path.exists(served):
      with open(served) as t:
        f.write(f'\n## Deletion requests (config.requests)\n\n{t.read()}')


EXTENDED_LEGEND = (
    'F: forget score from per-example ε (1: indistinguishable from '
    'retraining; the oracle, a second retraining, is its ceiling); '
    'final_score: F × retain and test accuracy relative to retraining; '
    'lira_*: likelihood-ratio attack telling the row\'s models from '
    'retrained ones (accuracy 0.5, AUC 0.5: no better than chance), per '
    'example and per identity; tpr_at_X%_fpr: loss attack, forget against '
    'unseen, at the false-positive rate X that the unseen set can give (0%: '
    'no false positive at all); relative_*: cost over retraining\'s. '
    '± after F and the attack accuracies: half the width of a 95% bootstrap '
    'interval over the forget identities; after a per-model column: the 95% '
    't half width over the seeds.')


def write_plots(workdir: str, records: list[dict], config,
                extended=None) -> None:
  losses = {}
  for r in records:
    with np.load(os.path.join(workdir, 'losses', f'{r["method"]}.npz')) as z:
      losses[r['method']] = {'forget': z['forget'].ravel(),
                             'unseen': z['unseen'].ravel()}
  title = f'{config.data.dataset} ({config.protocol}, seed {config.seed})'
  plots.plot_loss_histograms(
      losses, os.path.join(workdir, 'loss_histograms.png'),
      mia={r['method']: r['mia'] for r in records}, title=title)
  paper = [{'method': r['method'], **r['published']} for r in records
           if r.get('published')]
  plots.plot_accuracy_vs_forgetting(
      records, os.path.join(workdir, 'accuracy_vs_forgetting.png'),
      lam=config.lam, published=paper or None, title=title)
  if extended:
    plots.plot_epsilon_distributions(
        {name: r['tables'] for name, r in extended.items()},
        os.path.join(workdir, 'epsilon_distributions.png'), title=title)
    plots.plot_accuracy_vs_forget_score(
        {name: r['scalars'] for name, r in extended.items()},
        os.path.join(workdir, 'accuracy_vs_forget_score.png'), title=title)


def format_moved(records: list[dict]) -> str:
  """A Markdown table of how far each unlearned row's models moved from
  their original (`metrics.parameter_change`, the mean over the members),
  so that a method that changed nothing says so; '' without any."""
  rows = [r for r in records if 'moved_from_original' in r]
  if not rows:
    return ''
  lines = ['| method | parameters changed | relative L2 distance | |',
           '|---|---|---|---|']
  for r in rows:
    moved = r['moved_from_original']
    lines.append(
        f'| {r["method"]} | {moved["changed_fraction"]:.2%} | '
        f'{moved["relative_l2"]:.4g} | '
        f'{"**no change**" if moved["changed_fraction"] == 0 else ""} |')
  return '\n'.join(lines)


def format_table(records: list[dict]) -> str:
  """The results as a Markdown table in the paper's layout, for people.

  Where protocol §7 publishes the row, its numbers follow ours ("paper").
  """
  has = lambda key: any(key in r for r in records)
  attributes = next((list(r['attribute_accuracies']) for r in records
                     if 'attribute_accuracies' in r), [])
  has_paper = any(r.get('published') for r in records)
  head = (['method', 'accuracy'] + (['top-2'] if has('top2_accuracy') else [])
          + attributes + ['MIA', 'forgetting', 'NoMUS', 'loss AUC', 'steps',
                          'seconds'])
  if has_paper:
    head += ['paper acc'] + (['paper top-2'] if has('top2_accuracy') else []) + [
        'paper forgetting', 'paper NoMUS']
  fmt = lambda v: '' if v is None else f'{v:.4f}'

  def measured(r, *path):
    # A population's mean ± the 95% t half width over its members.
    get = lambda d: functools.reduce(
        lambda d, k: None if d is None else d.get(k), path, d)
    if get(r) is None:
      return ''
    if not r.get('members'):
      return fmt(get(r))
    mean, half = intervals.t_interval([get(m) for m in r['members']])
    return f'{mean:.4f} ± {half:.4f}'

  rows = []
  for r in records:
    paper = r.get('published') or {}
    name = r['method'] + (f' (diverged at step {r["diverged"]["step"]})'
                          if 'diverged' in r else '')
    row = ([name, measured(r, 'accuracy')]
           + ([measured(r, 'top2_accuracy')] if has('top2_accuracy') else [])
           + [measured(r, 'attribute_accuracies', a) for a in attributes]
           + [measured(r, key) for key in ('mia', 'forgetting_score', 'nomus',
                                            'loss_auc')]
           + [str(r['update_steps']), f'{r["wall_seconds"]:.1f}'])
    if has_paper:
      row += ([fmt(paper.get('accuracy'))]
              + ([fmt(paper.get('top2_accuracy'))] if has('top2_accuracy')
                 else [])
              + [fmt(paper.get('forgetting_score')),
                 fmt(paper.get('nomus'))])
    rows.append(row)
  lines = ['| ' + ' | '.join(head) + ' |',
           '|' + '|'.join('---' for _ in head) + '|']
  return '\n'.join(lines + ['| ' + ' | '.join(r) + ' |' for r in rows])
