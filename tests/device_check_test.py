"""benchmarks/device_check.py's report: its table and the BENCHMARKS.md
section it fills (the runs themselves: `--platform=cpu`, BENCHMARKS.md)."""

import os

from absl.testing import absltest

from benchmarks import device_check


REPORT = {
    'command': 'python -m benchmarks.device_check', 'short': False,
    'machine': {'platform': 'gpu', 'devices': '1 x NVIDIA H200',
                'jax': '0.11.0', 'python': '3.12.0'},
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
                   'model': 'resnet18',
                   'population': 1,
                   'epochs': 40, 'wall_s': 61.2,
                   'rows': [{'method': 'original', 'accuracy': 0.33,
                             'mia': 0.7, 'nomus': 0.46, 'wall_seconds': 3.0}]},
}


class ReportTest(absltest.TestCase):

  def test_table_shows_every_figure_and_a_failed_check(self):
    table = device_check.markdown(REPORT)
    self.assertIn('1 x NVIDIA H200 (gpu), jax 0.11.0', table)
    self.assertIn('| population = single models | scrub | 0.002 | 0.001 '
                  '(relative) | **failed** |', table)
    self.assertIn('| 64 | 128 | bfloat16 | 1 | loop | 5123.4 | 12.5 | '
                  '20.1 |', table)
    self.assertIn('**wall 61 s**', table)
    self.assertIn('| original | 0.3300 | 0.7000 | 0.4600 |  |  | 3.0 |',
                  table)
    self.assertNotIn('shortened', table)

  def test_fills_the_gpu_section_and_keeps_the_others(self):
    path = os.path.join(self.create_tempdir().full_path, 'BENCHMARKS.md')
    with open(path, 'w') as f:
      f.write('# B\n\n## 1. CPU\n\nkept\n\n## GPU\n\nold\n\n## 9. Last\n\n'
              'kept too\n')
    device_check.write_section(path, 'new table')
    with open(path) as f:
      text = f.read()
    self.assertEqual(text, '# B\n\n## 1. CPU\n\nkept\n\n## GPU\n\nnew table'
                     '\n\n## 9. Last\n\nkept too\n')
    device_check.write_section(path, 'newer')
    with open(path) as f:
      self.assertIn('## GPU\n\nnewer\n\n## 9. Last', f.read())


if __name__ == '__main__':
  absltest.main()
