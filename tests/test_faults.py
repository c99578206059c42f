"""Faults: SIGKILL at many points then resume, NaN loss, unwritable workdir."""

import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ftjax.engine import checkpoints, experiment, loop, training
from ftjax.data.prepared import prepared_builder
from ftjax.models import registry
from tests.test_train import best_checkpoint, tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
_TMP = "*.orbax-checkpoint-tmp*"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


def _steps(directory: pathlib.Path) -> list[int]:
  if not directory.exists():
    return []
  return [int(p.name) for p in directory.glob("*") if p.name.isdigit()]


def _lines(path: pathlib.Path) -> int:
  return len(path.read_text().splitlines()) if path.exists() else 0


def test_sigkill_at_many_points_resumes_to_identical_results(data_dir, tmp_path):
  config = tiny_config(data_dir, "lp_ft", num_epochs=4)
  prepared_builder(config, registry.get_arch(config.arch))  # data made once
  config_file = tmp_path / "tiny.py"
  config_file.write_text(
      "from tests.test_train import tiny_config\n\n\n"
      f"def get_config():\n  return tiny_config({str(data_dir)!r}, 'lp_ft', num_epochs=4)\n")
  work = tmp_path / "killed"
  latest, best = work / "checkpoints" / "latest", work / "checkpoints" / "best"
  # Kill points, checked against the files the run has written so far. A save is
  # short: a point aimed at one falls back to just after it, so every point kills.
  def saving(directory, done):
    return lambda: any(directory.glob(_TMP)) or done()

  def last(directory):
    return max(_steps(directory), default=-1)

  points = [
      ("saving latest 1", saving(latest, lambda: last(latest) >= 1)),
      ("after latest 1", lambda: last(latest) >= 1),
      ("saving best", saving(best, lambda: _lines(work / "metrics.jsonl") >= 2)),
      ("after 3 metrics lines", lambda: _lines(work / "metrics.jsonl") >= 3),
      ("saving latest 3", saving(latest, lambda: last(latest) >= 3)),
      ("after latest 3", lambda: last(latest) >= 3),
  ]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
         "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or ""}
  command = [sys.executable, "-m", "ftjax.train", f"--config={config_file}",
             f"--workdir={work}"]
  killed = []
  for name, condition in points:
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not condition():
      time.sleep(0.002)
    if proc.poll() is None:
      in_save = any(latest.glob(_TMP)) or any(best.glob(_TMP))
      os.kill(proc.pid, signal.SIGKILL)
      killed.append(name + (" (tmp dir present)" if in_save else ""))
    _, err = proc.communicate()
    assert proc.returncode in (0, -signal.SIGKILL), err[-3000:]
  assert len(killed) >= 5, killed
  print("killed:", killed)
  final = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
  assert final.returncode == 0, final.stderr[-3000:]

  straight = training.train_and_evaluate(config, tmp_path / "straight")
  resumed = json.loads((work / "results.json").read_text())
  for key in ("best_epoch", "epochs_run", "validation", "test"):
    assert resumed[key] == straight[key], key
  assert [json.loads(line)["epoch"] for line in
          (work / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3]
  (ea, a), (eb, b) = (best_checkpoint(tmp_path / "straight", config),
                      best_checkpoint(work, config))
  assert ea == eb
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_restore_latest_ignores_incomplete_tmp_checkpoint(data_dir, tmp_path):
  config = tiny_config(data_dir, "lp", num_epochs=2)
  assert training.train_and_evaluate(config, tmp_path, max_epochs_this_call=1) is None
  latest = tmp_path / "checkpoints" / "latest"
  # A save killed halfway: a temporary directory with a partial checkpoint.
  (latest / "2.orbax-checkpoint-tmp-1234567" / "state").mkdir(parents=True)
  ckpts = checkpoints.RunCheckpoints(tmp_path)
  assert ckpts.latest.latest_step() == 1
  ckpts.close()
  results = training.train_and_evaluate(config, tmp_path)
  assert results["epochs_run"] == 2
  assert not list(latest.glob(_TMP))


def test_nan_loss_stops_with_epoch_and_step_and_keeps_checkpoint(data_dir, tmp_path,
                                                                 monkeypatch):
  real = experiment.epoch_loader

  def poisoned(config, source, epoch):
    for i, batch in enumerate(real(config, source, epoch)):
      if epoch == 1 and i == 2:
        # uint8 crops cannot hold a NaN: a float batch (the step accepts both).
        batch = {**batch, "image": np.full(batch["image"].shape, np.nan, np.float32)}
      yield batch

  monkeypatch.setattr(experiment, "epoch_loader", poisoned)
  config = tiny_config(data_dir, "ft", num_epochs=3)
  with pytest.raises(loop.TrainingDivergedError,
                     match=r"training loss is nan at epoch 2/3, step 3 of the epoch "
                           r"\(global step 9\).*checkpoint after epoch 1 is kept"):
    training.train_and_evaluate(config, tmp_path)
  assert _steps(tmp_path / "checkpoints" / "latest") == [1]
  assert _lines(tmp_path / "metrics.jsonl") == 1
  assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("code,fix", [(errno.ENOSPC, "the disk is full"),
                                      (errno.EACCES, "permission denied"),
                                      (errno.EROFS, "read-only")])
def test_unwritable_workdir_fails_before_training(code, fix, data_dir, tmp_path,
                                                  monkeypatch):
  def failing_write(fd, data):
    raise OSError(code, os.strerror(code))

  monkeypatch.setattr(os, "write", failing_write)
  with pytest.raises(ValueError, match=rf"workdir .*run is not writable .*{fix}"):
    training.train_and_evaluate(tiny_config(data_dir, "lp"), tmp_path / "run")
  assert not (tmp_path / "run" / "config.json").exists()


def test_workdir_under_a_file_is_refused(data_dir, tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match=r"not writable .*use another --workdir"):
    training.train_and_evaluate(tiny_config(data_dir, "lp"), tmp_path / "file" / "run")
