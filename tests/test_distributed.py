"""Data parallelism: 4 forced CPU devices give the 1-device run's results."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from ftjax import distributed
from ftjax.engine import training
from tests.test_train import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
LR = 1e-5

# Runs one tiny FT run on this process's devices (with several processes: on every
# process's devices) and, on process 0, saves its best params. The main guard
# keeps dataset preparation's worker processes from running it again.
_SCRIPT = """
import json, sys
import jax, numpy as np
from ftjax.engine import checkpoints, training
from ftjax.models import registry
from tests.test_train import tiny_config

def main():
  data_dir, workdir, out = sys.argv[1:4]
  config = tiny_config(data_dir, "ft", eval_batch_size=20, lr=float(sys.argv[4]))
  results = training.train_and_evaluate(config, workdir)
  like = registry.init_variables(registry.get_arch(config.arch), 0, 4)
  ckpts = checkpoints.RunCheckpoints(workdir)
  _, best = ckpts.restore_best(like)
  ckpts.close()
  # Replicated arrays: each process holds the whole value on its own devices.
  local = jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), best)
  if jax.process_index() == 0:
    leaves = jax.tree_util.tree_leaves_with_path(local)
    np.savez(out, **{jax.tree_util.keystr(k): v for k, v in leaves})
  print(json.dumps({"devices": jax.device_count(), "processes": jax.process_count(),
                    "results": results}))

if __name__ == "__main__":
  main()
"""


def _env(devices: int) -> dict[str, str]:
  return {**os.environ, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
          "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or "",
          "PYTHONPATH": str(ROOT)}


def _args(data_dir, workdir, out) -> list[str]:
  # A small lr: Adam scales every update to about lr, so a near-zero gradient whose
  # sign flips with the reduction order moves a weight by up to 2 lr per step.
  return [str(data_dir), str(workdir), str(out), str(LR)]


def _run(devices: int, data_dir, workdir, out) -> dict:
  script = pathlib.Path(workdir).with_suffix(".py")
  script.write_text(_SCRIPT)
  proc = subprocess.run([sys.executable, str(script), *_args(data_dir, workdir, out)],
                        env=_env(devices), cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _processes(script, args: list[str], processes: int, devices_each: int,
               timeout: int = 600) -> list[str]:
  """Each stdout of `script` run by `processes` local processes joined by
  jax.distributed (gloo on CPU) through a coordinator on a free port."""
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    port = sock.getsockname()[1]
  procs = [subprocess.Popen(
      [sys.executable, str(script), *args], cwd=ROOT, text=True, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      env={**_env(devices_each), "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
           "JAX_NUM_PROCESSES": str(processes), "JAX_PROCESS_ID": str(index)})
           for index in range(processes)]
  finished = [proc.communicate(timeout=timeout) for proc in procs]
  # Every process's end: a failure in one shows up as a timeout in the others.
  assert all(proc.returncode == 0 for proc in procs), "\n".join(
      f"process {i} (exit {proc.returncode}):\n{stderr[-2500:]}"
      for i, (proc, (_, stderr)) in enumerate(zip(procs, finished)))
  return [stdout for stdout, _ in finished]


def _run_processes(processes: int, devices_each: int, data_dir, workdir, out) -> list[dict]:
  """One run over `processes` local processes."""
  script = pathlib.Path(workdir).with_suffix(".py")
  script.write_text(_SCRIPT)
  stdouts = _processes(script, _args(data_dir, workdir, out), processes, devices_each)
  return [json.loads(stdout.strip().splitlines()[-1]) for stdout in stdouts]


_BARRIER_SCRIPT = """
import sys, time
import jax, numpy as np
from jax.experimental import multihost_utils
from ftjax import distributed

def main():
  distributed.initialize()
  if jax.process_index() == 0:
    time.sleep(float(sys.argv[1]))  # e.g. preparing the data the others wait for
  distributed.barrier("data ready")
  distributed.barrier("data ready")  # the same name again: each use is its own barrier
  total = multihost_utils.process_allgather(np.array([jax.process_index()])).sum()
  print(f"process {jax.process_index()} passed; sum {total}")

if __name__ == "__main__":
  main()
"""


def test_barrier_waits_longer_than_collectives_allow(tmp_path):
  """A process arriving 35 s late: CPU collectives (gloo) give up after 30 s, the
  barrier does not, and collectives work after it."""
  script = tmp_path / "barrier.py"
  script.write_text(_BARRIER_SCRIPT)
  stdouts = _processes(script, ["35"], processes=2, devices_each=1, timeout=150)
  for index, stdout in enumerate(stdouts):
    assert stdout.strip().splitlines()[-1] == f"process {index} passed; sum 1"


def _losses(workdir) -> list[float]:
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line)["train_loss"] for line in lines]


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("one_device")
  data_dir = root / "data"
  return data_dir, _run(1, data_dir, root / "one", root / "one.npz"), root / "one"


def _assert_same_run(one: dict, one_dir, other: dict, other_dir) -> None:
  """Same loss curve, best epoch, metrics and best params to float32 tolerance."""
  np.testing.assert_allclose(_losses(other_dir), _losses(one_dir), rtol=1e-4)
  assert other["results"]["best_epoch"] == one["results"]["best_epoch"]
  for split in ("validation", "test"):
    for metric, value in one["results"][split].items():
      assert other["results"][split][metric] == pytest.approx(value, rel=1e-4, abs=1e-5), (
          split, metric)
  a, b = np.load(one_dir.with_suffix(".npz")), np.load(other_dir.with_suffix(".npz"))
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=10 * LR, err_msg=key)


def test_four_devices_match_one_device(one_device_run, tmp_path):
  data_dir, one, one_dir = one_device_run
  four = _run(4, data_dir, tmp_path / "four", tmp_path / "four.npz")
  assert (one["devices"], four["devices"]) == (1, 4)
  assert four["results"]["devices"] == 4
  # 12 validation and 48 test images in eval batches of 20: padded last batches.
  assert four["results"]["validation"]["count"] == 12
  assert four["results"]["test"]["count"] == 48
  _assert_same_run(one, one_dir, four, tmp_path / "four")


def test_two_processes_match_one_device(one_device_run, tmp_path):
  """The multi-host path: jax.distributed with 2 processes of 2 CPU devices each."""
  data_dir, one, one_dir = one_device_run
  runs = _run_processes(2, 2, tmp_path / "data", tmp_path / "two", tmp_path / "two.npz")
  assert [(r["processes"], r["devices"]) for r in runs] == [(2, 4), (2, 4)]
  timeless = [{k: v for k, v in r["results"].items() if k != "train_seconds"} for r in runs]
  assert timeless[0] == timeless[1]
  assert runs[0]["results"]["validation"]["count"] == 12
  assert runs[0]["results"]["test"]["count"] == 48
  _assert_same_run(one, one_dir, runs[0], tmp_path / "two")


def test_batch_not_divisible_by_devices_names_the_field():
  parallel = distributed.DataParallel(jax.devices() * 1)
  parallel.check_divisible(16, "config.batch_size")
  fake = distributed.DataParallel.__new__(distributed.DataParallel)
  fake.mesh = type("M", (), {"size": 4})()
  with pytest.raises(ValueError, match=r"config\.batch_size=18 is not divisible by the 4 "
                                       r"devices.*--config\.batch_size=16"):
    fake.check_divisible(18, "config.batch_size")


def test_train_refuses_indivisible_batch_on_four_devices(tmp_path):
  script = ("import sys; from tests.test_train import tiny_config; from ftjax.engine import training\n"
            "training.train_and_evaluate(tiny_config(sys.argv[1], 'ft', batch_size=18), "
            "sys.argv[2])\n")
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PYTHONPATH": str(ROOT)}
  proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "d"),
                         str(tmp_path / "w")], env=env, cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode != 0
  assert "config.batch_size=18 is not divisible by the 4 devices" in proc.stderr


def test_single_device_passes_arrays_through():
  parallel = distributed.DataParallel(jax.devices()[:1])
  batch = {"image": np.zeros((4, 2), np.float32)}
  assert parallel.shard_batch(batch) is batch
  assert parallel.shardings() is None


def test_distributed_is_requested_by_config_or_env(monkeypatch):
  import ml_collections
  monkeypatch.delenv("FTJAX_DISTRIBUTED", raising=False)
  monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
  assert not distributed.wants_distributed(ml_collections.ConfigDict({"lr": 1.0}))
  assert distributed.wants_distributed(ml_collections.ConfigDict({"distributed": True}))
  monkeypatch.setenv("FTJAX_DISTRIBUTED", "1")
  assert distributed.wants_distributed(None)
