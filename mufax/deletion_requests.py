"""Deletion requests that keep coming (docs/protocol.md §10).

R requests, each a set of people of `train`, disjoint, arrive one after
another. Each method serves request r from the model it produced for request
r − 1 (`sequential`), and, as the baseline, all R at once from the original
(`batch`). After request r every model is scored against a population
retrained on `train` without the people of requests 1..r: accuracy, the
paper's MIA, and F and the attack for the people of request r and for those
of every earlier request (do they stay forgotten?); the cost is counted in
retrainings, cumulatively, and the break-even is the first request at which
the unlearning so far cost as much as one retraining from scratch.

Everything is written to `requests/requests.json` after every request; the
sequence's models are saved after every request, so a killed run resumes
between requests (and, through the method's own progress, inside one).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np

from mufax import checkpoints
from mufax import cluster
from mufax import files
from mufax import metrics
from mufax import plots
from mufax import sharding
from mufax import sweep
from mufax import unlearning
from mufax.evaluators import confidence
from mufax.evaluators import intervals

# Where request 1 comes from: the stored forget set, or drawn like the rest.
FIRST = ('forget', 'drawn')
# The scores kept per model and request (with their intervals).
KEPT = ('accuracy', 'accuracy_ci95', 'retain_accuracy', 'mia', 'mia_ci95',
        'nomus', 'F', 'F_ci95', 'attack', 'attack_ci95')

Splits = Mapping[str, Mapping[str, np.ndarray]]


def method_names(config) -> list[str]:
  """`config.requests.methods` as a list (`paper`: the paper's methods).

  Raises:
    ValueError: one line naming a method that cannot serve requests.
  """
  names = []
  for name in (m.strip() for m in config.requests.methods.split(',')):
    for n in ([m for m in unlearning.PAPER_TABLE if m in unlearning.METHODS
               and unlearning.METHODS[m].needs_original]
              if name == 'paper' else [name] if name else []):
      if n not in names:
        names.append(n)
  for name in names:
    method = unlearning.METHODS.get(name)
    if method is None or not method.needs_original:
      raise ValueError(f'config.requests.methods: {name}: '
                       + ('no such method.' if method is None else
                          'it does not start from a model, so it cannot '
                          'serve requests one after another.'))
  if not names:
    raise ValueError('config.requests.methods is empty: name methods or '
                     'paper.')
  return names


def check_config(config) -> None:
  """Raises ValueError (one line) for request settings that cannot work."""
  requests = config.requests
  if not requests.count >= 0:
    raise ValueError(f'config.requests.count={requests.count}: the number of '
                     'requests, at least 0 (0: none).')
  if requests.first not in FIRST:
    raise ValueError(f'config.requests.first={requests.first!r}: choose '
                     f'{" or ".join(FIRST)}.')
  if not requests.people >= 0:
    raise ValueError(f'config.requests.people={requests.people}: people per '
                     'request, at least 1 (0: as many as the forget set).')
  method_names(config)


def draw_requests(data: Splits, *, count: int, people: int, seed: int,
                  first: str, excluded: Sequence = ()) -> list[np.ndarray]:
  """The people of each of `count` requests, disjoint: with
  `first='forget'` request 1 is the forget set's people and the others are
  drawn from retain's other people; with `'drawn'` every request is drawn
  from train's people. A drawn request has `people` people (0: as many as
  the forget set); `excluded` (a sweep's rehearsal people) are never drawn.

  Raises:
    ValueError: when too few people are left to draw from and retrain on.
  """
  forget_people = np.unique(data['forget']['identity'])
  size = people or len(forget_people)
  if first == 'forget':
    chosen = [forget_people]
    pool = np.setdiff1d(np.unique(data['retain']['identity']), forget_people)
  else:
    chosen, pool = [], np.unique(data['train']['identity'])
  pool = np.setdiff1d(pool, np.asarray(excluded, pool.dtype))
  drawn = (count - len(chosen)) * size
  if drawn >= len(pool):
    raise ValueError(
        f'config.requests: {count} requests of {size} people need {drawn} '
        f'people besides {"the forget set" if chosen else "none"}, and '
        f'{len(pool)} are left to draw from'
        + (' (a sweep\'s rehearsal people excluded)' if len(excluded) else '')
        + ': ask for fewer, leaving people to retrain on.')
  order = np.random.default_rng(seed).permutation(pool)[:drawn]
  return chosen + [np.sort(order[k * size:(k + 1) * size])
                   for k in range(count - len(chosen))]


def _subset(split: Mapping[str, np.ndarray], mask: np.ndarray) -> dict:
  return {key: values[mask] for key, values in split.items()}


def _joined(parts: Sequence[Mapping[str, np.ndarray]]) -> dict:
  return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def request_splits(data: Splits, people: Sequence[np.ndarray],
                   first: str) -> list[dict]:
  """Each request's splits: `forget` its people's images, `retain` train
  without the people of requests 1..r, `earlier` the images of requests
  1..r−1 (absent for request 1); `train`, `test` and `unseen` as stored.
  Every request's splits hold as many images in all, so their engines
  compile the same programs. With `first='forget'` request 1 is the stored
  forget/retain split, the ordinary table's request (the paper's MUFAC cut
  leaves some images of its people in retain, protocol §2.1)."""
  if first == 'forget':
    gone, remaining = [dict(data['forget'])], data['retain']
  else:
    gone, remaining = [], data['train']
  out = []
  for r, request in enumerate(people):
    if r >= len(gone):
      leaving = np.isin(remaining['identity'], request)
      gone.append(_subset(remaining, leaving))
      remaining = _subset(remaining, ~leaving)
    splits = {'train': data['train'], 'retain': remaining,
              'forget': gone[r], 'test': data['test'],
              'unseen': data['unseen']}
    if r:
      splits['earlier'] = _joined(gone[:r])
    out.append(splits)
  return out


def batch_splits(last: Splits) -> dict:
  """The splits of every request at once: the last request's, its forget
  set joined with every earlier one."""
  out = {key: value for key, value in last.items() if key != 'earlier'}
  if 'earlier' in last:
    out['forget'] = _joined([last['earlier'], last['forget']])
  return out


def balanced_mia(forget_losses: np.ndarray,
                 unseen_losses: np.ndarray) -> dict[str, float]:
  """The paper's MIA of each member [members, examples] on as many unseen
  losses as forget losses (a fixed seeded draw): `mia_balanced`, with its
  interval over the members. The paper's attack keeps every unseen loss, so
  against a request much smaller than unseen it predicts "unseen" for all
  and scores the unseen share whatever the model."""
  count = forget_losses.shape[1]
  draw = np.random.default_rng(0).permutation(unseen_losses.shape[1])[:count]
  values = [metrics.membership_inference(f, u[draw])
            for f, u in zip(forget_losses, unseen_losses)]
  return {k.replace('mia', 'mia_balanced'): v for k, v in
          intervals.summarise({'mia': values}).items()}


def break_even(cumulative_costs: Sequence[float]) -> dict:
  """The first request at which the unlearning so far cost at least one
  retraining (None within these requests), and the request at which it
  would, at the mean cost per request so far."""
  reached = [r for r, c in enumerate(cumulative_costs, 1) if c >= 1.0]
  per_request = cumulative_costs[-1] / len(cumulative_costs)
  return {'request': reached[0] if reached else None,
          'projected': (math.ceil(1.0 / per_request) if per_request > 0
                        else None)}


@dataclasses.dataclass
class Requests:
  """The requests of one run; `run` writes requests.json and returns it."""
  config: object
  workdir: str
  ctx: unlearning.Context
  # The people of each request, and each request's `sweep.Request` (engine of
  # its splits, retrained population trained on its retain).
  people: list[np.ndarray]
  requests: list[sweep.Request]
  batch_engine: object
  evaluate: Callable
  # The run's original row, and `experiment.method_context` of a method.
  original: Callable
  method_context: Callable[[str], unlearning.Context]
  retrain_seeds: tuple[int, ...]
  settings: str

  def __post_init__(self):
    # Saved progress is resumed only for the same requests.
    self.settings += '-' + hashlib.sha256(json.dumps(
        [p.tolist() for p in self.people]).encode()).hexdigest()[:6]
    self.folder = os.path.join(self.workdir, 'requests')
    self.path = os.path.join(self.folder, 'requests.json')
    self.primary = jax.process_index() == 0

  def score(self, r: int, variables, seeds, moved_from) -> dict:
    """A population after request r (0-based): the request's scores, and F,
    the attack and the MIA of every earlier request's people."""
    request = self.requests[r]
    out, arrays = sweep.score(self.evaluate, request, variables, seeds,
                              moved_from)
    kept = {k: out[k] for k in KEPT if k in out}
    kept |= balanced_mia(arrays['forget'], arrays['unseen'])
    if 'moved_from_original' in out:
      kept['moved_from_original'] = out['moved_from_original']
    if not request.reference:
      kept['phi_forget'] = out['phi_forget']
    kept['earlier'] = []
    if not r:
      return kept
    phi, losses = self._earlier(request, variables)
    ids = request.engine.splits['earlier']['identity']
    for j in range(r):
      mine = np.isin(ids, self.people[j])
      entry = {'request': j + 1} | balanced_mia(losses[:, mine],
                                                  arrays['unseen'])
      if request.reference:
        entry |= sweep.forgetting(phi[:, mine], request.reference[
            'phi_earlier'][:, mine], ids[mine])
      kept['earlier'].append(entry)
    if request.reference:
      every = sweep.forgetting(phi, request.reference['phi_earlier'], ids)
      kept |= {f'earlier_{k}': v for k, v in every.items()}
    else:
      kept['phi_earlier'] = phi
    return kept

  def _earlier(self, request: sweep.Request, variables):
    engine = request.engine
    predicted = engine.predict(variables, 'earlier')
    return (confidence.phi(predicted['logits'],
                           engine.splits['earlier']['label'],
                           self.ctx.task.loss_kind), predicted['loss'])

  def prepare(self) -> list[dict]:
    """Trains (or reuses) each request's retrained population and scores it
    as its request's reference; returns their rows for requests.json."""
    rows = []
    for r, request in enumerate(self.requests):
      row = request.retrained()
      scores = self.score(r, row.variables, self.retrain_seeds, None)
      request.reference = scores | {'update_steps': row.update_steps}
      rows.append({'request': r + 1, 'update_steps': row.update_steps,
                   'seconds': row.seconds, **{
                       k: v for k, v in scores.items()
                       if not k.startswith('phi') and k != 'earlier'}})
    return rows

  def run(self) -> dict:
    state = self._load()
    state['retrain'] = self.prepare()
    original = self.original()
    if 'original' not in state:
      # A shared original is one model, of the first seed.
      seeds = self.ctx.seeds[:sharding.members(original.variables)]
      state['original'] = [
          self._entry(r, self.score(r, original.variables, seeds, None), 0,
                      0.0)
          for r in range(len(self.requests))]
    for name in method_names(self.config):
      entry = state['methods'].setdefault(name, {'sequential': []})
      if len(entry['sequential']) < len(self.requests):
        self._sequential(name, entry, state, original.variables)
      if 'batch' not in entry:
        entry['batch'] = self._batch(name, original.variables)
        self._write(state)
      costs = [e['cumulative_cost'] for e in entry['sequential']
               if 'cumulative_cost' in e]
      if costs:
        entry['break_even'] = break_even(costs)
    self._write(state)
    if self.primary:
      plots.plot_requests(state, os.path.join(self.folder, 'requests.png'))
      with files.replaced_atomically(
          os.path.join(self.folder, 'requests.md')) as f:
        f.write(format_requests(state) + '\n')
    return state

  def _entry(self, r: int, scores: dict, steps: int, cumulative: float,
             seconds: float = 0.0) -> dict:
    cost = steps / self.requests[r].reference['update_steps']
    return {'request': r + 1, 'people': len(self.people[r]),
            'update_steps': steps, 'seconds': seconds, 'cost': cost,
            'cumulative_cost': cumulative + cost, **scores}

  def _method_ctx(self, name: str, engine, progress: str):
    return dataclasses.replace(
        self.method_context(name), engine=engine, data=engine.splits,
        progress_dir=checkpoints.folder(
            self.config, self.folder, f'{name}-{progress}-{self.settings}',
            self.ctx.seeds))

  def _unlearn(self, name: str, engine, progress: str, variables):
    """The method's last row of unlearning `variables` on `engine`'s
    request."""
    method = unlearning.METHODS[name]
    *_, row = method.run(self._method_ctx(name, engine, progress), variables)
    return row

  def _sequential(self, name: str, entry: dict, state: dict,
                  original) -> None:
    """Serves the requests one after another, saving the models and the
    scores after each."""
    saved = checkpoints.Progress(checkpoints.folder(
        self.config, self.folder, f'{name}-sequence-{self.settings}',
        self.ctx.seeds))
    variables, done = original, 0
    entry['sequential'] = []
    restored = saved.restore()
    if restored:
      done, arrays, meta = restored
      variables, entry['sequential'] = arrays['variables'], meta['sequential']
      cluster.log(f'requests {name}: resuming after request {done}')
    for r in range(done, len(self.requests)):
      cluster.log(f'requests {name}: request {r + 1} of {len(self.requests)}'
                  f' ({len(self.people[r])} people)')
      row = self._unlearn(name, self.requests[r].engine, f'request{r + 1}',
                          variables)
      cumulative = (entry['sequential'][-1]['cumulative_cost']
                    if entry['sequential'] else 0.0)
      if row.diverged:
        entry['sequential'].append({'request': r + 1,
                                    'diverged': row.diverged})
        break
      variables = row.variables
      entry['sequential'].append(self._entry(
          r, self.score(r, variables, self.ctx.seeds, original),
          row.update_steps, cumulative, row.seconds))
      self._write(state)
      if r + 1 < len(self.requests):
        saved.save(r + 1, {'variables': variables},
                   {'sequential': entry['sequential']})
    entry['sequential'] += [{'request': r + 1, 'not_run': 'diverged before'}
                            for r in range(len(entry['sequential']),
                                           len(self.requests))]
    saved.clear()

  def _batch(self, name: str, original) -> dict:
    """Every request at once from the original, scored after the last."""
    last = len(self.requests) - 1
    cluster.log(f'requests {name}: every request at once (batch)')
    row = self._unlearn(name, self.batch_engine, 'batch', original)
    if row.diverged:
      return {'diverged': row.diverged}
    return self._entry(last, self.score(last, row.variables, self.ctx.seeds,
                                        original), row.update_steps, 0.0,
                       row.seconds)

  def _load(self) -> dict:
    fresh = {'settings': self.settings, 'seeds': list(self.ctx.seeds),
             'requests': [{'request': r + 1, 'people': p.tolist(),
                           'images': len(q.engine.splits['forget']['label'])}
                          for r, (p, q) in enumerate(zip(self.people,
                                                         self.requests))],
             'methods': {}}
    if os.path.exists(self.path):
      with open(self.path) as f:
        saved = json.load(f)
      if all(saved.get(k) == fresh[k] for k in ('settings', 'seeds',
                                                 'requests')):
        cluster.log(f'requests: resuming from {self.path}')
        return saved
      cluster.log(f'requests: {self.path} holds other requests; starting '
                  'again')
    return fresh

  def _write(self, state: dict) -> None:
    if self.primary:
      sweep.write_json(self.path, state)


def _value(entry: Mapping, key: str) -> str:
  if key not in entry:
    return ''
  half = entry.get(f'{key}_ci95')
  return (f'{entry[key]:.3f} ± {half:.3f}' if half is not None
          and np.isfinite(half) else f'{entry[key]:.3f}')


def _line(label: str, entry: Mapping) -> str:
  if 'diverged' in entry or 'not_run' in entry:
    return f'| {label} | ' + ('diverged' if 'diverged' in entry
                              else 'not run') + ' |' + ' |' * 8
  earlier = ' '.join(f'{e["F"]:.3f}' for e in entry.get('earlier', [])
                     if 'F' in e)
  return (f'| {label} | ' + ' | '.join(_value(entry, k) for k in (
      'accuracy', 'mia_balanced', 'F', 'attack', 'earlier_F',
      'earlier_attack'))
          + f' | {earlier} | {entry.get("cost", 0):.3g} | '
          f'{entry.get("cumulative_cost", 0):.3g} |')


HEADER = ('| request | accuracy | MIA (balanced) | F (newest) | '
          'attack (newest) | F (earlier) | attack (earlier) | F of requests '
          '1.. | cost × retraining | cumulative |\n|' + '---|' * 10)


def format_requests(state: Mapping) -> str:
  """The "Deletion requests" section: the references, then one table per
  method (rows: requests, then the batch baseline)."""
  parts = ['### Original and retrained models, per request\n\n'
           '| request | people | images | retrained accuracy | retrained MIA'
           ' (balanced) | original F (newest) | original F (earlier) |\n|'
           + '---|' * 7]
  for req, ref, orig in zip(state['requests'], state['retrain'],
                            state['original']):
    parts.append(f'| {req["request"]} | {len(req["people"])} | '
                 f'{req["images"]} | {_value(ref, "accuracy")} | '
                 f'{_value(ref, "mia_balanced")} | {_value(orig, "F")} | '
                 f'{_value(orig, "earlier_F")} |')
  for name, entry in state['methods'].items():
    even = entry.get('break_even') or {}
    parts.append(f'\n### {name}\n\n{HEADER}')
    parts += [_line(str(e['request']), e) for e in entry['sequential']]
    if 'batch' in entry:
      parts.append(_line(f'batch (1–{len(state["requests"])})',
                         entry['batch']))
    parts.append(
        '\nOne retraining costs as much as the unlearning so far '
        + (f'after request {even["request"]}' if even.get('request') else
           'within none of these requests')
        + (f'; at its mean cost per request, after request '
           f'{even["projected"]}.' if even.get('projected') else '.'))
  parts.append(LEGEND)
  return '\n'.join(parts)


LEGEND = (
    '\nEach method served the requests one after another, each from the '
    'model it made for the one before; batch served them all at once from '
    'the original. After request r, F and the attack are read against '
    'models retrained without the people of requests 1..r: for the newest '
    'request\'s people and, pooled and per request, for every earlier '
    'request\'s (1: indistinguishable from retraining). MIA (balanced): the '
    'paper\'s attack, the newest request against as many unseen images '
    '(a fixed draw; requests.json also keeps the paper\'s own, on every '
    'unseen image, which a small request leaves at the unseen share). '
    'Cost: update steps over those of that request\'s retraining. Every '
    'figure: requests/requests.json; '
    'plots: requests/requests.png (docs/protocol.md §10).')
