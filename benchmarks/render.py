r"""BENCHMARKS.md's figures, rendered from the benchmarks' JSON files.

  python -m benchmarks.render

Every benchmark that BENCHMARKS.md reports writes its figures with `--json`
as benchmarks/metadata.py lays them out:

  {"run": {"command": "...", "machine": {...}, "versions": {...},
           "load_average": {"before": [1, 5, 15 min], "after": [...]}},
   "results": {... the benchmark's own figures ...}}

The files committed in benchmarks/results/ are the source of the document.
Between the markers

  <!-- begin: NAME -->
  <!-- end: NAME -->

this writes section NAME of `SECTIONS` from benchmarks/results/<its file>:
the exact command, the machine and versions, the load average and the
table; where the file is absent, that the benchmark has no current result
and the command that makes one. The text outside the markers is written by
hand and holds no figures. tests/benchmarks_render_test.py checks that the
committed BENCHMARKS.md is what this makes of the committed files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import textwrap
from collections.abc import Callable, Mapping

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, 'benchmarks', 'results')
BENCHMARKS_MD = os.path.join(ROOT, 'BENCHMARKS.md')
MARKERS = re.compile(r'<!-- begin: (\w+) -->\n.*?<!-- end: \1 -->', re.S)
WIDTH = 79  # of the lines outside tables


def _fmt(value, digits: int = 1) -> str:
  return '–' if value is None else f'{value:.{digits}f}'


def _paragraph(text: str) -> list[str]:
  return textwrap.wrap(text, WIDTH, break_long_words=False,
                       break_on_hyphens=False)


def _row(cells) -> str:
  return '| ' + ' | '.join(str(c) for c in cells) + ' |'


def _table(head, rows) -> list[str]:
  return [_row(head), _row(['---'] * len(head))] + [_row(r) for r in rows]


# --------------------------------------------------------------- sections


def throughput(results) -> list[str]:
  by_size = results['by_image_size']
  first = by_size[str(results['image_sizes'][0])]
  steps = [n for n in ('train', 'train_augmented', 'eval') if n in first]
  head = ['size']
  for name in steps:
    head += [f'{name.replace("_", " ")} img/s mufax / PyTorch', 'ratio']
  head.append('compile s ' + ' / '.join(s.replace('_', ' ') for s in steps))
  rows = []
  for size in results['image_sizes']:
    r = by_size[str(size)]
    cells = [size]
    for name in steps:
      cells += [f'{_fmt(r[name]["mufax_img_per_s"])} / '
                f'{_fmt(r[name]["pytorch_img_per_s"])}',
                f'**{_fmt(r[name]["ratio"], 2)}**']
    cells.append(' / '.join(_fmt(r['compile_s'][s]) for s in steps))
    rows.append(cells)
  return _paragraph(
      f'ResNet-18, 8 outputs, batch {first["batch_size"]}, {first["dtype"]}; '
      f'the median of {first["repeats"]} repetitions of {first["steps"]} '
      'steps. Ratio: mufax img/s / PyTorch img/s (above 1: mufax is '
      'faster).') + [''] + _table(head, rows)


def _ms(values) -> str:
  return ' / '.join('–' if v is None else f'{v:.1f}' for v in values)


def throughput_layers(results) -> list[str]:
  rows, pools = [], []
  for size in results['image_sizes']:
    r = results['by_image_size'][str(size)]
    for layer in r['layers']:
      _, h, w, cin = layer['input']
      k, _, _, cout = layer['kernel']
      rows.append([size, layer['layer'], layer['count'],
                   f'{k}×{k}/{layer["stride"]}, {cin}→{cout} on {h}×{w}',
                   _ms(layer['native_ms']),
                   ' / '.join(layer['plan'].values()),
                   _ms(layer['planned_ms']), _ms(layer['pytorch_ms'])])
    totals = r['totals_ms']
    rows.append([size, '**all convolutions**', '', '',
                 f'**{totals["native_ms"]:.0f}**', '',
                 f'**{totals["planned_ms"]:.0f}**',
                 f'**{totals["pytorch_ms"]:.0f}**'])
    pools.append([size] + [f'{v:.1f}' for v in r['max_pool_ms'].values()])
  first = results['by_image_size'][str(results['image_sizes'][0])]
  return (_paragraph(
      f'Milliseconds at batch {first["batch_size"]}, the median of '
      f'{first["repeats"]} repetitions: forward / input gradient / kernel '
      'gradient (PyTorch: forward / backward); "all convolutions" sums each '
      'row times its count.') + ['']
          + _table(['size', 'convolution', 'count', 'shape',
                    'native ms', 'formulations', 'formulations ms',
                    'PyTorch ms'], rows)
          + [''] + _table(['size', 'max pool forward + backward ms: '
                           + ' / '.join(first['max_pool_ms'])], pools))


def population(results) -> list[str]:
  rows = [[f'{r["model"]} (width {r["num_filters"]})',
           f'{r["image_size"]}×{r["image_size"]}', r['members'],
           _fmt(r['sequential_img_per_s']), _fmt(r['vmapped_img_per_s']),
           f'**{r["ratio"]:.2f}**',
           f'{r["compile_s"]["single"]:.1f} / {r["compile_s"]["vmapped"]:.1f}']
          for r in results['rows']]
  return _paragraph(
      f'Batch {results["batch_size"]} per member; the median of '
      f'{results["repeats"]} repetitions of {results["steps"]} steps per '
      'member. Ratio: one program / sequential (above 1: one program is '
      'faster).') + [''] + _table(
              ['model', 'image', 'N', 'sequential img/s',
               'one program img/s', 'ratio',
               'compile s one member / one program'], rows)


def epoch(results) -> list[str]:
  m, r, ratio = results['mufax'], results['reference'], results['ratio']
  rows = [[name, _fmt(side['train_seconds']), _fmt(side['eval_seconds'], 2),
           _fmt(side['total_seconds']), _fmt(side['img_per_s']['epoch'])]
          for name, side in (('mufax', m), ('reference (PyTorch)', r))]
  rows.append(['ratio reference / mufax', _fmt(ratio['train'], 2),
               _fmt(ratio['eval'], 2), f'**{ratio["total"]:.2f}**', ''])
  subset = (' **A subset (--examples): not the benchmark.**'
            if results['subset'] else '')
  median = (f'; the median of {results["epochs"]} epochs'
            if results['epochs'] > 1 else '')
  return (_paragraph(
      f'{results["train_images"]} train and {results["test_images"]} test '
      f'images at {results["image_size"]}×{results["image_size"]}, batch '
      f'{results["batch_size"]}{median}. Ratio above 1: mufax is '
      f'faster.{subset}') + ['']
          + _table(['', 'train s', 'eval s', 'epoch s', 'epoch img/s'], rows)
          + [''] + _paragraph(
              f'mufax compiled {m["compile_seconds"]["train"]:.1f} s (train) '
              f'and {m["compile_seconds"]["eval"]:.1f} s (eval) in its '
              'warm-up epoch; the timed epochs compiled '
              f'{m["timed_compile_seconds"]:.1f} s.'))


def host_share(results) -> list[str]:
  rows = [[i + 1, _fmt(e['total_seconds'], 2),
           _fmt(e['seconds_in_compiled_calls'], 2),
           f'**{100 * e["host_share"]:.2f}%**']
          for i, e in enumerate(results['mufax']['epochs'])]
  return _table(['mufax epoch', 'wall s', 'inside compiled calls s',
                 'host share'], rows)


def engine_step(results) -> list[str]:
  rows = [[r['members'], r['convolutions'], r['executor'],
           _fmt(r['compile_s']), _fmt(r['ms_per_step'])]
          for r in results['rows']]
  return _paragraph(
      f'ResNet-18 of width {results["width"]} at '
      f'{results["image_size"]}×{results["image_size"]}, '
      f'{results["steps"]} steps of batch 64 per member.') + [''] + _table(
              ['members', 'convolutions', 'executor', 'compile s',
               'ms / step'], rows)


def quickstart(results) -> list[str]:
  return _paragraph(
      f'`{results["config"]}`: methods {results["methods"]}, '
      f'{results["model"]}, population {results["population"]}, '
      f'{results["epochs"]} epochs for the models trained from scratch; the '
      'dataset built and the compilation cache empty.') + [''] + _table(
              ['wall s', 'of which compiling s', 'peak memory GiB'],
              [[f'**{results["wall_s"]:.1f}**', _fmt(results['compile_s']),
                f'{results["peak_rss_gib"]:.2f}']])


def device_check(results) -> list[str]:
  blocks = [_paragraph('A shortened CPU run: it shows that the path works, '
                       'not how fast a device is.')] if results['short'] else []
  if results.get('checks'):
    blocks.append(_table(
        ['check', 'of', 'value', 'bound', ''],
        [[c['check'], c['of'], f'{c["value"]:.3g}',
          f'{c["bound"]:g} ({c["detail"]})',
          'passed' if c['passed'] else '**failed**']
         for c in results['checks']]))
  if results.get('throughput'):
    blocks.append(_table(
        ['ResNet-18 width', 'image', 'dtype', 'members', 'executor', 'img/s',
         'ms/step', 'compile s'],
        [[t['width'], t['image_size'], t['dtype'], t['members'],
          t['executor'], t['img_per_s'], t['ms_per_step'], t['compile_s']]
         for t in results['throughput']]))
  fmt = lambda v: '' if v is None else f'{v:.4f}'
  for key in ('quickstart', 'population'):
    run = results.get(key)
    if run:
      blocks.append(
          _paragraph(
              f'`{run["config"]}` (methods {run["methods"]}; '
              f'{run["model"]}), population {run["population"]}, '
              f'{run["epochs"]} epochs from scratch: **wall '
              f'{run["wall_s"]:.0f} s**, of which compiling '
              f'{run["compile_s"]:.0f} s') + ['']
          + _table(['method', 'accuracy', 'MIA', 'NoMUS', 'F', 'attack',
                    'seconds'],
                   [[r['method'], fmt(r.get('accuracy')), fmt(r.get('mia')),
                     fmt(r.get('nomus')), fmt(r.get('F')),
                     fmt(r.get('lira_accuracy')),
                     f'{r.get("wall_seconds", 0):.1f}'] for r in run['rows']]))
  return [line for k, block in enumerate(blocks)
          for line in ([''] if k else []) + block]


def sweep(results) -> list[str]:
  return _table(
      ['method', 'candidates', 'varied', 'ResNet-18 width', 'image',
       'one program s', 'one by one s', 'ratio'],
      [[results['method'], results['candidates'],
        f'{results["field"]} ({results["range"]})', results['num_filters'],
        results['image_size'], f'{results["one_program_s"]:.1f}',
        f'{results["one_by_one_s"]:.1f}', f'{results["ratio"]:.2f}']])


@dataclasses.dataclass(frozen=True)
class Section:
  json: str  # under benchmarks/results/
  command: str  # what makes the file
  table: Callable[[dict], list[str]]


def _section(json_name: str, benchmark: str, flags: str, table) -> Section:
  return Section(json_name, ' '.join(
      [f'python -m benchmarks.{benchmark}'] + ([flags] if flags else [])
      + [f'--json=benchmarks/results/{json_name}']), table)


SECTIONS = {
    'throughput': _section(
        'throughput.json', 'throughput',
        '--image_sizes=32,64,128 --steps=3 --repeats=3 --noaugmented',
        throughput),
    'throughput_layers': _section(
        'throughput_layers.json', 'throughput',
        '--layers --image_sizes=32,64 --repeats=3', throughput_layers),
    'population': _section('population.json', 'population', '', population),
    'quickstart_population': _section(
        'quickstart_population.json', 'quickstart',
        '--config=configs/quickstart_population.py', quickstart),
    'epoch': _section('epoch.json', 'epoch', '', epoch),
    'host_share': _section('epoch.json', 'epoch', '', host_share),
    'executors': _section(
        'executors.json', 'engine_step', '--members=1 --executors=host,loop',
        engine_step),
    'quickstart': _section('quickstart.json', 'quickstart',
                           '--config=configs/quickstart.py', quickstart),
    'convolution_choice': _section(
        'convolution_choice.json', 'engine_step',
        '--members=1,8 --convolutions=plan,native', engine_step),
    'quickstart_population8': _section(
        'quickstart_population8.json', 'quickstart',
        '--config=configs/quickstart.py --config.population.size=8',
        quickstart),
    'sweep': _section('sweep.json', 'sweep', '', sweep),
    'device_check': Section(
        'device_check.json',
        'python -m benchmarks.device_check '
        '--json=benchmarks/results/device_check.json '
        '--benchmarks_md=BENCHMARKS.md', device_check),
}


# ---------------------------------------------------------------- output


def shell_block(command: str) -> list[str]:
  """`command` in a sh block, broken before its flags into lines of at most
  `WIDTH` characters (with the ' \\') where it can be."""
  lines = ['']
  # Words as metadata.command quotes them: a quoted space is no break.
  for word in re.findall(r"(?:[^\s']+|'[^']*')+", command):
    if (lines[-1] and word.startswith('--')
        and len(lines[-1]) + 1 + len(word) + len(' \\') > WIDTH):
      lines[-1] += ' \\'
      lines.append('   ')
    lines[-1] += (' ' if lines[-1] else '') + word
  return ['```sh'] + lines + ['```']


def _loads(values) -> str:
  return ' '.join(f'{v:.2f}' for v in values)


def run_lines(run) -> list[str]:
  """The command, machine, versions and load average of a run."""
  machine, versions = run['machine'], run['versions']
  torch = (f'; torch on {machine["torch_device"]}, '
           f'{machine["torch_threads"]} threads'
           if 'torch_device' in machine else '')
  load = run['load_average']
  return shell_block(run['command']) + [''] + _paragraph(
      f'Machine: {machine["cpu"]}, {machine["cpu_cores"]} cores '
      f'({machine["system"]} {machine["architecture"]}); JAX on '
      f'{machine["jax_backend"]}, {machine["jax_devices"]}{torch}. '
      'Versions: ' + ', '.join(
          ('Python' if name == 'python' else name) + f' {version}'
          for name, version in versions.items())
      + '. Load average (1, 5, 15 minutes): '
      f'{_loads(load["before"])} before, {_loads(load["after"])} after.')


def render_section(name: str, record: Mapping | None) -> str:
  """Section `name`'s text from its file's `record` (None: no result)."""
  section = SECTIONS[name]
  if record is None:
    return '\n'.join(['No current result; this command makes one:', '']
                     + shell_block(section.command))
  return '\n'.join(run_lines(record['run']) + ['']
                   + section.table(record['results']))


def render(text: str, records: Mapping[str, Mapping | None]) -> str:
  """`text` with the section between each pair of markers whose name is in
  `records` written from its record."""

  def replace(match):
    name = match.group(1)
    if name not in SECTIONS:
      raise ValueError(f'Unknown section {name!r}; expected one of '
                       f'{", ".join(SECTIONS)}.')
    if name not in records:
      return match.group(0)
    return (f'<!-- begin: {name} -->\n\n'
            f'{render_section(name, records[name])}\n\n<!-- end: {name} -->')

  return MARKERS.sub(replace, text)


def load(results_dir: str = RESULTS_DIR) -> dict[str, dict | None]:
  """Every section's record from `results_dir` (None where absent)."""
  records = {}
  for name, section in SECTIONS.items():
    path = os.path.join(results_dir, section.json)
    if os.path.exists(path):
      with open(path) as f:
        records[name] = json.load(f)
    else:
      records[name] = None
  return records


def update(path: str, records: Mapping[str, Mapping | None]) -> None:
  """Renders the sections of `records` into the file at `path`."""
  with open(path) as f:
    text = f.read()
  with open(path, 'w') as f:
    f.write(render(text, records))


def main():
  update(BENCHMARKS_MD, load())


if __name__ == '__main__':
  main()
