"""Running a sweep's runs on this machine: in-process one after another, or one
`python -m ftjax.train` subprocess per device, with locks, retries and progress.
"""

from __future__ import annotations

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

from ftjax import compile_cache
from ftjax import run as run_lib
from ftjax.engine import loop, training
from ftjax.run import (ATTEMPTS_NAME, DIVERGED_NAME, ERROR_NAME, RUN_CONFIG_NAME,
                       RunLock, diverged_error, failed_attempts, is_done)
from ftjax.sweep.plan import (MAX_ATTEMPTS, RunDiverged, RunSpec, SweepSummary,
                              expected_identity, grid, not_retried)

TRAIN_COMMAND = (sys.executable, "-m", "ftjax.train")
# What `python -m ftjax.train` prints for a TrainingDivergedError before exiting 1.
_DIVERGED_LINE = re.compile(r"^error: (training loss is \S+ at epoch .*)$")

# --- Executing one run --------------------------------------------------------

Runner = Callable[[RunSpec, ml_collections.ConfigDict, pathlib.Path, "str | None"], None]


def run_in_process(spec: RunSpec, config: ml_collections.ConfigDict, run_dir: pathlib.Path,
                   device: str | None = None) -> None:
  """Trains the run in this process (raises on failure)."""
  del spec, device
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
