"""pytest glue for absltest cases."""

import os

from absl import flags

# Multi-device tests compare 4 fake CPU devices with 1; this must be set before
# JAX initialises. `.ci/run` exports it too.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')

# absltest's tempdir helpers read flags that only absltest.main() would parse.
flags.FLAGS.mark_as_parsed()
