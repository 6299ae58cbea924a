"""benchmarks/render.py: BENCHMARKS.md's tables from the benchmarks' JSON
files, and the committed document against the committed files."""

import json
import os

from absl.testing import absltest

from benchmarks import metadata
from benchmarks import render

RUN = {'command': 'nice -n 5 python -m benchmarks.throughput '
                  '--image_sizes=32 --json=benchmarks/results/throughput.json',
       'machine': {'system': 'Linux', 'architecture': 'x86_64',
                   'cpu': 'Some CPU', 'cpu_cores': 2, 'jax_backend': 'cpu',
                   'jax_devices': '1 x cpu', 'torch_device': 'cpu',
                   'torch_threads': 2},
       'versions': {'python': '3.11.7', 'jax': '0.10.2', 'torch': '2.13.0'},
       'load_average': {'before': [0.5, 0.25, 0.125],
                        'after': [1.5, 1.0, 0.5]}}
STEP = {'mufax_img_per_s': 650.0, 'pytorch_img_per_s': 600.0,
        'ratio': 650 / 600, 'mufax_augments': False}
THROUGHPUT = {'run': RUN, 'results': {'image_sizes': [32], 'by_image_size': {
    '32': {'train': STEP, 'eval': STEP | {'pytorch_img_per_s': None,
                                          'ratio': None},
           'compile_s': {'train': 3.04, 'eval': 0.81}, 'image_size': 32,
           'batch_size': 64, 'dtype': 'float32', 'steps': 3, 'repeats': 3}}}}
DOCUMENT = ('# B\n\nkept\n\n<!-- begin: throughput -->\nold\n'
            '<!-- end: throughput -->\n\nkept too\n\n'
            '<!-- begin: epoch -->\n<!-- end: epoch -->\n')


class RenderTest(absltest.TestCase):

  def render_fixture(self) -> str:
    results = self.create_tempdir('results')
    results.create_file('throughput.json', json.dumps(THROUGHPUT))
    path = self.create_tempfile('BENCHMARKS.md', DOCUMENT).full_path
    render.update(path, render.load(results.full_path))
    with open(path) as f:
      return f.read()

  def test_a_table_with_its_command_machine_versions_and_load(self):
    text = self.render_fixture()
    self.assertIn(
        '<!-- begin: throughput -->\n\n```sh\nnice -n 5 python -m '
        'benchmarks.throughput --image_sizes=32 \\\n'
        '    --json=benchmarks/results/throughput.json\n```\n\nMachine: ',
        text)
    self.assertIn(
        'Machine: Some CPU, 2 cores (Linux x86_64); JAX on cpu, 1 x cpu; '
        'torch on cpu, 2 threads. Versions: Python 3.11.7, jax 0.10.2, '
        'torch 2.13.0. Load average (1, 5, 15 minutes): 0.50 0.25 0.12 '
        'before, 1.50 1.00 0.50 after.', text.replace('\n', ' '))
    self.assertLessEqual(max(len(line) for line in text.splitlines()
                             if not line.startswith('|')), 80)
    self.assertIn(
        '| size | train img/s mufax / PyTorch | ratio | eval img/s mufax / '
        'PyTorch | ratio | compile s train / eval |\n'
        '| --- | --- | --- | --- | --- | --- |\n'
        '| 32 | 650.0 / 600.0 | **1.08** | 650.0 / – | **–** | 3.0 / 0.8 |\n'
        '\n<!-- end: throughput -->', text)
    self.assertIn('the median of 3 repetitions of 3 steps',
                  text.replace('\n', ' '))
    self.assertNotIn('old', text)

  def test_keeps_the_text_outside_the_markers(self):
    text = self.render_fixture()
    self.assertTrue(text.startswith('# B\n\nkept\n\n<!-- begin: throughput'))
    self.assertIn('<!-- end: throughput -->\n\nkept too\n\n', text)

  def test_a_benchmark_without_a_file_has_no_current_result(self):
    text = self.render_fixture()
    self.assertIn('<!-- begin: epoch -->\n\nNo current result; this command '
                  'makes one:\n\n```sh\npython -m benchmarks.epoch '
                  '--json=benchmarks/results/epoch.json\n```\n\n'
                  '<!-- end: epoch -->', text)

  def test_renders_only_the_sections_given(self):
    self.assertEqual(render.render(DOCUMENT, {}), DOCUMENT)

  def test_an_unknown_section_is_an_error(self):
    with self.assertRaisesRegex(ValueError, 'Unknown section'):
      render.render('<!-- begin: nope -->\n<!-- end: nope -->', {})

  def test_the_committed_document_is_rendered_from_the_committed_files(self):
    with open(render.BENCHMARKS_MD) as f:
      committed = f.read()
    self.assertEqual(committed, render.render(committed, render.load()),
                     'BENCHMARKS.md differs from what its JSON files make: '
                     'run python -m benchmarks.render')
    for name in render.SECTIONS:
      self.assertIn(f'<!-- begin: {name} -->', committed)

  def test_every_committed_file_is_a_run_record(self):
    for name, record in render.load().items():
      if record is not None:
        self.assertEqual(set(record), {'run', 'results'}, name)
        self.assertNotIn('/tmp/', record['run']['command'], name)


class MetadataTest(absltest.TestCase):

  def test_command_quotes_arguments_and_names_the_environment(self):
    os.environ['XLA_FLAGS'] = '--a --b'
    self.addCleanup(os.environ.pop, 'XLA_FLAGS')
    command = metadata.command(['prog', '--json=x.json', '--text=a b'])
    self.assertTrue(command.startswith("XLA_FLAGS='--a --b' "), command)
    self.assertTrue(command.endswith(" --json=x.json '--text=a b'"), command)

  def test_record_has_the_run_and_the_results(self):
    path = self.create_tempfile().full_path
    record = metadata.Recorder().write(path, {'figure': 1.0})
    with open(path) as f:
      self.assertEqual(json.load(f), record)
    self.assertEqual(record['results'], {'figure': 1.0})
    self.assertEqual(set(record['run']), {'command', 'machine', 'versions',
                                          'load_average'})
    self.assertEqual(record['run']['machine']['jax_backend'], 'cpu')
    self.assertIn('jax', record['run']['versions'])
    self.assertLen(record['run']['load_average']['after'], 3)


if __name__ == '__main__':
  absltest.main()
