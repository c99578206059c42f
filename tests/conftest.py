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


import gc  # pylint: disable=wrong-import-position,wrong-import-order

import pytest  # pylint: disable=wrong-import-position,wrong-import-order


@pytest.fixture(autouse=True, scope="module")
def _free_module_caches():
  """Drops the cached reference models after each test module: VGG-19 and friends
  are ~0.5 GB each, and the whole suite runs in one process on 24 GB."""
  yield
  torch_models = __import__("sys").modules.get("tests.helpers.torch_models")
  if torch_models is not None:
    torch_models.random_model.cache_clear()
  step_tests = __import__("sys").modules.get("tests.helpers.step_setups")
  if step_tests is not None:
    for cached in (step_tests.fast_setup, step_tests.exact_setup, step_tests.torch_setup):
      cached.cache_clear()
  gc.collect()
