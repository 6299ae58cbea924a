"""pytest glue for absltest cases."""

import os
import tempfile

# Multi-device tests compare 4 fake CPU devices with 1; this must be set before
# JAX is imported. `.ci/run` exports it too.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')

# pylint: disable-next=g-import-not-at-top
import jax
from absl import flags

# absltest's tempdir helpers read flags that only absltest.main() would parse.
flags.FLAGS.mark_as_parsed()

# Tests build the same steps again and again (a resumed run compiles what the
# killed run compiled); a persistent cache for this session compiles each once.
jax.config.update('jax_compilation_cache_dir',
                  tempfile.mkdtemp(prefix='mufax-jax-cache-'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
