"""The sweep's plan: the grid's cells (`RunSpec`), each run's expected identity, which
runs are done or not retried, and the summary lines. What each status means is
`ftjax.run`'s (the run directory's files); nothing here runs or submits a run.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Sequence

import ml_collections

from ftjax import data
from ftjax import run as run_lib
from ftjax.data.prepared import prepared_builder
from ftjax.models import registry
from ftjax.run import DIVERGED_NAME, ERROR_NAME, failed_attempts, status
from ftjax.strategies import registry as strategies

AXES = ("datasets", "archs", "strategies", "lrs", "seeds")
# local: runs on this machine (ftjax.sweep.local); slurm / submitit_local: a job array
# (ftjax.sweep.slurm).
LAUNCHERS = ("local", "slurm", "submitit_local")
MAX_ATTEMPTS = 3


class RunDiverged(RuntimeError):
  """The run's training loss became NaN/Inf; the same config would diverge again.

  Runners raise it (the built-in ones translate ftjax.train's
  TrainingDivergedError) so that the sweep records the run as diverged.
  """


@dataclasses.dataclass(frozen=True, order=True)
class RunSpec:
  """One cell of the grid."""
  dataset: str
  arch: str
  strategy: str
  lr: float
  seed: int

  @property
  def name(self) -> str:
    return f"{self.dataset}/{self.arch}/{self.strategy}/lr{self.lr:g}/seed{self.seed}"

  def directory(self, workdir: str | pathlib.Path) -> pathlib.Path:
    return pathlib.Path(workdir) / self.name

  def config(self, base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The per-run config: the sweep's base config with this cell's values."""
    config = ml_collections.ConfigDict(base.to_dict())
    config.dataset, config.arch, config.strategy = self.dataset, self.arch, self.strategy
    # A dataset option applies to the datasets that have it (unit: CheXpert, MURA).
    accepted = data.option_defaults(self.dataset, base.data_dir)
    config.dataset_options = {k: v for k, v in config.dataset_options.items()
                              if v is not None and k in accepted}
    config.lr, config.seed = float(self.lr), int(self.seed)
    return config


def grid(sweep_config: ml_collections.ConfigDict,
         **subset: Sequence[Any] | None) -> list[RunSpec]:
  """Every run of the sweep config, restricted to `subset` values per axis.

  A subset value must be one of the sweep's own (a typo is an error, not an
  empty sweep); learning rates compare as floats.
  """
  values = {}
  for axis in AXES:
    full = [float(v) if axis == "lrs" else v for v in sweep_config[axis]]
    chosen = subset.get(axis)
    if chosen:
      chosen = [float(v) if axis == "lrs" else type(full[0])(v) for v in chosen]
      unknown = [v for v in chosen if v not in full]
      if unknown:
        raise ValueError(f"--{axis}: {unknown} not in the sweep's {axis} {full}.")
      full = [v for v in full if v in chosen]
    values[axis] = full
  return [RunSpec(d, a, s, lr, seed) for d in values["datasets"] for a in values["archs"]
          for s in values["strategies"] for lr in _lrs_of(s, values["lrs"])
          for seed in values["seeds"]]


def _lrs_of(strategy: str, lrs: list[float]) -> list[float]:
  """A training-free strategy (kNN) has no learning rate: one run per seed, at the
  first lr (an unknown name keeps every lr; the run then reports the name)."""
  definition = strategies.DEFINITION.get(strategy)
  return lrs[:1] if definition is not None and not definition.uses_lr else lrs


def expected_identity(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The identity a finished run of this per-run config has (ftjax.run), or None
  where it cannot be known yet (data not prepared, weights missing: the run
  itself then fails with the fix)."""
  try:
    _, builder = prepared_builder(config, registry.get_arch(config.arch))
    return run_lib.run_identity(config, builder)
  except (data.DataError, OSError, ValueError, TypeError):
    return None


def get_config(path: str) -> ml_collections.ConfigDict:
  """Config-file entry point (`--config ftjax/sweep/:<run_config.json>`): the
  per-run config a sweep wrote for a subprocess run."""
  return ml_collections.ConfigDict(json.loads(pathlib.Path(path).read_text()))


# --- The sweep ----------------------------------------------------------------


@dataclasses.dataclass
class SweepSummary:
  """What one sweep did; `failed` and `diverged` carry each run's last error line.

  diverged: runs that diverged in this sweep; diverged_before: runs recorded as
  diverged by an earlier sweep and not retried; gave_up: runs not retried because
  they already failed `max_attempts` times (with their attempt count).
  """
  total: int
  ran: list[RunSpec] = dataclasses.field(default_factory=list)
  already_done: list[RunSpec] = dataclasses.field(default_factory=list)
  done_elsewhere: list[RunSpec] = dataclasses.field(default_factory=list)
  failed: list[tuple[RunSpec, str]] = dataclasses.field(default_factory=list)
  diverged: list[tuple[RunSpec, str]] = dataclasses.field(default_factory=list)
  diverged_before: list[tuple[RunSpec, str]] = dataclasses.field(default_factory=list)
  gave_up: list[tuple[RunSpec, int]] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    """Every run finished or diverged (a diverged run is an outcome, not a fault)."""
    return not self.failed and not self.gave_up


def not_retried(run_dir: pathlib.Path, *, retry_diverged: bool, retry_failed: bool,
                max_attempts: int) -> str | None:
  """"diverged" or "given up" for a run that a sweep does not attempt again; else None."""
  if (run_dir / DIVERGED_NAME).exists() and not retry_diverged:
    return "diverged"
  if (run_dir / ERROR_NAME).exists() and not retry_failed and (
      failed_attempts(run_dir) >= max_attempts):
    return "given up"
  return None


def describe(specs: Sequence[RunSpec], workdir: str | pathlib.Path,
             base: ml_collections.ConfigDict | None = None) -> str:
  """One line per run with its status, and the counts (for --dry_run)."""
  counts: dict[str, int] = {}
  lines = []
  for spec in specs:
    identity = None if base is None else expected_identity(spec.config(base))
    state = status(spec.directory(workdir), identity)
    counts[state] = counts.get(state, 0) + 1
    lines.append(f"{state:8s} {spec.name}")
  lines.append(f"{len(specs)} runs: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
  return "\n".join(lines)


def summary_lines(summary: SweepSummary, workdir: str | pathlib.Path,
                  max_attempts: int = MAX_ATTEMPTS) -> tuple[list[str], list[str]]:
  """The end-of-sweep report: (lines for stdout, lines for stderr)."""
  def where(spec: RunSpec, name: str) -> pathlib.Path:
    return spec.directory(workdir) / name

  counts = [f"{len(summary.ran)} ran", f"{len(summary.already_done)} already done",
            f"{len(summary.done_elsewhere)} finished by another process"]
  if summary.diverged or summary.diverged_before:
    counts.append(f"{len(summary.diverged) + len(summary.diverged_before)} diverged")
  counts.append(f"{len(summary.failed)} failed")
  if summary.gave_up:
    counts.append(f"{len(summary.gave_up)} given up")
  out = [f"sweep: {', '.join(counts)}, of {summary.total}."]
  for spec, error in summary.diverged:
    out.append(f"  DIVERGED {spec.name}: {error} ({where(spec, DIVERGED_NAME)})")
  for spec, error in summary.diverged_before:
    out.append(f"  DIVERGED earlier, not retried {spec.name}: {error} "
               f"({where(spec, DIVERGED_NAME)})")
  if summary.diverged or summary.diverged_before:
    out.append("  Diverged runs are not retried by later sweeps (they would diverge again); "
               "pass --retry_diverged to run them anyway.")
  err = [f"  FAILED {spec.name}: {last_line} ({where(spec, ERROR_NAME)})"
         for spec, last_line in summary.failed]
  for spec, attempts in summary.gave_up:
    err.append(f"  GIVEN UP {spec.name}: failed {attempts} times (limit --max_attempts "
               f"{max_attempts}), not retried; see {where(spec, ERROR_NAME)}, fix the cause, "
               f"then rerun with --retry_failed.")
  return out, err
