"""Result plots of an experiment, written as PNG files.

Only matplotlib's object-oriented API is used (a `Figure` saved by its own
canvas, never pyplot), so plotting keeps no global state and needs no
display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math

from matplotlib.figure import Figure
import numpy as np

from mufax import files
from mufax import metrics
from mufax.evaluators import epsilon

_DPI = 120
_BINS = 40
_CLIP_QUANTILE = 0.995
_COLUMNS = 3
_LABEL_OFFSETS = ((4, 3), (4, -3), (-4, 3), (-4, -3))
_NOMUS_LEVELS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _save(fig: Figure, path: str) -> None:
  """Writes `fig` as a PNG to `path`, creating its folder if needed."""
  with files.replaced_atomically(path, 'wb') as f:
    fig.savefig(f, dpi=_DPI, format='png')


def _log1p_finite(losses) -> np.ndarray:
  """log(1 + loss) of the finite values of `losses`, flattened.

  Infinite or NaN losses cannot be placed on an axis, so they are left out.
  """
  x = np.log1p(np.asarray(losses, dtype=np.float64).ravel())
  return x[np.isfinite(x)]


def _label(ax, i: int, text: str, x: float, y: float) -> None:
  """Writes `text` beside point `i` at (x, y), on a side that turns with `i`:
  rows that barely change the model sit on top of each other, and turning
  each label to another side of its point keeps most of them readable."""
  dx, dy = _LABEL_OFFSETS[i % len(_LABEL_OFFSETS)]
  ax.annotate(text, (x, y), xytext=(dx, dy), textcoords='offset points',
              fontsize=7, ha='left' if dx > 0 else 'right',
              va='bottom' if dy > 0 else 'top')


def plot_loss_histograms(losses: Mapping[str, Mapping[str, np.ndarray]],
                         path: str, *, mia: Mapping[str, float] | None = None,
                         title: str = '') -> None:
  """Per-method histograms of forget vs unseen losses, the MIA's only input.

  Where the two histograms coincide the attack is at chance; where forget
  losses sit lower the model still remembers the forget set.

  Args:
    losses: `losses[method]['forget']` and `losses[method]['unseen']` are
      per-sample losses; one panel per method, in the mapping's order. Empty
      or constant arrays are drawn as far as they can be.
    path: where to write the PNG.
    mia: MIA score M per method, shown in the panel titles when given.
    title: title of the whole figure.

  Raises:
    ValueError: if `losses` has no methods.
  """
  if not losses:
    raise ValueError('plot_loss_histograms got no methods to plot.')
  columns = min(_COLUMNS, len(losses))
  rows = math.ceil(len(losses) / columns)
  fig = Figure(figsize=(4.2 * columns, 3.2 * rows), layout='constrained')
  for i, (method, per_split) in enumerate(losses.items()):
    ax = fig.add_subplot(rows, columns, i + 1)
    forget = _log1p_finite(per_split['forget'])
    unseen = _log1p_finite(per_split['unseen'])
    panel_title = method
    if mia is not None and method in mia:
      panel_title += f'  MIA {mia[method]:.4f}'
    ax.set_title(panel_title, fontsize=10)
    ax.set_xlabel(f'log(1 + per-sample loss), top {1 - _CLIP_QUANTILE:.1%} '
                  'in the last bin')
    ax.set_ylabel('density')
    both = np.concatenate((forget, unseen))
    if not both.size:
      ax.text(0.5, 0.5, 'no finite losses', ha='center', va='center',
              transform=ax.transAxes)
      continue
    # After gradient ascent a few losses can be orders of magnitude above the
    # rest; even after log1p they would squash the bulk into a few bins, so
    # the top of the range is piled into the last bin instead.
    top = np.quantile(both, _CLIP_QUANTILE)
    # Shared bins, so that the two densities are comparable bar by bar; numpy
    # widens a zero-width range (constant losses) to one unit.
    bins = np.histogram_bin_edges(np.minimum(both, top), bins=_BINS)
    for name, values, color in (('forget', forget, 'tab:red'),
                                ('unseen', unseen, 'tab:blue')):
      # A density of no samples is 0/0; such a split gets no bars.
      if values.size:
        ax.hist(np.minimum(values, top), bins=bins, density=True,
                histtype='stepfilled', alpha=0.45, color=color,
                label=f'{name} (n={values.size})')
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  _save(fig, path)


def plot_accuracy_vs_forgetting(records: Sequence[Mapping], path: str, *,
                                lam: float,
                                published: Sequence[Mapping] | None = None,
                                title: str = '') -> None:
  """Test accuracy against forgetting score, over lines of equal NoMUS.

  NoMUS = λ·accuracy + (1 − λ)·(1 − 2·forgetting) is linear in both, so its
  level sets are straight lines: a method beats another in NoMUS exactly when
  it lies on a higher line, whichever of the two metrics it gains on.

  Args:
    records: one mapping per point, with `method`, `accuracy` and
      `forgetting_score` (other keys, e.g. `nomus`, are not read); drawn
      filled and labelled with the method.
    path: where to write the PNG.
    lam: the λ of NoMUS whose level lines are drawn, in [0, 1].
    published: points of the same form from the reference (see
      mufax.published), drawn hollow and labelled `<method> (paper)`.
    title: title of the figure.

  Raises:
    ValueError: if `lam` is not a finite number in [0, 1].
  """
  lam_v = metrics.nomus_lambda(lam)
  fig = Figure(figsize=(7.0, 5.5), layout='constrained')
  ax = fig.add_subplot()
  forgetting, accuracy = np.meshgrid(np.linspace(0.0, 0.5, 101),
                                     np.linspace(0.0, 1.0, 101))
  score = lam_v * accuracy + (1.0 - lam_v) * (1.0 - 2.0 * forgetting)
  lines = ax.contour(forgetting, accuracy, score, levels=_NOMUS_LEVELS,
                     colors='0.6', linewidths=0.8, linestyles='dashed')
  ax.clabel(lines, fmt='NoMUS %.1f', fontsize=7)
  for points, suffix, style in (
      (records, '', dict(color='tab:blue', label='this experiment')),
      (published or (), ' (paper)',
       dict(facecolors='none', edgecolors='black',
            label='published (protocol §7)'))):
    if not points:
      continue
    xs = [float(p['forgetting_score']) for p in points]
    ys = [float(p['accuracy']) for p in points]
    ax.scatter(xs, ys, s=36, zorder=3, **style)
    for i, (p, x, y) in enumerate(zip(points, xs, ys, strict=True)):
      _label(ax, i, f'{p["method"]}{suffix}', x, y)
  if records or published:
    ax.legend(loc='best', fontsize=8)
  # A small margin keeps points at 0 forgetting or perfect accuracy visible.
  ax.set_xlim(-0.01, 0.51)
  ax.set_ylim(-0.02, 1.02)
  ax.set_xlabel('forgetting score |M − 0.5|  (lower is better)')
  ax.set_ylabel('test accuracy  (higher is better)')
  ax.set_title(f'dashed: NoMUS at λ = {lam_v:g} (higher is better, towards '
               'the top left)', fontsize=9)
  if title:
    fig.suptitle(title)
  _save(fig, path)


def plot_epsilon_distributions(tables: Mapping[str, Mapping[str, Sequence]],
                               path: str, *, reference: str = 'oracle',
                               title: str = '') -> None:
  """Per row, histograms of per-example and per-identity ε beside the
  `reference` row's (docs/evaluation.md §3, §5).

  Args:
    tables: row -> {'examples': [{'epsilon': ...}], 'identities': [...]}, the
      evaluators' tables; rows without either are left out.
    path: where to write the PNG.
    reference: the row drawn in every panel for comparison (the oracle: how
      a second retraining scores).
    title: title of the figure.
  """
  levels = [level for level in ('examples', 'identities')
            if any(t.get(level) for t in tables.values())]
  rows = [name for name, t in tables.items()
          if name != reference and any(t.get(level) for level in levels)]
  if not rows:
    return
  eps = lambda name, level: np.array(
      [line['epsilon'] for line in tables.get(name, {}).get(level) or ()],
      dtype=np.float64)
  fig = Figure(figsize=(4.0 * len(levels), 1.9 * len(rows) + 0.8),
               layout='constrained')
  axes = fig.subplots(len(rows), len(levels), squeeze=False, sharex='col')
  for j, level in enumerate(levels):
    # Capped ε (told apart by a perfect rule) would stretch the axis far
    # beyond the rest: they are counted in the panel's corner instead.
    everything = np.concatenate([eps(n, level) for n in rows + [reference]])
    finite = everything[everything < epsilon.EPSILON_CAP]
    bins = np.linspace(0.0, max(1.0, float(finite.max(initial=0.0))),
                       _BINS + 1)
    for i, name in enumerate(rows):
      ax = axes[i, j]
      mine, theirs = eps(name, level), eps(reference, level)
      ax.hist(mine[mine < epsilon.EPSILON_CAP], bins=bins, color='tab:blue',
              alpha=0.6, label=name)
      if len(theirs):
        ax.hist(theirs[theirs < epsilon.EPSILON_CAP], bins=bins,
                histtype='step', color='black', label=reference)
      capped = np.sum(mine >= epsilon.EPSILON_CAP)
      ax.text(0.98, 0.95, f'ε = {epsilon.EPSILON_CAP:g} (cap): {capped} of '
              f'{len(mine)}' + (f'; {reference} '
                                f'{np.sum(theirs >= epsilon.EPSILON_CAP)}'
                                if len(theirs) else ''),
              transform=ax.transAxes, ha='right', va='top', fontsize=7)
      ax.set_ylabel(name, fontsize=8)
      ax.tick_params(labelsize=7)
      if i == 0:
        ax.set_title(f'ε per {level[:-1] if level == "examples" else "identity"}'
                     ' (lower: closer to retraining)', fontsize=8)
        ax.legend(fontsize=7, loc='center right')
    axes[-1, j].set_xlabel('ε', fontsize=8)
  if title:
    fig.suptitle(title)
  _save(fig, path)


def plot_accuracy_vs_forget_score(scalars: Mapping[str, Mapping[str, float]],
                                  path: str, *, title: str = '') -> None:
  """Test accuracy (mean ± 95% interval over seeds) against the forget
  score F (± its bootstrap interval over identities), one point per row that
  has both.

  Args:
    scalars: row -> its evaluation scalars (`F`, `F_ci95`, `test_accuracy`
      and `test_accuracy_ci95`).
    path: where to write the PNG.
    title: title of the figure.
  """
  points = {name: s for name, s in scalars.items()
            if 'F' in s and 'test_accuracy' in s}
  if not points:
    return
  fig = Figure(figsize=(7.0, 5.5), layout='constrained')
  ax = fig.add_subplot()
  for i, (name, s) in enumerate(points.items()):
    half = s.get('test_accuracy_ci95', math.nan)
    f_half = s.get('F_ci95', math.nan)
    ax.errorbar(s['F'], s['test_accuracy'],
                yerr=half if np.isfinite(half) else None,
                xerr=f_half if np.isfinite(f_half) else None, fmt='o',
                capsize=3, color='black' if name == 'oracle' else 'tab:blue')
    _label(ax, i, name, s['F'], s['test_accuracy'])
  ax.set_xlim(-0.02, 1.02)
  ax.set_xlabel('forget score F against retraining, ± 95% bootstrap interval '
                '(higher is better)')
  ax.set_ylabel('test accuracy, mean ± 95% interval  (higher is better)')
  if title:
    fig.suptitle(title)
  _save(fig, path)


# Marker of each criterion's choice in a sweep's plot.
_CRITERION_MARKERS = {'nomus': ('s', 'tab:green'), 'retrain': ('D', 'tab:red'),
                      'peek': ('x', 'black')}


def plot_sweep(state: Mapping, retrained: Mapping, path: str) -> None:
  """A method's sweep: every candidate's validation accuracy against its
  MIA (left; retraining's point beside them) and against F (right), the
  candidate each criterion chose marked.

  Args:
    state: a `sweep/<method>.json` (candidates scored on `rehearsal`, and
      `chosen` {criterion: candidate index}).
    retrained: the rehearsal request's retrained population's scores
      (`accuracy`, `mia`).
    path: where to write the PNG.
  """
  scored = [c for c in state['candidates'] if 'accuracy' in c.get(
      'rehearsal', {})]
  fig = Figure(figsize=(10.0, 4.5), layout='constrained')
  for ax, key, label in zip(fig.subplots(1, 2), ('mia', 'F'), (
      'MIA on the rehearsal request (retraining\'s is the target)',
      'F against retraining (higher is better)')):
    points = [(c['rehearsal'][key], c['rehearsal']['accuracy'], c['index'])
              for c in scored if key in c['rehearsal']]
    if points:
      ax.scatter([p[0] for p in points], [p[1] for p in points], s=20,
                 color='tab:blue', label='candidates')
    for criterion, k in state.get('chosen', {}).items():
      chosen = [p for p in points if p[2] == k]
      if chosen:
        marker, color = _CRITERION_MARKERS[criterion]
        ax.scatter(chosen[0][0], chosen[0][1], s=90, marker=marker,
                   facecolors='none' if marker != 'x' else color,
                   edgecolors=color if marker != 'x' else None,
                   label=f'chosen by {criterion}', zorder=3)
    if key == 'mia':
      ax.scatter(retrained['mia'], retrained['accuracy'], s=60, marker='*',
                 color='tab:orange', label='retraining', zorder=3)
    else:
      ax.axhline(retrained['accuracy'], color='tab:orange', linestyle='--',
                 linewidth=0.8, label='retraining\'s accuracy')
    ax.set_xlabel(label)
    ax.set_ylabel('validation accuracy')
    ax.legend(loc='best', fontsize=7)
  fig.suptitle(f'{len(scored)} candidates on the rehearsal request')
  _save(fig, path)


def plot_requests(state: Mapping, path: str) -> None:
  """Deletion requests one after another: accuracy, F of the newest
  request's people, F of every earlier request's, and the cumulative cost
  against the request number, one line per method; retraining's (its
  accuracy, one retraining per request) and the original's (its F) beside
  them.

  Args:
    state: a `requests/requests.json`.
    path: where to write the PNG.
  """
  numbers = [r['request'] for r in state['requests']]
  fig = Figure(figsize=(12.0, 3.6), layout='constrained')
  panels = fig.subplots(1, 4)
  keys = ('accuracy', 'F', 'earlier_F', 'cumulative_cost')
  titles = ('test accuracy', 'F of the newest request', 'F of the earlier '
            'requests', 'cumulative cost × retraining')
  for ax, key, title in zip(panels, keys, titles):
    for name, entry in state['methods'].items():
      points = [(e['request'], e[key]) for e in entry['sequential']
                if key in e]
      if points:
        ax.plot(*zip(*points), marker='o', markersize=3, label=name)
    if key == 'accuracy':
      ax.plot(numbers, [r['accuracy'] for r in state['retrain']], 'k--',
              linewidth=1, label='retraining')
    elif key == 'cumulative_cost':
      ax.plot(numbers, numbers, 'k--', linewidth=1,
              label='retraining at every request')
      ax.axhline(1.0, color='grey', linewidth=0.8, linestyle=':')
    else:
      points = [(e['request'], e[key]) for e in state['original'] if key in e]
      if points:
        ax.plot(*zip(*points), 'k:', linewidth=1, label='original')
    ax.set_title(title, fontsize=9)
    ax.set_xlabel('request')
    ax.set_xticks(numbers)
  for ax in panels[:2]:
    ax.legend(fontsize=7)
  panels[-1].legend(fontsize=7)
  _save(fig, path)
