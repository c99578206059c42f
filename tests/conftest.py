import os
import tempfile

# The test suite is CPU-only, also on machines that have an accelerator.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=wrong-import-position

# Many tests compile the same small programs (a run and its resumed twin, the
# same step in several tests): a persistent cache makes the repeats free.
jax.config.update("jax_compilation_cache_dir",
                  os.path.join(tempfile.gettempdir(), "ftjax-test-jax-cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
