"""A sweep's runs as one SLURM job array, through submitit.

  python -m ftjax.sweep --config configs/sweep_paper.py --workdir /shared/runs/paper \\
      --launcher slurm --config.slurm.partition=gpu --config.slurm.timeout_min=240

run on a login node, lists every run's status and submits the runs that are
neither finished, nor running, nor queued, as one job array (one array task per
run; `--dry_run` prints the sbatch script instead). Each task is `RunTask`: the
local sweep's own path for one run (`local.run_sweep` on that one run, in
process), so it writes the same run directory, takes the same lock and records
failures and divergence the same way.

Running the same command again shows the status, and submits only what is
missing: a run counts as queued while the job recorded for it in
<workdir>/.submitit/submitted.json is still listed by `squeue` (no accounting
database needed), and as running while a process holds its lock.

Preemption and time limits: SLURM sends SIGTERM before it preempts a job, and
submitit asks for SIGUSR2 90 s before the time limit; either (or SIGUSR1) asks
the run to stop after its current epoch and that epoch's checkpoint
(`loop.request_stop`); the task then has submitit requeue it, and the requeued
task resumes from the checkpoint to the result an uninterrupted run gets. A job
killed before the epoch ends (its grace time was shorter than an epoch) resumes
from the epoch before, to the same result.

Before anything is listed or submitted, every `slurm` field that reaches the sbatch
script, and the workdir whose path names the job and its logs, is checked
(ftjax.sweep.slurm_options): a line break in a value, an unknown sbatch flag name, a
non-positive number is one `error:` line.

`launcher = "submitit_local"` runs the same tasks as local processes through
submitit's LocalExecutor (to try the path without a cluster; the tests do).
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Sequence

import ml_collections
from ml_collections import config_dict
import submitit

from ftjax import compile_cache
from ftjax.engine import loop
from ftjax import run as run_lib
from ftjax.sweep import local
from ftjax.sweep import plan as grid_plan
from ftjax.sweep.slurm_options import LaunchError, SlurmOptions, check_text

LAUNCHERS = grid_plan.LAUNCHERS
SUBMITIT_DIR = ".submitit"  # submitit's pickles and job logs, inside the sweep workdir
SUBMITTED_NAME = "submitted.json"  # run name -> the job that was submitted for it
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # plus submitit's own (SIGUSR2)
# A run in one of these states is not submitted (see `to_submit`).
NOT_SUBMITTED = ("done", "running")


def add_cluster_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds a sweep config's launcher fields (each overridable on the command line:
  --config.slurm.partition=gpu): `launcher`, `slurm`, `compilation_cache_dir`
  (None: <workdir>/.jax_cache; "": none) and `runs_per_gpu`."""
  config.launcher = "local"
  config.compilation_cache_dir = config_dict.placeholder(str)
  config.runs_per_gpu = 1
  slurm = config.slurm = ml_collections.ConfigDict()
  slurm.partition = config_dict.placeholder(str)
  slurm.account = config_dict.placeholder(str)
  slurm.qos = config_dict.placeholder(str)
  slurm.gpus_per_task = 1
  slurm.cpus_per_task = 8
  slurm.mem_gb = 32
  slurm.timeout_min = 240
  slurm.array_parallelism = 64
  slurm.max_requeues = 3  # time limits a task may hit before it is given up
  # More sbatch flags, comma-separated name=value: "constraint=a100,mail-type=END".
  slurm.additional = ""
  return config


# --- The array task -----------------------------------------------------------------


class RunTask(submitit.helpers.Checkpointable):
  """One array task: one run, by the local sweep's path (in process).

  On SIGTERM/SIGUSR1/SIGUSR2 the run stops after its current epoch's checkpoint;
  the task then hands over to submitit's own preemption handler, which calls
  `checkpoint` (the same task again: the run resumes from its checkpoint) and
  requeues the job. A run that failed raises, so SLURM records the task as failed.
  """

  def __init__(self, sweep_config: ml_collections.ConfigDict, workdir: str,
               retry_diverged: bool = False, retry_failed: bool = False,
               max_attempts: int = grid_plan.MAX_ATTEMPTS):
    self.sweep_config = sweep_config
    self.workdir = workdir
    self.retry = dict(retry_diverged=retry_diverged, retry_failed=retry_failed,
                      max_attempts=max_attempts)

  def __call__(self, spec: grid_plan.RunSpec) -> dict[str, Any]:
    requeue = _stop_at_safe_point()
    os.environ.update(local.memory_environment(int(self.sweep_config.get("runs_per_gpu", 1))))
    compile_cache.enable(compile_cache.directory(self.sweep_config, self.workdir))
    stats = compile_cache.watch()
    try:
      summary = local.run_sweep(self.sweep_config, self.workdir, [spec], devices=1,
                                runner=local.run_in_process, progress=False, **self.retry)
    except loop.Preempted as preempted:
      print(f"{spec.name}: {preempted}; asking to be requeued.", flush=True)
      requeue()
      raise
    out, err = grid_plan.summary_lines(summary, self.workdir, self.retry["max_attempts"])
    print("\n".join(out + err), flush=True)
    print(f"compile cache: {stats.hits} hits, {stats.misses} misses, "
          f"{stats.compile_seconds:.1f} s compiling", flush=True)
    if not summary.ok:
      raise RuntimeError(f"{spec.name}: {(err or out)[-1].strip()}")
    return {"run": spec.name, "ok": True, "compile": stats.to_json()}


def _stop_at_safe_point():
  """Makes the stop signals ask for a stop at the next safe point (loop.request_stop)
  instead of killing the process; returns what requeues the job once the run has
  stopped: submitit's own handler, called outside the signal context (a no-op
  outside a submitit job)."""
  preempt = submitit.JobEnvironment._usr_sig()  # pylint: disable=protected-access
  submitit_handler = signal.getsignal(preempt)

  def on_signal(signum, frame):
    del frame
    print(f"received {signal.Signals(signum).name}: stopping after this epoch's "
          f"checkpoint.", flush=True)
    loop.request_stop()

  for signum in (*STOP_SIGNALS, preempt):
    signal.signal(signum, on_signal)

  def requeue() -> None:
    if callable(submitit_handler):  # checkpoints, requeues and exits
      submitit_handler(preempt, None)
  return requeue


# --- Which runs to submit ----------------------------------------------------------


def submitted_path(workdir: str | pathlib.Path) -> pathlib.Path:
  return pathlib.Path(workdir) / SUBMITIT_DIR / SUBMITTED_NAME


def read_submitted(workdir: str | pathlib.Path) -> dict[str, dict[str, Any]]:
  """run name -> {"job_id", "launcher", "time"} of its last submission."""
  path = submitted_path(workdir)
  try:
    recorded = json.loads(path.read_text())
  except FileNotFoundError:
    return {}
  except (OSError, ValueError) as error:
    raise LaunchError(f"{path}: unreadable ({error}); remove it after checking `squeue` for "
                     f"this sweep's jobs (runs then count as not queued).") from error
  return recorded if isinstance(recorded, dict) else {}


def record_submitted(workdir: str | pathlib.Path, jobs: dict[str, str], launcher: str) -> None:
  recorded = read_submitted(workdir)
  stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
  recorded.update({name: {"job_id": job_id, "launcher": launcher, "time": stamp}
                   for name, job_id in jobs.items()})
  run_lib.write_atomic(submitted_path(workdir), json.dumps(recorded, indent=2) + "\n")


def active_jobs(launcher: str, job_ids: Sequence[str]) -> set[str]:
  """The job ids still queued or running: listed by squeue (SLURM), or whose
  controller process is alive (submitit_local)."""
  if launcher == "submitit_local":
    return {j for j in job_ids if _process_alive(int(j))}
  if not job_ids:
    return set()
  try:
    listed = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i"],
                            capture_output=True, text=True, check=True, timeout=120).stdout
  except (OSError, subprocess.SubprocessError) as error:
    raise LaunchError(f"cannot ask squeue which jobs are queued ({error}); run the sweep on a "
                       f"machine of the cluster.") from error
  return set(listed.split()) & set(job_ids)


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


@dataclasses.dataclass
class Plan:
  """Each run's status and what to do with it."""
  states: dict[grid_plan.RunSpec, str]
  queued: dict[grid_plan.RunSpec, str]  # run -> its job, still in the queue
  not_retried: dict[grid_plan.RunSpec, str]  # run -> "diverged" / "given up"
  submit: list[grid_plan.RunSpec]


def plan(sweep_config: ml_collections.ConfigDict, workdir: pathlib.Path,
         specs: Sequence[grid_plan.RunSpec], launcher: str, *, retry_diverged: bool = False,
         retry_failed: bool = False, max_attempts: int = grid_plan.MAX_ATTEMPTS) -> Plan:
  """The rule: a run is submitted unless it is done, running (its lock is held),
  queued (its recorded job is still queued), or not to be retried (diverged, or
  failed max_attempts times) -- the local sweep's rules, plus the queue."""
  states = {s: run_lib.status(s.directory(workdir), grid_plan.expected_identity(
      s.config(sweep_config.base))) for s in specs}
  unfinished = {s.name for s in specs if states[s] not in NOT_SUBMITTED}
  recorded = {name: str(entry.get("job_id")) for name, entry in read_submitted(workdir).items()
              if isinstance(entry, dict) and entry.get("launcher") == launcher
              and name in unfinished}  # the queue is asked only about what is missing
  alive = active_jobs(launcher, sorted(set(recorded.values())))
  queued = {s: recorded[s.name] for s in specs if recorded.get(s.name) in alive}
  skipped = {}
  for spec in specs:
    reason = grid_plan.not_retried(spec.directory(workdir), retry_diverged=retry_diverged,
                               retry_failed=retry_failed, max_attempts=max_attempts)
    if reason and states[spec] not in NOT_SUBMITTED:
      skipped[spec] = reason
  submit = [s for s in specs if states[s] not in NOT_SUBMITTED and s not in queued
            and s not in skipped]
  return Plan(states, queued, skipped, submit)


def describe_plan(p: Plan) -> str:
  lines = []
  for spec, state in p.states.items():
    if spec in p.queued:
      state = f"queued (job {p.queued[spec]})"
    elif spec in p.not_retried:
      state = f"{state}, {p.not_retried[spec]}: not resubmitted"
    lines.append(f"{state:8s} {spec.name}")
  counts: dict[str, int] = {}
  for spec, state in p.states.items():
    key = "queued" if spec in p.queued else state
    counts[key] = counts.get(key, 0) + 1
  lines.append(f"{len(p.states)} runs: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
               + f"; {len(p.submit)} to submit.")
  return "\n".join(lines)


# --- Submitting -----------------------------------------------------------------------


def executor(launcher: str, folder: pathlib.Path, options: SlurmOptions, job_name: str):
  """submitit's executor for the launcher, with the tasks' resources."""
  if launcher == "slurm":
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm",
                               slurm_max_num_timeout=options.max_requeues)
    ex.update_parameters(**{f"slurm_{k}": v
                            for k, v in options.sbatch_parameters(job_name).items()})
    return ex
  ex = submitit.AutoExecutor(folder=folder, cluster="local")
  ex.update_parameters(timeout_min=options.timeout_min, name=job_name)
  return ex


def sbatch_script(options: SlurmOptions, folder: pathlib.Path, count: int, job_name: str) -> str:
  """The sbatch script submitit writes for an array of `count` tasks (for --dry_run;
  generated by submitit itself, without needing sbatch on this machine)."""
  from submitit.slurm import slurm  # pylint: disable=import-outside-toplevel
  command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit",
                      shlex.quote(str(folder))])
  return slurm._make_sbatch_string(  # pylint: disable=protected-access
      command=command, folder=folder, map_count=max(count, 1),
      **options.sbatch_parameters(job_name))


def job_name(workdir: pathlib.Path) -> str:
  return f"ftjax-{workdir.name}"


def submit(sweep_config: ml_collections.ConfigDict, workdir: pathlib.Path,
           specs: Sequence[grid_plan.RunSpec], launcher: str, **retry: Any) -> list[Any]:
  """Submits the plan's runs as one job array; records and returns the jobs."""
  p = plan(sweep_config, workdir, specs, launcher, **retry)
  print(describe_plan(p), flush=True)
  if not p.submit:
    return []
  options = SlurmOptions.from_config(sweep_config)
  ex = executor(launcher, workdir / SUBMITIT_DIR / "%j", options, job_name(workdir))
  task = RunTask(sweep_config, str(workdir), **retry)
  jobs = ex.map_array(task, p.submit)
  record_submitted(workdir, {s.name: j.job_id for s, j in zip(p.submit, jobs)}, launcher)
  ids = sorted({j.job_id.split("_")[0] for j in jobs})
  print(f"submitted {len(jobs)} run(s) as job {', '.join(ids)} ({launcher}); logs in "
        f"{workdir / SUBMITIT_DIR}. Run the same command again to see the status and "
        f"submit what is missing.", flush=True)
  return jobs


def wait(jobs: Sequence[Any], launcher: str, poll_seconds: float) -> None:
  """Until every job has left the queue (finished, failed or cancelled): asked of
  squeue on SLURM (submitit's own check needs the accounting database)."""
  ids = [job.job_id for job in jobs]
  while (active_jobs(launcher, ids) if launcher == "slurm"
         else not all(job.done() for job in jobs)):  # a local job's process, reaped
    time.sleep(poll_seconds)


def main(sweep_config: ml_collections.ConfigDict, workdir: str, specs: Sequence[grid_plan.RunSpec],
         launcher: str, *, dry_run: bool, wait_for_jobs: bool, poll_seconds: float,
         **retry: Any) -> int:
  """`ftjax.sweep --launcher slurm|submitit_local`; returns the exit status."""
  root = pathlib.Path(workdir).absolute()
  # A bad setting stops here, before anything is looked at: every field of the
  # sbatch script (ftjax.sweep.slurm_options), the workdir's path included (the job's
  # name and log paths).
  check_text("--workdir", str(root))
  options = SlurmOptions.from_config(sweep_config)
  if dry_run:
    p = plan(sweep_config, root, specs, launcher, **retry)
    print(describe_plan(p))
    if launcher == "slurm":
      print(f"\n# The sbatch script for these {len(p.submit)} run(s):")
      print(sbatch_script(options, root / SUBMITIT_DIR / "%j", len(p.submit), job_name(root)))
    return 0
  jobs = submit(sweep_config, root, specs, launcher, **retry)
  if not (wait_for_jobs or launcher == "submitit_local") or not jobs:
    return 0
  wait(jobs, launcher, poll_seconds)
  p = plan(sweep_config, root, specs, launcher, **retry)
  print(describe_plan(p), flush=True)
  # As for a local sweep, a diverged run is an outcome, not a fault.
  unfinished = [s for s, state in p.states.items() if state not in ("done", "diverged")]
  return 1 if unfinished else 0
