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


# --- Markers by what a test does (`pytest -m process`, `-m parity`, `-m fuzz`) ---------
# Read from the test's source, and from the module's own helpers that it calls, so a
# new test is marked without anyone remembering to: `process` starts Python processes
# (the commands as a user runs them), `parity` compares numbers with an independent
# reference (PyTorch, timm, scikit-learn, SciPy, pydicom), `fuzz` feeds generated
# hostile input. `slow` is marked by hand: what no CI run includes (`-m slow`).
# `extended`: the long tests the default run leaves out to stay within 10 minutes on
# 2 cores and CI runs after it (`pytest -m extended`); listed here, by node id, so
# that one place says which.

import inspect  # pylint: disable=wrong-import-position,wrong-import-order
import re  # pylint: disable=wrong-import-position,wrong-import-order

_TOKENS = {
    "process": re.compile(r"\bsubprocess\b|sys\.executable|\bunder_1_gib\(|\bPopen\b|"
                          r"multiprocessing|mp_context|\bnum_workers\s*=\s*[1-9]"),
    "parity": re.compile(r"\btorch\b|\btorchvision\b|\btimm\b|\bsklearn\b|\bscipy\b|"
                         r"\bpydicom\b|torch_reference|torch_models|\bviolations\(|"
                         r"\bassert_matches\(|apply_(modality|voi|color)_lut"),
}
_module_helpers: dict[str, dict[str, str]] = {}


def _helpers_of(module) -> dict[str, str]:
  """name -> source of the module's own functions (not tests)."""
  if module.__name__ not in _module_helpers:
    found = {}
    for name, value in vars(module).items():
      if (inspect.isfunction(value) and value.__module__ == module.__name__
          and not name.startswith("test_")):
        try:
          found[name] = inspect.getsource(value)
        except (OSError, TypeError):
          pass
    _module_helpers[module.__name__] = found
  return _module_helpers[module.__name__]


def _source_with_helpers(item) -> str:
  try:
    source = inspect.getsource(item.function)
  except (OSError, TypeError, AttributeError):
    return ""
  helpers = _helpers_of(item.module)
  called = [helpers[name] for name in helpers if re.search(rf"\b{name}\(", source)]
  fixtures = [helpers[name] for name in getattr(item, "fixturenames", ()) if name in helpers]
  return "\n".join([source, *called, *fixtures])


EXTENDED = frozenset({
    "test_faults.py::test_sigkill_at_many_points_resumes_to_identical_results",
    "test_step.py::test_sp_matches_torch[vgg11-l1_sp]",
    "test_step.py::test_sp_matches_torch[densenet121-l2_sp]",
    "test_step.py::test_frozen_modules_bitwise_unchanged[densenet121-phases2]",
    "test_step.py::test_frozen_modules_bitwise_unchanged[vgg11-phases4]",
    "test_step.py::test_frozen_modules_bitwise_unchanged[vgg11-phases5]",
    "test_train.py::test_demo_strategies_learn",
    "test_train.py::test_interrupted_run_resumes_exactly[auto_rgn]",
    "test_train.py::test_interrupted_run_resumes_exactly[lp_ft]",
    "test_train.py::test_every_strategy_runs_and_writes_results[l1_sp]",
    "test_train.py::test_every_strategy_runs_and_writes_results[l2_sp]",
    "test_train.py::test_every_strategy_runs_and_writes_results[llrd]",
    "test_train.py::test_every_strategy_runs_and_writes_results[wise_ft]",
    "test_train.py::test_every_strategy_runs_and_writes_results[auto_rgn]",
    "test_sweep_report.py::test_killed_sweep_restarts_without_redoing_runs_and_reports",
    "test_distributed.py::test_two_processes_match_one_device",
    "test_distributed.py::test_barrier_waits_longer_than_collectives_allow",
    "test_distributed.py::test_four_devices_match_one_device",
    "test_multirun.py::test_vmapped_runs_equal_separate_runs[lp_ft]",
    "test_multirun.py::test_vmapped_runs_equal_separate_runs[auto_rgn]",
    "test_strategies_bss_wise.py::test_wise_ft_through_train_equals_lp_and_lp_ft_at_the_ends",
    "test_launch.py::test_job_array_with_a_preempted_task_equals_the_local_sweep",
    "test_features.py::test_features_are_the_head_input[densenet121]",
    "test_runs.py::test_damaged_identity_json_is_refused_and_overwrite_keeps_it",
    "test_runs.py::test_disk_full_mid_run_is_one_error_line_and_the_rerun_ends_identical",
    "test_runs.py::test_no_intact_checkpoint_restarts_from_scratch_and_says_so",
    "test_runs.py::test_vanished_workdir_mid_run_is_one_error_line",
    "test_runs.py::test_damaged_latest_checkpoint_is_set_aside_and_the_run_ends_identical"
    "[truncate]",
    "test_sweep_report.py::test_report_skips_diverged_runs_and_their_learning_rate",
    "test_weights_port.py::test_convert_file_then_load_pretrained_matches_torchvision_224"
    "[vgg11-True]",
    # The throughput suite's --smoke run (every phase of four strategies) and its checks.
    "test_benchmarks.py::test_smoke_records_have_sane_fields",
    "test_benchmarks.py::test_smoke_times_every_phase_of_g_lf",
    "test_benchmarks.py::test_smoke_auto_rgn_probe_is_timed_and_amortised",
    "test_benchmarks.py::test_smoke_markdown_has_one_row_per_configuration",
})


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if item.nodeid.partition("/")[2] in EXTENDED:
      item.add_marker("extended")
    source = _source_with_helpers(item)
    for marker, pattern in _TOKENS.items():
      if pattern.search(source):
        item.add_marker(marker)
    if "fuzz" in item.module.__name__ or "fuzz" in item.name:
      item.add_marker("fuzz")
