"""benchmarks/device_check.py's report: its section of BENCHMARKS.md as
benchmarks/render.py writes it (the runs themselves: `--platform=cpu`)."""

from absl.testing import absltest

from benchmarks import device_check  # pylint: disable=unused-import
from benchmarks import render


RUN = {'command': 'python -m benchmarks.device_check '
                  '--json=benchmarks/results/device_check.json',
       'machine': {'system': 'Linux', 'architecture': 'x86_64',
                   'cpu': 'Some CPU', 'cpu_cores': 16, 'jax_backend': 'gpu',
                   'jax_devices': '1 x NVIDIA H200'},
       'versions': {'python': '3.12.0', 'jax': '0.11.0'},
       'load_average': {'before': [0.0, 0.0, 0.0], 'after': [1.0, 1.0, 1.0]}}
REPORT = {
    'short': False,
    'checks': [
        {'check': 'loop executor = host executor', 'of': 'scrub',
         'value': 2e-6, 'bound': 1e-5, 'passed': True, 'detail': 'absolute'},
        {'check': 'population = single models', 'of': 'scrub',
         'value': 2e-3, 'bound': 1e-3, 'passed': False,
         'detail': 'relative'}],
    'throughput': [{'width': 64, 'image_size': 128, 'dtype': 'bfloat16',
                    'members': 1, 'executor': 'loop', 'img_per_s': 5123.4,
                    'ms_per_step': 12.5, 'compile_s': 20.1}],
    'quickstart': {'config': 'configs/quickstart.py', 'methods': 'original',
                   'model': 'resnet18', 'population': 1, 'epochs': 40,
                   'wall_s': 61.2, 'compile_s': 12.3, 'peak_rss_gib': 1.2,
                   'rows': [{'method': 'original', 'accuracy': 0.33,
                             'mia': 0.7, 'nomus': 0.46, 'wall_seconds': 3.0}]},
}


class ReportTest(absltest.TestCase):

  def test_section_shows_every_figure_and_a_failed_check(self):
    text = render.render_section('device_check',
                                 {'run': RUN, 'results': REPORT})
    self.assertIn('JAX on gpu, 1 x NVIDIA H200. Versions: Python 3.12.0, '
                  'jax 0.11.0.', text.replace('\n', ' '))
    self.assertIn('| population = single models | scrub | 0.002 | 0.001 '
                  '(relative) | **failed** |', text)
    self.assertIn('| 64 | 128 | bfloat16 | 1 | loop | 5123.4 | 12.5 | '
                  '20.1 |', text)
    self.assertIn('**wall 61 s**, of which compiling 12 s',
                  text.replace('\n', ' '))
    self.assertIn('| original | 0.3300 | 0.7000 | 0.4600 |  |  | 3.0 |',
                  text)
    self.assertNotIn('shortened', text)
    self.assertFalse(text.endswith('\n'))

  def test_fills_its_section_and_keeps_the_others(self):
    document = ('# B\n\n<!-- begin: epoch -->\nkept\n<!-- end: epoch -->\n\n'
                '## GPU\n\n<!-- begin: device_check -->\nold\n'
                '<!-- end: device_check -->\n')
    text = render.render(document, {'device_check': {
        'run': RUN, 'results': REPORT | {'short': True}}})
    self.assertIn('<!-- begin: epoch -->\nkept\n<!-- end: epoch -->', text)
    self.assertIn('<!-- begin: device_check -->\n\n```sh\npython -m '
                  'benchmarks.device_check', text)
    self.assertIn('A shortened CPU run', text)
    self.assertNotIn('old', text)


if __name__ == '__main__':
  absltest.main()
