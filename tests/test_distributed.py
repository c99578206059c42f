"""Data parallelism: 4 forced CPU devices give the 1-device run's results."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from ftjax import distributed, train
from tests.test_train import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
LR = 1e-5

# Runs one tiny FT run on this process's devices and saves its best params.
_SCRIPT = """
import json, sys
import jax, numpy as np
from ftjax import checkpoints
from ftjax.models import registry
from tests.test_train import tiny_config
from ftjax import train
data_dir, workdir, out = sys.argv[1:4]
config = tiny_config(data_dir, "ft", eval_batch_size=20, lr=float(sys.argv[4]))
results = train.train_and_evaluate(config, workdir)
like = registry.init_variables(registry.get_arch(config.arch), 0, 4)
ckpts = checkpoints.RunCheckpoints(workdir)
_, best = ckpts.restore_best(like)
ckpts.close()
leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(best))
np.savez(out, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
print(json.dumps({"devices": jax.device_count(), "results": results}))
"""


def _run(devices: int, data_dir, workdir, out) -> dict:
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
         "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or "",
         "PYTHONPATH": str(ROOT)}
  # A small lr: Adam scales every update to about lr, so a near-zero gradient whose
  # sign flips with the reduction order moves a weight by up to 2 lr per step.
  args = [str(data_dir), str(workdir), str(out), str(LR)]
  proc = subprocess.run([sys.executable, "-c", _SCRIPT, *args], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _losses(workdir) -> list[float]:
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line)["train_loss"] for line in lines]


def test_four_devices_match_one_device(tmp_path):
  data_dir = tmp_path / "data"
  one = _run(1, data_dir, tmp_path / "one", tmp_path / "one.npz")
  four = _run(4, data_dir, tmp_path / "four", tmp_path / "four.npz")
  assert (one["devices"], four["devices"]) == (1, 4)
  assert four["results"]["devices"] == 4
  # 12 validation and 48 test images in eval batches of 20: padded last batches.
  assert four["results"]["validation"]["count"] == 12
  assert four["results"]["test"]["count"] == 48
  np.testing.assert_allclose(_losses(tmp_path / "four"), _losses(tmp_path / "one"),
                             rtol=1e-4)
  assert four["results"]["best_epoch"] == one["results"]["best_epoch"]
  for split in ("validation", "test"):
    for metric, value in one["results"][split].items():
      assert four["results"][split][metric] == pytest.approx(value, rel=1e-4, abs=1e-5), (
          split, metric)
  a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "four.npz")
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=10 * LR, err_msg=key)


def test_batch_not_divisible_by_devices_names_the_field():
  parallel = distributed.DataParallel(jax.devices() * 1)
  parallel.check_divisible(16, "config.batch_size")
  fake = distributed.DataParallel.__new__(distributed.DataParallel)
  fake.mesh = type("M", (), {"size": 4})()
  with pytest.raises(ValueError, match=r"config\.batch_size=18 is not divisible by the 4 "
                                       r"devices.*--config\.batch_size=16"):
    fake.check_divisible(18, "config.batch_size")


def test_train_refuses_indivisible_batch_on_four_devices(tmp_path):
  script = ("import sys; from tests.test_train import tiny_config; from ftjax import train\n"
            "train.train_and_evaluate(tiny_config(sys.argv[1], 'ft', batch_size=18), "
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
