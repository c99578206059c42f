"""ftjax.sweep.slurm (a sweep as a submitit job array, preemption and requeue) and
ftjax.compile_cache, on the tiny synthetic sweep of tests/test_sweep_report.py."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import pytest

from ftjax import compile_cache, report, sweep
from ftjax.sweep import local as sweep_local
from ftjax.sweep import slurm as launch
from ftjax import run as run_lib
from tests.test_sweep_report import _overrides, tiny_sweep_config, write_result

REPO = pathlib.Path(__file__).resolve().parents[1]


def grid_2x2(data_dir, num_epochs=3):
  """ft, lp x seeds 0, 1 at one lr; three epochs, so that a run signalled in its first
  or second epoch stops between two of them."""
  config = tiny_sweep_config(data_dir, strategies=("ft", "lp"), lrs=(1e-3,), seeds=(0, 1))
  config.base.num_epochs = num_epochs
  launch.add_cluster_fields(config)
  return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("launch_data")


def _wait_for(predicate, seconds: float, what: str) -> None:
  deadline = time.time() + seconds
  while not predicate():
    if time.time() > deadline:
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(0.05)


def _results(workdir: pathlib.Path, spec: sweep.RunSpec) -> dict:
  return json.loads((spec.directory(workdir) / "results.json").read_text())


def _epochs(workdir: pathlib.Path, spec: sweep.RunSpec) -> list[dict]:
  lines = (spec.directory(workdir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


# --- The job array, one task preempted ---------------------------------------------


def test_job_array_with_a_preempted_task_equals_the_local_sweep(data_dir, tmp_path):
  config = grid_2x2(data_dir)
  # The tasks share this process's compilation cache: the local sweep below fills it.
  config.compilation_cache_dir = jax.config.jax_compilation_cache_dir
  specs = sweep.grid(config)
  assert len(specs) == 4
  local, array = tmp_path / "local", tmp_path / "array"
  assert sweep.run_sweep(config, local, specs, progress=False).ok

  jobs = launch.submit(config, array, specs, "submitit_local")
  assert len(jobs) == 4
  victim_spec, victim = specs[0], jobs[0]
  # SIGTERM once the run has claimed its directory (the task's handlers are in
  # place by then), to the job's controller, which forwards it as SLURM does.
  _wait_for(lambda: (victim_spec.directory(array) / "config.json").exists(), 120,
            "the first run to start")
  os.kill(int(victim.job_id), signal.SIGTERM)
  launch.wait(jobs, "submitit_local", poll_seconds=0.2)
  outputs = [job.result() for job in jobs]  # raises if a task failed
  log = victim.paths.stdout.read_text()
  assert "received SIGTERM" in log and "asking to be requeued" in log, log[-3000:]
  stopped = int(log.split("stopped after epoch ")[1].split(",")[0])
  assert stopped in (1, 2) and f"resuming after epoch {stopped}." in log, log[-3000:]
  assert all(o["ok"] for o in outputs)

  # Every run equals its local twin, the preempted one included, epoch by epoch.
  for spec in specs:
    mine, theirs = _results(array, spec), _results(local, spec)
    for key in ("validation", "test", "best_epoch", "epochs_run", "stopped_early"):
      assert mine[key] == theirs[key], (spec.name, key)
    assert [e["train_loss"] for e in _epochs(array, spec)] == [
        e["train_loss"] for e in _epochs(local, spec)]
  assert len(_epochs(array, victim_spec)) == 3  # no epoch logged twice after the resume
  # The report on the array's runs is the local sweep's report.
  mine, theirs = report.study(array), report.study(local)
  assert mine.cells == theirs.cells and mine.selections == theirs.selections

  # The shared compilation cache: every task loaded the local sweep's programs.
  assert all(o["compile"]["hits"] > 0 for o in outputs)
  # Submitted jobs are recorded; the same command now has nothing to submit.
  recorded = launch.read_submitted(array)
  assert {recorded[s.name]["job_id"] for s in specs} == {j.job_id for j in jobs}
  again = launch.plan(config, array, specs, "submitit_local")
  assert not again.submit and set(again.states.values()) == {"done"}


# --- Which runs are submitted --------------------------------------------------------


def test_plan_submits_only_what_is_missing(data_dir, tmp_path):
  config = grid_2x2(data_dir)
  config.seeds = (0, 1, 2, 3)
  specs = sweep.grid(config)  # ft and lp x four seeds: eight runs
  workdir = tmp_path / "runs"
  identity = lambda s: sweep.expected_identity(s.config(config.base))
  done, running, queued, ended, diverged, gave_up, failed_once, fresh = specs
  write_result(workdir, done, {"accuracy": 0.5}, {"accuracy": 0.5}, identity=identity(done))
  lock = run_lib.RunLock(running.directory(workdir))
  running.directory(workdir).mkdir(parents=True)
  assert lock.acquire()
  diverged.directory(workdir).mkdir(parents=True)
  (diverged.directory(workdir) / run_lib.DIVERGED_NAME).write_text('{"error": "nan"}')
  for spec, attempts in ((gave_up, sweep.MAX_ATTEMPTS), (failed_once, 1)):
    spec.directory(workdir).mkdir(parents=True)
    (spec.directory(workdir) / run_lib.ERROR_NAME).write_text("boom")
    (spec.directory(workdir) / run_lib.ATTEMPTS_NAME).write_text(json.dumps({"failed": attempts}))
  # A live job (this process) still holds `queued`; `ended`'s job is gone.
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  launch.record_submitted(workdir, {queued.name: str(os.getpid()),
                                    ended.name: str(dead.pid)}, "submitit_local")
  try:
    plan = launch.plan(config, workdir, specs, "submitit_local")
    assert plan.submit == [ended, failed_once, fresh]
    assert plan.queued == {queued: str(os.getpid())}
    assert plan.not_retried == {diverged: "diverged", gave_up: "given up"}
    assert plan.states[done] == "done" and plan.states[running] == "running"
    text = launch.describe_plan(plan)
    assert f"queued (job {os.getpid()}) {queued.name}" in text
    assert text.splitlines()[-1].endswith("; 3 to submit.")
    # The retry flags bring the skipped runs back, as for a local sweep.
    retried = launch.plan(config, workdir, specs, "submitit_local", retry_diverged=True,
                          retry_failed=True)
    assert retried.submit == [ended, diverged, gave_up, failed_once, fresh]
    # Jobs recorded by another launcher are not this queue's.
    other = launch.plan(config, workdir, specs, "slurm")
    assert queued in other.submit
  finally:
    lock.release()


def test_dry_run_prints_the_sbatch_script_submitit_writes(data_dir, tmp_path):
  config = grid_2x2(data_dir)
  workdir = tmp_path / "paper"
  write_result(workdir, sweep.grid(config)[0], {"accuracy": 0.5}, {"accuracy": 0.5},
               identity=sweep.expected_identity(sweep.grid(config)[0].config(config.base)))
  args = [sys.executable, "-m", "ftjax.sweep", "--config", "configs/sweep_demo.py",
          "--workdir", str(workdir), "--launcher", "slurm", "--dry_run",
          *_overrides(config), "--config.slurm.partition=gpu", "--config.slurm.account=lab",
          "--config.slurm.qos=high", "--config.slurm.gpus_per_task=1",
          "--config.slurm.cpus_per_task=4", "--config.slurm.mem_gb=16",
          "--config.slurm.timeout_min=30", "--config.slurm.array_parallelism=2",
          "--config.slurm.additional=constraint=a100,mail-type=END"]
  out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.splitlines()
  assert "4 runs: 1 done, 3 pending; 3 to submit." in lines
  assert [line for line in lines if line.startswith("#SBATCH")] == sorted([
      "#SBATCH --account=lab", "#SBATCH --array=0-2%2", "#SBATCH --constraint=a100",
      "#SBATCH --cpus-per-task=4",
      f"#SBATCH --error={workdir}/.submitit/%A_%a/%A_%a_0_log.err",
      "#SBATCH --gpus-per-task=1", "#SBATCH --job-name=ftjax-paper",
      "#SBATCH --mail-type=END", "#SBATCH --mem=16GB", "#SBATCH --nodes=1",
      "#SBATCH --ntasks-per-node=1", "#SBATCH --open-mode=append",
      f"#SBATCH --output={workdir}/.submitit/%A_%a/%A_%a_0_log.out",
      "#SBATCH --partition=gpu", "#SBATCH --qos=high", "#SBATCH --signal=USR2@90",
      "#SBATCH --time=30", "#SBATCH --wckey=submitit"])
  [srun] = [line for line in lines if line.startswith("srun ")]
  assert srun.startswith("srun --unbuffered") and srun.endswith(
      f"-u -m submitit.core._submit {workdir}/.submitit/%j")
  assert not (workdir / launch.SUBMITIT_DIR).exists()  # nothing submitted, nothing written


def test_a_bad_sbatch_setting_is_one_error_line(data_dir, tmp_path):
  args = [sys.executable, "-m", "ftjax.sweep", "--config", "configs/sweep_demo.py",
          "--workdir", str(tmp_path / "w"), "--launcher", "slurm", "--dry_run",
          "--config.slurm.additional=constraint"]
  out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
  [line] = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert "config.slurm.additional: ['constraint'] is not name=value" in line


# --- The compilation cache and runs sharing a GPU ----------------------------------


_JIT = ("import sys, pathlib, json; from ftjax import compile_cache as c; "
        "c.enable(pathlib.Path(sys.argv[1])); s = c.watch(); import jax, jax.numpy as jnp; "
        "jax.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((8, 8))).block_until_ready(); "
        "print(json.dumps(s.to_json()))")


def test_compile_cache_is_written_then_hit_by_the_next_process(tmp_path):
  cache = tmp_path / "cache"
  runs = [json.loads(subprocess.run([sys.executable, "-c", _JIT, str(cache)], check=True,
                                    capture_output=True, text=True).stdout.splitlines()[-1])
          for _ in range(2)]
  assert runs[0]["misses"] > 0 and runs[0]["hits"] == 0
  assert len(compile_cache.entries(cache)) == runs[0]["misses"]
  assert runs[1]["hits"] == runs[0]["misses"] and runs[1]["misses"] == 0


def test_subprocess_runs_get_the_cache_and_a_share_of_the_gpu(tmp_path, monkeypatch):
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  config = tiny_sweep_config(tmp_path / "data")
  launch.add_cluster_fields(config)
  config.runs_per_gpu = 4
  cache = compile_cache.directory(config, tmp_path / "runs")
  assert cache == (tmp_path / "runs" / ".jax_cache").absolute()
  runner = sweep_local._default_runner(True, cache, config.runs_per_gpu)  # pylint: disable=protected-access
  # In place of ftjax.train: a child that records the environment it was given.
  dump = ("import json, os, sys; d = sys.argv[sys.argv.index('--workdir') + 1]; "
          "json.dump(dict(os.environ), open(os.path.join(d, 'env.json'), 'w'))")
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  spec = sweep.grid(config)[0]
  runner(spec, spec.config(config.base), run_dir, "3", command=(sys.executable, "-c", dump))
  env = json.loads((run_dir / "env.json").read_text())
  assert env["JAX_COMPILATION_CACHE_DIR"] == str(cache)
  assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0.0"
  assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
  assert float(env["XLA_PYTHON_CLIENT_MEM_FRACTION"]) * 4 <= 0.9 + 1e-9
  assert env["CUDA_VISIBLE_DEVICES"] == "3"
  config.compilation_cache_dir = ""  # the cache turned off
  assert compile_cache.directory(config, tmp_path / "runs") is None


def test_launcher_faults_name_the_file_or_the_fix(tmp_path, monkeypatch):
  config = tiny_sweep_config(tmp_path / "data")
  launch.add_cluster_fields(config)
  config.slurm.gpus = 2  # not a field
  with pytest.raises(launch.LaunchError, match=r"config.slurm: unknown field\(s\) \['gpus'\]"):
    launch.SlurmOptions.from_config(config)
  path = launch.submitted_path(tmp_path)
  path.parent.mkdir(parents=True)
  path.write_text('{"a/b": ')  # cut short
  with pytest.raises(launch.LaunchError, match=f"{path}: unreadable .*remove it after"):
    launch.read_submitted(tmp_path)
  monkeypatch.setenv("PATH", str(tmp_path / "no_slurm_here"))
  with pytest.raises(launch.LaunchError, match="cannot ask squeue .*on a machine of the cluster"):
    launch.active_jobs("slurm", ["12_0"])
  assert launch.active_jobs("slurm", []) == set()  # nothing recorded: squeue not needed
