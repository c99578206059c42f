"""python -m ftjax.sweep --config configs/sweep_paper.py --workdir runs/paper

Runs the paper's grid (datasets x archs x strategies x learning rates x seeds),
one `ftjax.train` run per cell, in <workdir>/<dataset>/<arch>/<strategy>/lr<lr>/seed<seed>/.

- Resumable: a run with results.json is skipped; an interrupted run resumes from
  its checkpoint (train_and_evaluate does that); a failed run is retried by the
  next sweep, at most --max_attempts times in all (then it is listed as given up
  until --retry_failed).
- A run whose training loss became NaN/Inf (ftjax.engine.loop.TrainingDivergedError)
  would diverge again from the same config, so it is recorded in
  <run>/diverged.json, listed as diverged (not failed, exit status unaffected)
  and not retried by later sweeps unless --retry_diverged.
- Safe to start twice on one workdir: each run is guarded by a non-blocking
  `fcntl.flock` on <run>/lock; a locked run is skipped, and picked up later if
  the process holding it dies before finishing it.
- A failing run writes <run>/error.txt (and counts the attempt in
  <run>/attempts.json) and the sweep goes on; the failures are listed at the end
  and the exit status is 1. Within one sweep a run is attempted at most once.
- One device: runs in-process, one after another. Several (`--devices N`, or
  automatic when JAX sees more than one): one `python -m ftjax.train` subprocess
  per device at a time, each seeing one device (CUDA_VISIBLE_DEVICES);
  `runs_per_gpu` in the sweep config runs that many per device, without
  preallocation and each capped to its share of the memory.
- Every run of the sweep shares one persistent JAX compilation cache
  (`compilation_cache_dir`, default <workdir>/.jax_cache; ftjax.compile_cache).
- On a cluster: --launcher slurm submits the missing runs as one job array
  (ftjax.launch; docs/distributed.md).

Subsets: --datasets isic2020,bach --strategies ft,lp --lrs 1e-4 --seeds 0,1;
--archs resnet18,resnet50 sets the architectures; --dry_run lists the runs and
their status. Every name and number is checked before a run is planned
(ftjax.sweep_args): a typo is one `error:` line naming the flag or config field,
the name and the valid names, and exit status 2. Retries: --retry_diverged,
--retry_failed, --max_attempts 3.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Callable, Iterable, Mapping, Sequence

import ml_collections
import tqdm

from ftjax import cli_flags, compile_cache, data, sweep_args
from ftjax import run as run_lib
from ftjax.data.prepared import prepared_builder
from ftjax.models import registry
from ftjax.strategies import registry as strategies

LOCK_NAME = run_lib.RunDir.LOCK
ERROR_NAME = "error.txt"
DIVERGED_NAME = "diverged.json"
ATTEMPTS_NAME = "attempts.json"  # failed attempts so far, to bound retries
RESULTS_NAME = "results.json"
RUN_CONFIG_NAME = "run_config.json"  # the run's full config, for subprocess runs
AXES = ("datasets", "archs", "strategies", "lrs", "seeds")
# local: runs on this machine (below); slurm / submitit_local: a job array (ftjax.launch).
LAUNCHERS = ("local", "slurm", "submitit_local")
MAX_ATTEMPTS = 3
TRAIN_COMMAND = (sys.executable, "-m", "ftjax.train")
# What `python -m ftjax.train` prints for a TrainingDivergedError before exiting 1.
_DIVERGED_LINE = re.compile(r"^error: (training loss is \S+ at epoch .*)$")


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


# --- Locks and status -------------------------------------------------------


RunLock = run_lib.RunLock


def expected_identity(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The identity a finished run of this per-run config has (ftjax.run), or None
  where it cannot be known yet (data not prepared, weights missing: the run
  itself then fails with the fix)."""
  try:
    _, builder = prepared_builder(config, registry.get_arch(config.arch))
    return run_lib.run_identity(config, builder)
  except (data.DataError, OSError, ValueError, TypeError):
    return None


def is_done(run_dir: pathlib.Path, identity: dict[str, Any] | None) -> bool:
  """results.json of a run with exactly this identity. Without an identity (it
  cannot be computed yet) nothing counts as done: the run is attempted, and
  train either finds it finished or says what is missing."""
  return identity is not None and run_lib.RunDir(run_dir).is_finished(identity)


def failed_attempts(run_dir: pathlib.Path) -> int:
  """Failed attempts recorded for the run (0 if none or unreadable)."""
  try:
    return int(json.loads((run_dir / ATTEMPTS_NAME).read_text())["failed"])
  except (OSError, ValueError, KeyError, TypeError):
    return 0


def diverged_error(run_dir: pathlib.Path) -> str:
  """The error line recorded in <run>/diverged.json."""
  try:
    return str(json.loads((run_dir / DIVERGED_NAME).read_text())["error"])
  except (OSError, ValueError, KeyError, TypeError):
    return "training diverged"


def status(run_dir: pathlib.Path, identity: dict[str, Any] | None = None) -> str:
  """done | other (holds a run of another identity) | unverified (finished, but this
  run's identity cannot be computed: data or weights missing) | running (locked by
  a process) | diverged | failed | partial | pending."""
  if is_done(run_dir, identity):
    return "done"
  if identity is None and (run_dir / RESULTS_NAME).exists():
    return "unverified"
  if identity is not None and run_lib.RunDir(run_dir).mismatch(identity):
    return "other"
  if (run_dir / LOCK_NAME).exists():
    lock = RunLock(run_dir)
    if not lock.acquire():
      return "running"
    lock.release()
  if (run_dir / DIVERGED_NAME).exists():
    return "diverged"
  if (run_dir / ERROR_NAME).exists():
    return "failed"
  if (run_dir / "config.json").exists():
    return "partial"
  return "pending"


# --- Executing one run --------------------------------------------------------

Runner = Callable[[RunSpec, ml_collections.ConfigDict, pathlib.Path, "str | None"], None]


def run_in_process(spec: RunSpec, config: ml_collections.ConfigDict, run_dir: pathlib.Path,
                   device: str | None = None) -> None:
  """Trains the run in this process (raises on failure)."""
  del spec, device
  from ftjax.engine import loop, training  # pylint: disable=import-outside-toplevel
  try:
    results = training.train_and_evaluate(config, run_dir, lock_held=True)
  except loop.TrainingDivergedError as error:
    raise RunDiverged(str(error)) from error
  if results is None:
    raise RuntimeError("train_and_evaluate returned without results.")


def run_in_subprocess(spec: RunSpec, config: ml_collections.ConfigDict,
                      run_dir: pathlib.Path, device: str | None = None,
                      command: Sequence[str] = TRAIN_COMMAND,
                      extra_env: Mapping[str, str] | None = None) -> None:
  """Trains the run with `python -m ftjax.train` seeing only `device`; output to log.txt.

  `command` replaces `python -m ftjax.train` (it gets --config and --workdir);
  `extra_env` is added to its environment (compilation cache, memory share).
  """
  del spec
  config_path = run_dir / RUN_CONFIG_NAME
  config_path.write_text(config.to_json_best_effort(indent=2) + "\n")
  env = dict(os.environ)
  env.update(extra_env or {})
  env[run_lib.LOCK_HELD_ENV] = str(run_dir.absolute())  # the sweep holds the run's lock
  if device is not None:
    env["CUDA_VISIBLE_DEVICES"] = device
  argv = [*command,
          "--config", f"{pathlib.Path(__file__).absolute()}:{config_path.absolute()}",
          "--workdir", str(run_dir)]
  log_path = run_dir / "log.txt"
  with open(log_path, "a") as log:
    start = log.tell()  # the log accumulates attempts; only this one's output counts
    code = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
  if code != 0:
    with open(log_path, "rb") as log:
      log.seek(start)
      lines = log.read().decode(errors="replace").splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    diverged = _DIVERGED_LINE.match(errors[-1]) if errors else None
    if diverged:
      raise RunDiverged(diverged.group(1))
    name = ("python -m ftjax.train" if tuple(command) == TRAIN_COMMAND
            else " ".join(command))
    raise RuntimeError(f"{name} exited with {code}; last lines of {log_path}:\n"
                       + "\n".join(lines[-30:]))


def get_config(path: str) -> ml_collections.ConfigDict:
  """Config-file entry point (`--config ftjax/sweep.py:<run_config.json>`): the
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


class _Queue:
  """Hands out runs that are unfinished, not to be skipped, and lockable; thread-safe."""

  def __init__(self, specs: list[RunSpec], workdir: pathlib.Path, summary: SweepSummary,
               bar: tqdm.tqdm, retry_diverged: bool, retry_failed: bool, max_attempts: int,
               identities: dict[RunSpec, dict[str, Any] | None]):
    self.pending = list(specs)
    self.identities = identities
    self.workdir, self.summary, self.bar = workdir, summary, bar
    self.retry_diverged, self.retry_failed = retry_diverged, retry_failed
    self.max_attempts = max_attempts
    self.mutex = threading.Lock()

  def take(self) -> tuple[RunSpec, RunLock] | str | None:
    """(spec, held lock), or "wait" (only runs locked elsewhere left), or None (all done)."""
    with self.mutex:
      for spec in list(self.pending):
        run_dir = spec.directory(self.workdir)
        if is_done(run_dir, self.identities[spec]):
          self._finished_elsewhere(spec)
          continue
        lock = RunLock(run_dir)
        if not lock.acquire():
          continue
        if is_done(run_dir, self.identities[spec]):  # finished between check and lock
          lock.release()
          self._finished_elsewhere(spec)
          continue
        if self._skipped(spec, run_dir):
          lock.release()
          continue
        self.pending.remove(spec)
        return spec, lock
      return "wait" if self.pending else None

  def _skipped(self, spec: RunSpec, run_dir: pathlib.Path) -> bool:
    """Records and drops a run that must not be retried (checked under its lock)."""
    reason = not_retried(run_dir, retry_diverged=self.retry_diverged,
                         retry_failed=self.retry_failed, max_attempts=self.max_attempts)
    if reason == "diverged":
      self.summary.diverged_before.append((spec, diverged_error(run_dir)))
    elif reason == "given up":
      self.summary.gave_up.append((spec, failed_attempts(run_dir)))
    else:
      return False
    self.pending.remove(spec)
    self.bar.update(1)
    return True

  def _finished_elsewhere(self, spec: RunSpec) -> None:
    self.pending.remove(spec)
    self.summary.done_elsewhere.append(spec)
    self.bar.update(1)


def run_sweep(sweep_config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
              specs: Iterable[RunSpec] | None = None, *, devices: int = 1,
              runner: Runner | None = None, poll_seconds: float = 10.0,
              progress: bool = True, retry_diverged: bool = False,
              retry_failed: bool = False, max_attempts: int = MAX_ATTEMPTS) -> SweepSummary:
  """Runs every unfinished run of `specs` (default: the whole grid).

  devices > 1 runs that many subprocesses at once, one per device (the sweep
  config's `runs_per_gpu` per device); otherwise runs go in-process one by one.
  Both share the compilation cache (`compile_cache.directory`; in-process only if
  this process has none yet). `runner` replaces how one run is executed; it
  raises RunDiverged for a run whose loss became NaN/Inf. Runs recorded as
  diverged are skipped unless `retry_diverged`; runs that already failed
  `max_attempts` times are skipped unless `retry_failed`. Returns when every run
  is done, diverged, failed or skipped, including runs another process held
  when this one reached them.
  """
  if max_attempts < 1:
    raise ValueError(f"max_attempts must be at least 1, got {max_attempts}.")
  workdir = pathlib.Path(workdir)
  specs = list(grid(sweep_config) if specs is None else specs)
  summary = SweepSummary(total=len(specs))
  # A finished run counts only with the identity this sweep would give it: one of
  # another config is run (and refused by train, naming the fields), never counted.
  identities = {s: expected_identity(s.config(sweep_config.base)) for s in specs}
  summary.already_done = [s for s in specs if is_done(s.directory(workdir), identities[s])]
  runs_per_gpu = int(sweep_config.get("runs_per_gpu", 1))
  device_ids = _device_ids(devices) * max(1, runs_per_gpu)  # that many workers per device
  if runner is None:
    runner = _default_runner(len(device_ids) > 1, compile_cache.directory(sweep_config, workdir),
                             runs_per_gpu)

  bar = tqdm.tqdm(total=len(specs), initial=len(summary.already_done), unit="run",
                  desc="sweep", disable=not progress, dynamic_ncols=True)
  queue = _Queue([s for s in specs if s not in summary.already_done], workdir, summary, bar,
                 retry_diverged, retry_failed, max_attempts, identities)
  record = threading.Lock()

  def worker(device: str | None) -> None:
    while True:
      job = queue.take()
      if job is None:
        return
      if job == "wait":  # the rest is locked by another sweep: wait for it
        time.sleep(poll_seconds)
        continue
      spec, lock = job
      run_dir = spec.directory(workdir)
      try:
        with record:
          bar.set_postfix_str(spec.name)
        (run_dir / ERROR_NAME).unlink(missing_ok=True)
        (run_dir / DIVERGED_NAME).unlink(missing_ok=True)
        runner(spec, spec.config(sweep_config.base), run_dir, device)
        (run_dir / ATTEMPTS_NAME).unlink(missing_ok=True)
        with record:
          summary.ran.append(spec)
      except RunDiverged as diverged:
        # Deterministic: the same config diverges again, so later sweeps skip it.
        _write_json(run_dir / DIVERGED_NAME, {
            "run": spec.name, "lr": spec.lr, "seed": spec.seed, "error": str(diverged),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        with record:
          summary.diverged.append((spec, str(diverged)))
          tqdm.tqdm.write(f"DIVERGED {spec.name}: see {run_dir / DIVERGED_NAME}")
      except Exception:  # pylint: disable=broad-except
        # One failing run must not stop the grid: log it and go on.
        message = traceback.format_exc()
        (run_dir / ERROR_NAME).write_text(message)
        attempts = failed_attempts(run_dir) + 1
        _write_json(run_dir / ATTEMPTS_NAME, {"failed": attempts})
        with record:
          summary.failed.append((spec, message.strip().splitlines()[-1]))
          tqdm.tqdm.write(f"FAILED {spec.name} (attempt {attempts}; sweeps try a run up to "
                          f"--max_attempts {max_attempts} times): see {run_dir / ERROR_NAME}")
      finally:
        lock.release()
      with record:
        bar.update(1)
        bar.set_postfix(failed=len(summary.failed), diverged=len(summary.diverged))

  if len(device_ids) == 1:
    worker(device_ids[0])
  else:
    threads = [threading.Thread(target=worker, args=(d,), daemon=True) for d in device_ids]
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join()
  bar.close()
  return summary


def _default_runner(subprocesses: bool, cache_dir: pathlib.Path | None,
                    runs_per_gpu: int) -> Runner:
  """In-process runs (this process gets the cache), or subprocesses given the cache
  and, when runs share a device, a share of its memory."""
  if not subprocesses:
    compile_cache.enable(cache_dir)
    return run_in_process
  env = {**compile_cache.environment(cache_dir), **memory_environment(runs_per_gpu)}
  return functools.partial(run_in_subprocess, extra_env=env)


def memory_environment(runs_per_gpu: int) -> dict[str, str]:
  """For processes sharing one GPU: no preallocation (JAX's default takes 75% of the
  GPU at start, which fails the second process) and each a cap of its share."""
  if runs_per_gpu <= 1:
    return {}
  return {"XLA_PYTHON_CLIENT_PREALLOCATE": "false",
          "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / runs_per_gpu:.3f}"}


def _write_json(path: pathlib.Path, value: dict) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(value, indent=2) + "\n")
  tmp.replace(path)


def _device_ids(devices: int) -> list[str | None]:
  """Device ids for CUDA_VISIBLE_DEVICES, within any visibility already set."""
  if devices <= 1:
    return [None]
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  ids = visible.split(",") if visible else [str(i) for i in range(devices)]
  if len(ids) < devices:
    raise ValueError(f"--devices {devices}, but CUDA_VISIBLE_DEVICES={visible} lists "
                     f"{len(ids)}.")
  return ids[:devices]


def count_devices() -> int:
  """jax.local_device_count(), asked in a child process so that this one never
  initialises (and pre-allocates memory on) the accelerators its runs need."""
  try:
    out = subprocess.run([sys.executable, "-c",
                          "import jax; print(jax.local_device_count())"],
                         capture_output=True, text=True, check=True, timeout=300)
    return int(out.stdout.strip().splitlines()[-1])
  except (subprocess.SubprocessError, ValueError, IndexError):
    return 1


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


def main(argv) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    cli_flags.usage_error(f"unexpected arguments {argv[1:]}; every option is a --flag.")
  f = flags.FLAGS
  if f.config is None:
    cli_flags.usage_error("--config is required, e.g. --config configs/sweep_paper.py")
  # Every name and number is checked before a run is planned (a typo is one line,
  # never a grid of runs that fail, or an array submitted to the cluster).
  try:
    sweep_args.check_config(f.config)
    specs = grid(f.config, **sweep_args.choose(f.config, {a: getattr(f, a) for a in AXES}))
  except ValueError as error:
    cli_flags.usage_error(str(error))
  launcher = f.launcher or f.config.get("launcher", "local")
  if launcher not in LAUNCHERS:
    cli_flags.usage_error(f"config.launcher={launcher!r}: use one of {', '.join(LAUNCHERS)}.")
  if launcher != "local":
    from ftjax import launch  # pylint: disable=import-outside-toplevel
    try:
      sys.exit(launch.main(f.config, f.workdir, specs, launcher, dry_run=f.dry_run,
                           wait_for_jobs=f.wait, poll_seconds=f.poll_seconds,
                           retry_diverged=f.retry_diverged, retry_failed=f.retry_failed,
                           max_attempts=f.max_attempts))
    except launch.LaunchError as error:
      print(f"error: {error}", file=sys.stderr)
      sys.exit(1)
  if f.dry_run:
    print(describe(specs, f.workdir, f.config.base))
    return
  devices = f.devices if f.devices > 0 else count_devices()
  print(f"{len(specs)} runs in {f.workdir} on {devices} device(s) "
        f"({'subprocesses' if devices > 1 else 'in-process'}).", flush=True)
  summary = run_sweep(f.config, f.workdir, specs, devices=devices,
                      poll_seconds=f.poll_seconds, retry_diverged=f.retry_diverged,
                      retry_failed=f.retry_failed, max_attempts=f.max_attempts)
  out, err = summary_lines(summary, f.workdir, f.max_attempts)
  print("\n".join(out), flush=True)
  if err:
    print("\n".join(err), file=sys.stderr)
  if not summary.ok:
    sys.exit(1)


if __name__ == "__main__":
  # Flags only for the command line: other modules import this one.
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", None, "sweep config file (configs/sweep_paper.py);"
                                  " override with --config.base.num_epochs=10 etc.")
  flags.DEFINE_string("workdir", "runs/paper", "root of the run directories")
  for _axis in AXES:
    flags.DEFINE_string(_axis, None, "comma-separated architectures to run (any of the "
                        "registry's; replaces the config's)" if _axis == "archs" else
                        f"comma-separated subset of the sweep's {_axis}")
  flags.DEFINE_boolean("dry_run", False, "list the runs and their status; run nothing "
                       "(--launcher slurm: also print the sbatch script)")
  flags.DEFINE_enum("launcher", None, LAUNCHERS, "where runs go: local (this machine), "
                    "slurm (one job array, ftjax.launch) or submitit_local (the job path as "
                    "local processes); default: the config's launcher field, else local")
  flags.DEFINE_boolean("wait", False, "--launcher slurm: wait until the submitted jobs "
                       "leave the queue, then show the status (exit 1 if runs are missing)")
  flags.DEFINE_integer("devices", 0, "runs at once, one per device (subprocesses); "
                       "0: jax.local_device_count()")
  flags.DEFINE_float("poll_seconds", 10.0, "wait between checks on runs locked by another "
                     "sweep, or on submitted jobs (--wait)")
  flags.DEFINE_boolean("retry_diverged", False, "also run again the runs an earlier sweep "
                       "recorded as diverged (<run>/diverged.json); they resume from their "
                       "last good checkpoint with the same config")
  flags.DEFINE_boolean("retry_failed", False, "also run again the runs that already failed "
                       "--max_attempts times")
  flags.DEFINE_integer("max_attempts", MAX_ATTEMPTS, "failed attempts after which later "
                       "sweeps stop retrying a run", lower_bound=1)
  app.run(main, flags_parser=cli_flags.parse)
