"""Hyperparameter sweeps as populations, chosen without peeking
(docs/protocol.md §9).

For each method of `config.sweep.methods`, K candidates (the defaults, then
seeded draws from the declared search ranges, or a grid) unlearn a rehearsal
request (`rehearsal`) from the run's originals, S seeds each
(`config.sweep.seeds`, at most the table's `config.population.size`, whose
originals they start from). Candidates that differ only in fields declared
`hparam(per_member=True)` (learning rates, which live in the optimizer
state, and values such as loss weights, temperatures or SSD's alpha and
lambda, which each member's stages carry in `Stage.values`) are members of
one program; those that differ in a field that shapes the program (epochs,
batch sizes, step counts, CF-k's trainable groups) run program by program.
Each criterion picks one candidate:

  nomus    NoMUS on the validation halves (no retraining needed);
  retrain  F × retain and test accuracy relative to retraining (the
           challenge's final score), against models retrained once per sweep
           without the rehearsal people;
  peek     the same score on the real request against the real retrained
           population: what a benchmark that tunes on its answer reports.

The chosen candidates then unlearn the real forget set, and their rows
(`<method>@<criterion>`) are scored on the held-out halves, with F and the
attack against the real retrained population. Everything is written to
`sweep/<method>.json` after every program, so a killed sweep resumes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from mufax import checkpoints
from mufax import cluster
from mufax import files
from mufax import plots
from mufax import search_spaces
from mufax import unlearning
from mufax.evaluators import epsilon
from mufax.evaluators import intervals
from mufax.evaluators import lira

CRITERIA = ('nomus', 'retrain', 'peek')
# What each criterion maximises, read from a candidate's scores.
SCORE_OF = {'nomus': 'nomus', 'retrain': 'final_score', 'peek': 'final_score'}
# Methods of `config.sweep.methods=all`: the paper's, with SSD, SalUn and
# random labels, whose defaults were tuned elsewhere.
SWEPT_BY_DEFAULT = ('finetune', 'cf_k', 'neggrad', 'unsir', 'advanced_neggrad',
                    'scrub', 'ssd', 'salun', 'random_labels')


def sweepable(name: str) -> str | None:
  """Why method `name` cannot be swept, or None."""
  method = unlearning.METHODS.get(name)
  if method is None:
    return 'no such method'
  if not isinstance(method, unlearning.SGDMethod):
    return 'it trains from scratch or has no stages'
  if not unlearning.search_spaces_of(method.Hparams):
    return 'none of its hyperparameters declares a search range'
  return None


def method_names(config) -> list[str]:
  """`config.sweep.methods` as a list (`all`: SWEPT_BY_DEFAULT; `extended`:
  every method that can be swept).

  Raises:
    ValueError: one line naming a method that cannot be swept.
  """
  names = []
  for name in (m.strip() for m in config.sweep.methods.split(',')):
    group = {'all': SWEPT_BY_DEFAULT, 'extended': tuple(
        n for n in unlearning.METHODS if not sweepable(n))}.get(name)
    for n in group or ((name,) if name else ()):
      if n not in names:
        names.append(n)
  for name in names:
    if sweepable(name):
      raise ValueError(f'config.sweep.methods: {name}: cannot be swept, '
                       f'{sweepable(name)}.')
  return names


def criteria_of(config) -> list[str]:
  """`config.sweep.criteria` as a list."""
  return [c.strip() for c in config.sweep.criteria.split(',') if c.strip()]


def check_config(config) -> None:
  """Raises ValueError (one line) for a sweep setting that cannot work."""
  sweep = config.sweep
  criteria = criteria_of(config)
  unknown = [c for c in criteria if c not in CRITERIA]
  if unknown or not criteria:
    raise ValueError(f'config.sweep.criteria={sweep.criteria!r}: choose from '
                     f'{", ".join(CRITERIA)}.')
  if sweep.search not in ('random', 'grid'):
    raise ValueError(f'config.sweep.search={sweep.search!r}: choose random or '
                     'grid.')
  if not sweep.candidates >= 1 or not sweep.grid_points >= 2:
    raise ValueError('config.sweep.candidates must be at least 1 and '
                     'config.sweep.grid_points at least 2.')
  if not 0 <= sweep.seeds <= config.population.size:
    raise ValueError(f'config.sweep.seeds={sweep.seeds}: seeds per candidate, '
                     'from 1 to config.population.size='
                     f'{config.population.size} (each unlearns from the '
                     'original of its seed; 0: all of them).')
  if (sweep.seeds or config.population.size) < 2 and set(criteria) - {
      'nomus'}:
    raise ValueError('config.sweep.criteria: retrain and peek read F, which '
                     'needs at least 2 seeds per candidate (8 to mean much): '
                     'raise config.sweep.seeds or config.population.size.')
  if not sweep.max_cost >= 0:
    raise ValueError(f'config.sweep.max_cost={sweep.max_cost}: a fraction of '
                     'retraining\'s update steps, at least 0 (0: no limit).')
  if not any(c != 'peek' for c in criteria):
    raise ValueError('config.sweep.criteria: peek alone chooses on the '
                     'answer; name nomus or retrain beside it.')
  method_names(config)


def candidates(name: str, config) -> list[dict[str, Any]]:
  """Method `name`'s candidates: its `config.unlearn` values first, then
  `candidates - 1` seeded draws from its search ranges (or, with
  `search=grid`, every point of a grid of `grid_points` per range)."""
  method = unlearning.METHODS[name]
  section = config.unlearn.get(name)
  base = {k: v for k, v in (section.to_dict() if section else {}).items()
          if v is not None}
  spaces = unlearning.search_spaces_of(method.Hparams)
  if config.sweep.search == 'grid':
    drawn = search_spaces.grid(spaces, config.sweep.grid_points)
  else:
    seed = config.sweep.seed + sum(map(ord, name))
    drawn = search_spaces.sample(spaces, config.sweep.candidates - 1, seed)
  return [base] + [base | d for d in drawn]


def programs(name: str, cands: list[dict]) -> list[list[int]]:
  """Candidates grouped into programs: those whose values agree except in
  `per_member` fields share one."""
  hparams_class = unlearning.METHODS[name].Hparams
  apart = unlearning.member_fields(hparams_class)
  groups: dict[str, list[int]] = {}
  for k, cand in enumerate(cands):
    values = dataclasses.asdict(hparams_class.from_overrides(cand))
    key = json.dumps({f: v for f, v in values.items() if f not in apart},
                     sort_keys=True, default=str)
    groups.setdefault(key, []).append(k)
  return list(groups.values())


def update_steps(method, ctx: unlearning.Context, cand: dict) -> int:
  """A candidate's update steps per model (its stages' planned steps)."""
  one = dataclasses.replace(ctx, hparams=cand, member_hparams=None)
  return sum(len(s.plan) for s in method.stages(one.member(0)))


@dataclasses.dataclass
class Request:
  """One request's engine (its splits), the population retrained without
  its people, and that population's scores."""
  name: str
  engine: Any
  retrained: Any
  reference: dict = dataclasses.field(default_factory=dict)


def forgetting(phi_forget: np.ndarray, retrained_phi: np.ndarray,
               identities: np.ndarray) -> dict[str, float]:
  """F and the attack's accuracy of a population's forget φ against the
  retrained population's, each with the half width of its bootstrap interval
  over people."""
  eps = epsilon.epsilons(phi_forget, retrained_phi)
  worth = epsilon.earnings(eps, phi_forget.shape[0])
  attack = lira.lira(phi_forget, retrained_phi).accuracy
  return {'F': float(worth.mean()),
          'F_ci95': intervals.bootstrap_half_width(worth, identities),
          'attack': float(attack.mean()),
          'attack_ci95': intervals.bootstrap_half_width(attack, identities)}


def score(evaluate: Callable, request: Request, variables, seeds,
          moved_from) -> tuple[dict, dict]:
  """Protocol §6 of a population on the request's splits (`evaluate`:
  `experiment.evaluate_model`), and, once the request has its reference, F,
  the attack and the final score against its retrained population; returns
  (the scores with `phi_forget`, the evaluation's arrays)."""
  record, arrays = evaluate(variables, engine=request.engine, seeds=seeds,
                            original=moved_from)
  members = record.get('members') or [record]
  out = intervals.summarise({
      key: [m[key] for m in members]
      for key in ('accuracy', 'retain_accuracy', 'mia', 'nomus')})
  out['phi_forget'] = arrays['phi_forget']
  if 'moved_from_original' in record:
    out['moved_from_original'] = record['moved_from_original']
  if request.reference:
    ref = request.reference
    # Candidates of fewer seeds than the table's meet as many retrained
    # models.
    out |= forgetting(arrays['phi_forget'],
                      ref['phi_forget'][:len(arrays['phi_forget'])],
                      request.engine.splits['forget']['identity'])
    out['final_score'] = epsilon.final_score(
        out['F'], out['retain_accuracy'], ref['retain_accuracy'],
        out['accuracy'], ref['accuracy'])
  return out, arrays


class Sweep:
  """The sweep of one run; `run` returns the rows of the chosen
  candidates."""

  def __init__(self, config, workdir: str, ctx: unlearning.Context, *,
               evaluate: Callable, original: Callable, requests: dict,
               retrain_seeds: tuple[int, ...], settings: str):
    """`ctx`: the run's context (its seeds: each candidate's); `evaluate`:
    protocol §6 of a population on an engine (`experiment.evaluate_model`);
    `original`: the run's original row; `requests`: {'rehearsal', 'real'}
    `Request`s, whose `retrained` make their retrained populations (seeds
    `retrain_seeds`); `settings`: the digest of the settings that decide
    the results (`results.settings_digest`), under which saved candidates
    are resumed."""
    self.config, self.ctx, self.evaluate = config, ctx, evaluate
    self.original, self.retrain_seeds = original, retrain_seeds
    self.settings = settings
    self.requests = requests  # {'rehearsal': Request, 'real': Request}
    self.folder = os.path.join(workdir, 'sweep')
    self.criteria = criteria_of(config)
    # Each candidate's seeds: the first S of the run's (all with S = 0).
    self.seeds = ctx.seeds[:config.sweep.seeds or None]
    # Only process 0 writes; every process runs the programs.
    self.primary = jax.process_index() == 0

  def score(self, request: Request, variables, seeds, moved_from) -> dict:
    return score(self.evaluate, request, variables, seeds, moved_from)[0]

  def prepare(self) -> None:
    """Scores each request's retrained population (its own reference)."""
    for request in self.requests.values():
      if not request.reference:
        row = request.retrained()
        request.reference = self.score(request, row.variables,
                                       self.retrain_seeds, None)
        request.reference['update_steps'] = row.update_steps

  def run(self) -> list[dict]:
    self.prepare()
    rows = []
    for name in method_names(self.config):
      rows += self.run_method(name)
    if self.primary:
      write_tuned(self.folder, rows, self.requests)
      write_json(os.path.join(self.folder, 'tuned.json'), {'rows': rows})
    return rows

  def run_method(self, name: str) -> list[dict]:
    """Sweeps one method; returns its chosen rows."""
    method = unlearning.METHODS[name]
    cands = candidates(name, self.config)
    path = os.path.join(self.folder, f'{name}.json')
    state = self._load(path, cands)
    retrain_steps = self.requests['real'].reference['update_steps']
    for k, cand in enumerate(cands):
      entry = state['candidates'][k]
      entry.setdefault('cost', update_steps(method, self.ctx, cand)
                       / retrain_steps)
      if self.config.sweep.max_cost and entry['cost'] > self.config.sweep.max_cost:
        entry['skipped'] = (f'cost {entry["cost"]:.3g} x retraining is over '
                            f'config.sweep.max_cost={self.config.sweep.max_cost}')
    self._run_candidates(name, cands, state, 'rehearsal', path,
                         lambda e: True)
    chosen = {c: self._choose(state, 'rehearsal', c)
              for c in self.criteria if c != 'peek'}
    wanted = (lambda e: True) if 'peek' in self.criteria else (
        lambda e: e['index'] in chosen.values())
    self._run_candidates(name, cands, state, 'real', path, wanted)
    if 'peek' in self.criteria:
      chosen['peek'] = self._choose(state, 'real', 'peek')
    state['chosen'] = chosen
    if self.primary:
      write_json(path, state)
      plots.plot_sweep(state, self.requests['rehearsal'].reference,
                       os.path.join(self.folder, f'{name}.png'))
    return [self._row(name, criterion, state['candidates'][k])
            for criterion, k in chosen.items() if k is not None]

  def _load(self, path: str, cands: list[dict]) -> dict:
    """What an earlier run of the same candidates left, or a fresh state."""
    fresh = {'candidates': [{'index': k, 'hparams': c}
                            for k, c in enumerate(cands)],
             'seeds': list(self.seeds),
             'settings': self.settings}
    if os.path.exists(path):
      with open(path) as f:
        saved = json.load(f)
      if ([c['hparams'] for c in saved['candidates']]
          == json.loads(json.dumps(cands))
          and saved.get('settings') == fresh['settings']
          and saved['seeds'] == fresh['seeds']):
        cluster.log(f'sweep: resuming from {path}')
        return saved
      cluster.log(f'sweep: {path} holds other candidates; starting again')
    return fresh

  def _run_candidates(self, name, cands, state, request_name, path, wanted):
    """Runs, program by program, the candidates not yet scored on the
    request, and saves the state after each program."""
    request = self.requests[request_name]
    entries = state['candidates']
    todo = [k for k in range(len(cands)) if wanted(entries[k])
            and request_name not in entries[k] and 'skipped' not in entries[k]]
    for group in programs(name, [cands[k] for k in todo]):
      members = [todo[i] for i in group]
      cluster.log(f'sweep {name} ({request_name}): candidates '
                  f'{", ".join(map(str, members))} in one program')
      for k, scores in self._run_program(name, cands, members, request):
        entries[k][request_name] = scores
      if self.primary:
        write_json(path, state)

  def _run_program(self, name, cands, members, request):
    method = unlearning.METHODS[name]
    seeds = self.seeds
    # The original of each candidate seed (a shared original, repeated).
    original = jax.tree.map(
        lambda x: np.asarray(x)[np.minimum(np.arange(len(seeds)),
                                           len(x) - 1)],
        self.original().variables)
    tiled = jax.tree.map(lambda x: np.concatenate(
        [np.asarray(x)] * len(members)), original)
    ctx = dataclasses.replace(
        self.ctx, engine=request.engine, data=request.engine.splits,
        seeds=tuple(seeds) * len(members),
        member_hparams=tuple(cands[k] for k in members for _ in seeds),
        progress_dir=checkpoints.folder(
            self.config, self.folder,
            f'{name}-{request.name}-{"-".join(map(str, members))}', seeds))
    *_, row = method.run(ctx, tiled)
    for i, k in enumerate(members):
      if row.diverged:
        yield k, {'diverged': row.diverged}
        continue
      part = jax.tree.map(
          lambda x, i=i: np.asarray(x)[i * len(seeds):(i + 1) * len(seeds)],
          row.variables)
      scores = self.score(request, part, seeds, original)
      del scores['phi_forget']
      yield k, scores

  def _choose(self, state, request_name: str, criterion: str) -> int | None:
    """The candidate of highest score on the request (the first of equals:
    the defaults win ties); None when none was scored."""
    key = SCORE_OF[criterion]
    scored = [(e[request_name][key], -e['index'])
              for e in state['candidates']
              if key in e.get(request_name, {})
              and np.isfinite(e[request_name][key])]
    return -max(scored)[1] if scored else None

  def _row(self, name: str, criterion: str, entry: dict) -> dict:
    real = entry['real']
    return {'row': f'{name}@{criterion}', 'method': name,
            'criterion': criterion, 'candidate': entry['index'],
            'hparams': entry['hparams'], 'cost': entry['cost'], **real}


def write_json(path: str, state: dict) -> None:
  with files.replaced_atomically(path) as f:
    json.dump(state, f, indent=1, default=float)


def format_tuned(rows: list[dict], requests: Mapping[str, Request]) -> str:
  """The "Tuned" table: per method and criterion, the chosen
  hyperparameters and their scores on the held-out halves."""
  real = requests['real'].reference
  lines = ['| row | chosen | accuracy | MIA | NoMUS | F | attack | '
           'cost × retraining | moved |', '|' + '---|' * 9]
  value = lambda r, k: (f'{r[k]:.4f} ± {r[k + "_ci95"]:.4f}'
                        if np.isfinite(r.get(k + '_ci95', np.nan))
                        else f'{r[k]:.4f}')
  lines.append(f'| retrain | | {value(real, "accuracy")} | '
               f'{value(real, "mia")} | {value(real, "nomus")} | | | 1 | |')
  for row in rows:
    moved = row.get('moved_from_original')
    chosen = ', '.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}'
                       for k, v in row['hparams'].items()) or 'defaults'
    lines.append(
        f'| {row["row"]}' + (' (peeks)' if row['criterion'] == 'peek' else '')
        + f' | {chosen} | ' + ' | '.join(value(row, k) for k in (
            'accuracy', 'mia', 'nomus', 'F', 'attack'))
        + f' | {row["cost"]:.3g} | '
        + (f'{moved["changed_fraction"]:.3f} / {moved["relative_l2"]:.2g}'
           if moved else '') + ' |')
  return '\n'.join(lines)


TUNED_LEGEND = (
    'Each method\'s hyperparameters chosen on a rehearsal request (people of '
    'retain, never the forget set) by NoMUS on the validation halves '
    '(`@nomus`) or by F × relative accuracy against models retrained '
    'without the rehearsal people (`@retrain`); `@peek` chose on the real '
    'forget set against the real retrained models, as benchmarks that tune '
    'on their answer do. Every row is scored on the held-out halves of test '
    'and unseen, F and the attack against the real retrained population; '
    'mean ± 95% interval (t over seeds; bootstrap over people for F and the '
    'attack); moved: fraction of parameter elements changed / relative L2 '
    'distance from the original. Every candidate: '
    'sweep/<method>.json and sweep/<method>.png (docs/protocol.md §9).')


def write_tuned(folder: str, rows: list[dict],
                requests: Mapping[str, Request]) -> None:
  with files.replaced_atomically(os.path.join(folder, 'tuned.md')) as f:
    f.write(f'{format_tuned(rows, requests)}\n\n{TUNED_LEGEND}\n')
