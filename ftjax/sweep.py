"""python -m ftjax.sweep --config configs/sweep_paper.py --workdir runs/paper

Runs the paper's grid (datasets x archs x strategies x learning rates x seeds),
one `ftjax.train` run per cell, in <workdir>/<dataset>/<arch>/<strategy>/lr<lr>/seed<seed>/.

- Resumable: a run with results.json is skipped; an interrupted run resumes from
  its checkpoint (train_and_evaluate does that); a failed run is retried.
- Safe to start twice on one workdir: each run is guarded by a non-blocking
  `fcntl.flock` on <run>/lock; a locked run is skipped, and picked up later if
  the process holding it dies before finishing it.
- A failing run writes <run>/error.txt and the sweep goes on; the failures are
  listed at the end and the exit status is 1.
- One device: runs in-process, one after another. Several (`--devices N`, or
  automatic when JAX sees more than one): one `python -m ftjax.train` subprocess
  per device at a time, each seeing one device (CUDA_VISIBLE_DEVICES).

Subsets: --datasets isic2020,bach --archs resnet50 --strategies ft,lp --lrs 1e-4
--seeds 0,1; --dry_run lists the runs and their status.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Callable, Iterable, Sequence

import ml_collections
import tqdm

LOCK_NAME = "lock"
ERROR_NAME = "error.txt"
RESULTS_NAME = "results.json"
RUN_CONFIG_NAME = "run_config.json"  # the run's full config, for subprocess runs
AXES = ("datasets", "archs", "strategies", "lrs", "seeds")


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
          for s in values["strategies"] for lr in values["lrs"] for seed in values["seeds"]]


# --- Locks and status -------------------------------------------------------


class RunLock:
  """A non-blocking exclusive flock on <run>/lock; `acquire` says if it got it.

  flock locks belong to the open file, so two processes (or two RunLock objects
  in one process) exclude each other, and a dead process's lock is released by
  the kernel: no stale lock files to clean up.
  """

  def __init__(self, run_dir: pathlib.Path):
    self.path = pathlib.Path(run_dir) / LOCK_NAME
    self._fd: int | None = None

  def acquire(self) -> bool:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      return False
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    self._fd = fd
    return True

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def is_done(run_dir: pathlib.Path) -> bool:
  return (run_dir / RESULTS_NAME).exists()


def status(run_dir: pathlib.Path) -> str:
  """done | running (locked by a process) | failed | partial | pending."""
  if is_done(run_dir):
    return "done"
  if (run_dir / LOCK_NAME).exists():
    lock = RunLock(run_dir)
    if not lock.acquire():
      return "running"
    lock.release()
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
  from ftjax import train  # pylint: disable=import-outside-toplevel
  if train.train_and_evaluate(config, run_dir) is None:
    raise RuntimeError("train_and_evaluate returned without results.")


def run_in_subprocess(spec: RunSpec, config: ml_collections.ConfigDict,
                      run_dir: pathlib.Path, device: str | None = None) -> None:
  """Trains the run with `python -m ftjax.train` seeing only `device`; output to log.txt."""
  del spec
  config_path = run_dir / RUN_CONFIG_NAME
  config_path.write_text(config.to_json_best_effort(indent=2) + "\n")
  env = dict(os.environ)
  if device is not None:
    env["CUDA_VISIBLE_DEVICES"] = device
  command = [sys.executable, "-m", "ftjax.train",
             "--config", f"{pathlib.Path(__file__).absolute()}:{config_path.absolute()}",
             "--workdir", str(run_dir)]
  with open(run_dir / "log.txt", "a") as log:
    code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env)
  if code != 0:
    tail = (run_dir / "log.txt").read_text().splitlines()[-30:]
    raise RuntimeError(f"python -m ftjax.train exited with {code}; last lines of "
                       f"{run_dir / 'log.txt'}:\n" + "\n".join(tail))


def get_config(path: str) -> ml_collections.ConfigDict:
  """Config-file entry point (`--config ftjax/sweep.py:<run_config.json>`): the
  per-run config a sweep wrote for a subprocess run."""
  return ml_collections.ConfigDict(json.loads(pathlib.Path(path).read_text()))


# --- The sweep ----------------------------------------------------------------


@dataclasses.dataclass
class SweepSummary:
  total: int
  ran: list[RunSpec] = dataclasses.field(default_factory=list)
  already_done: list[RunSpec] = dataclasses.field(default_factory=list)
  done_elsewhere: list[RunSpec] = dataclasses.field(default_factory=list)
  failed: list[tuple[RunSpec, str]] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return not self.failed


class _Queue:
  """Hands out runs that are unfinished and lockable; thread-safe."""

  def __init__(self, specs: list[RunSpec], workdir: pathlib.Path, summary: SweepSummary,
               bar: tqdm.tqdm):
    self.pending = list(specs)
    self.workdir, self.summary, self.bar = workdir, summary, bar
    self.mutex = threading.Lock()
    self.first_pass = True

  def take(self) -> tuple[RunSpec, RunLock] | str | None:
    """(spec, held lock), or "wait" (only runs locked elsewhere left), or None (all done)."""
    with self.mutex:
      for spec in list(self.pending):
        run_dir = spec.directory(self.workdir)
        if is_done(run_dir):
          self._finished_elsewhere(spec)
          continue
        lock = RunLock(run_dir)
        if not lock.acquire():
          continue
        if is_done(run_dir):  # finished between the check and the lock
          lock.release()
          self._finished_elsewhere(spec)
          continue
        self.pending.remove(spec)
        return spec, lock
      return "wait" if self.pending else None

  def _finished_elsewhere(self, spec: RunSpec) -> None:
    self.pending.remove(spec)
    self.summary.done_elsewhere.append(spec)
    self.bar.update(1)


def run_sweep(sweep_config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
              specs: Iterable[RunSpec] | None = None, *, devices: int = 1,
              runner: Runner | None = None, poll_seconds: float = 10.0,
              progress: bool = True) -> SweepSummary:
  """Runs every unfinished run of `specs` (default: the whole grid).

  devices > 1 runs that many subprocesses at once, one per device; otherwise
  runs go in-process one by one. `runner` replaces how one run is executed.
  Returns when every run is done or failed, including runs another process
  held when this one reached them.
  """
  workdir = pathlib.Path(workdir)
  specs = list(grid(sweep_config) if specs is None else specs)
  summary = SweepSummary(total=len(specs))
  summary.already_done = [s for s in specs if is_done(s.directory(workdir))]
  if runner is None:
    runner = run_in_subprocess if devices > 1 else run_in_process
  device_ids = _device_ids(devices)

  bar = tqdm.tqdm(total=len(specs), initial=len(summary.already_done), unit="run",
                  desc="sweep", disable=not progress, dynamic_ncols=True)
  queue = _Queue([s for s in specs if s not in summary.already_done], workdir, summary, bar)
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
        runner(spec, spec.config(sweep_config.base), run_dir, device)
        with record:
          summary.ran.append(spec)
      except Exception:  # pylint: disable=broad-except
        # One failing run must not stop the grid: log it and go on.
        message = traceback.format_exc()
        (run_dir / ERROR_NAME).write_text(message)
        with record:
          summary.failed.append((spec, message.strip().splitlines()[-1]))
          tqdm.tqdm.write(f"FAILED {spec.name}: see {run_dir / ERROR_NAME}")
      finally:
        lock.release()
      with record:
        bar.update(1)
        bar.set_postfix(failed=len(summary.failed))

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


def describe(specs: Sequence[RunSpec], workdir: str | pathlib.Path) -> str:
  """One line per run with its status, and the counts (for --dry_run)."""
  counts: dict[str, int] = {}
  lines = []
  for spec in specs:
    state = status(spec.directory(workdir))
    counts[state] = counts.get(state, 0) + 1
    lines.append(f"{state:8s} {spec.name}")
  lines.append(f"{len(specs)} runs: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
  return "\n".join(lines)


def _split(value: str | None) -> list[str] | None:
  return [v for v in value.split(",") if v] if value else None


def main(argv) -> None:
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if f.config is None:
    raise app.UsageError("--config is required, e.g. --config configs/sweep_paper.py")
  try:
    specs = grid(f.config, **{axis: _split(getattr(f, axis)) for axis in AXES})
  except ValueError as error:
    raise app.UsageError(str(error))
  if f.dry_run:
    print(describe(specs, f.workdir))
    return
  devices = f.devices if f.devices > 0 else count_devices()
  print(f"{len(specs)} runs in {f.workdir} on {devices} device(s) "
        f"({'subprocesses' if devices > 1 else 'in-process'}).", flush=True)
  summary = run_sweep(f.config, f.workdir, specs, devices=devices,
                      poll_seconds=f.poll_seconds)
  print(f"sweep: {len(summary.ran)} ran, {len(summary.already_done)} already done, "
        f"{len(summary.done_elsewhere)} finished by another process, "
        f"{len(summary.failed)} failed, of {summary.total}.")
  for spec, last_line in summary.failed:
    print(f"  FAILED {spec.name}: {last_line} "
          f"({spec.directory(f.workdir) / ERROR_NAME})", file=sys.stderr)
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
    flags.DEFINE_string(_axis, None, f"comma-separated subset of the sweep's {_axis}")
  flags.DEFINE_boolean("dry_run", False, "list the runs and their status; run nothing")
  flags.DEFINE_integer("devices", 0, "runs at once, one per device (subprocesses); "
                       "0: jax.local_device_count()")
  flags.DEFINE_float("poll_seconds", 10.0, "wait between checks on runs locked by another "
                     "sweep")
  app.run(main)
