"""Vmapped multi-run training equals separate ftjax.train runs."""

import json

import jax
import numpy as np
import pytest

from ftjax.engine import group as multirun
from ftjax.engine import training
from ftjax import run as run_lib
from tests.test_train import best_checkpoint, tiny_config

# Small learning rates: Adam turns float32 rounding differences of near-zero
# gradients (vmapped vs single convolutions) into steps of up to 2 lr.
LRS = (1e-5, 3e-5)
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


def _losses(workdir):
  return [json.loads(line)["train_loss"]
          for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# lp_ft: two seeds (each run its own data stream) x two lrs, across the phase
# switch. auto_rgn: one seed (one shared batch stream) x two lrs, through the
# vmapped probe; its per-tensor lr = lr * RGN / max RGN makes it the most
# sensitive to rounding, hence the wider tolerance.
CASES = {"lp_ft": (LRS, SEEDS, 1), "auto_rgn": (LRS, (0,), 5)}


@pytest.mark.parametrize("strategy", sorted(CASES))
def test_vmapped_runs_equal_separate_runs(strategy, data_dir, tmp_path):
  lrs, seeds, slack = CASES[strategy]
  config = tiny_config(data_dir, strategy)
  results = multirun.train_group(config, lrs, seeds, tmp_path / "group")
  assert all(r is not None for r in results)
  for run_config, result in zip(multirun.run_configs(config, lrs, seeds), results):
    alone_dir = tmp_path / f"alone_{run_config.lr:g}_{run_config.seed}"
    alone = training.train_and_evaluate(run_config, alone_dir)
    group_dir = tmp_path / "group" / run_lib.relative_path(run_config.dataset, run_config.arch, run_config.strategy, run_config.lr, run_config.seed)
    assert json.loads((group_dir / "results.json").read_text()) == result
    assert (result["lr"], result["seed"], result["multirun"]) == (
        run_config.lr, run_config.seed, len(results))
    np.testing.assert_allclose(_losses(group_dir), _losses(alone_dir), rtol=slack * 1e-4)
    assert result["best_epoch"] == alone["best_epoch"]
    assert result["epochs_run"] == alone["epochs_run"]
    for split in ("validation", "test"):
      assert result[split]["loss"] == pytest.approx(alone[split]["loss"], rel=slack * 1e-4)
      # Rank metrics jump when near-tied scores swap: 1e-4 of the loss can move
      # one image, i.e. 1/48 of the test accuracy.
      for metric, value in alone[split].items():
        assert result[split][metric] == pytest.approx(
            value, rel=1e-4, abs=1e-5 if slack == 1 else 0.03), (split, metric)
    _, group_best = best_checkpoint(group_dir, run_config)
    _, alone_best = best_checkpoint(alone_dir, run_config)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(alone_best),
                            jax.tree_util.tree_leaves(group_best)):
      np.testing.assert_allclose(b, a, rtol=1e-4, atol=slack * 10 * run_config.lr,
                                 err_msg=jax.tree_util.keystr(path))
    if strategy == "auto_rgn":
      assert len((group_dir / "rgn.jsonl").read_text().splitlines()) == 2


def test_rerun_of_a_finished_group_resumes_without_training(data_dir, tmp_path):
  config = tiny_config(data_dir, "lp", num_epochs=1)
  first = multirun.train_group(config, [1e-3], [0, 1], tmp_path)
  again = multirun.train_group(config, [1e-3], [0, 1], tmp_path)
  assert again == first


def test_empty_lists_are_refused(data_dir):
  with pytest.raises(ValueError, match="at least one learning rate and one seed"):
    multirun.run_configs(tiny_config(data_dir, "ft"), [], [0])


@pytest.mark.slow
def test_worker_processes_with_unequal_remainders(data_dir, tmp_path):
  """Two grain workers batch their 54-example shares apart: 2 x 6 batches of 8, not
  108 // 8 = 13. The group used to ask the loaders for a 13th and fail."""
  config = tiny_config(data_dir, "lp", num_epochs=1, num_workers=2, batch_size=8)
  [result] = multirun.train_group(config, [1e-3], [0], tmp_path / "group")
  [run_config] = multirun.run_configs(config, [1e-3], [0])
  alone = training.train_and_evaluate(run_config, tmp_path / "alone")
  group_dir = tmp_path / "group" / run_lib.relative_path(run_config.dataset, run_config.arch, run_config.strategy, run_config.lr, run_config.seed)
  np.testing.assert_allclose(_losses(group_dir), _losses(tmp_path / "alone"), rtol=1e-4)
  assert result["test"]["loss"] == pytest.approx(alone["test"]["loss"], rel=1e-4)
