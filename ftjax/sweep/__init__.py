"""The study's grid of runs: planned (`plan`), run on this machine (`local`) or
submitted to a SLURM cluster as one job array (`slurm`); `python -m ftjax.sweep` is the
command (`__main__`).

The names below are the sweep's API, re-exported from the modules that define them.
"""

from ftjax.run import is_done, status
from ftjax.sweep.local import (memory_environment, run_in_process, run_in_subprocess,
                               run_sweep)
from ftjax.sweep.plan import (AXES, LAUNCHERS, MAX_ATTEMPTS, RunDiverged, RunSpec,
                              SweepSummary, describe, expected_identity, get_config, grid,
                              not_retried, summary_lines)

__all__ = ["AXES", "LAUNCHERS", "MAX_ATTEMPTS", "RunDiverged", "RunSpec", "SweepSummary",
           "describe", "expected_identity", "get_config", "grid", "is_done",
           "memory_environment", "not_retried", "run_in_process", "run_in_subprocess",
           "run_sweep", "status", "summary_lines"]
