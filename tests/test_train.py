"""ftjax.train end to end on the synthetic dataset: every strategy, resume, errors."""

import json
import pathlib
import re

import jax
import numpy as np
import pytest

from configs import base, demo
from ftjax import evaluate, step
from ftjax.engine import checkpoints, training
from ftjax.data import DataError
from ftjax.models import registry
from ftjax.strategies import STRATEGIES, uses_lr

METRICS = ("map", "accuracy", "auroc", "kappa", "f1")
# Training-free strategies (kNN) run no epoch; tests/test_strategies_knn.py runs them.
TRAINED = [s for s in STRATEGIES if uses_lr(s)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


def best_checkpoint(workdir, config):
  """(epoch, variables) of a finished tiny run's best checkpoint, on the host."""
  like = registry.init_variables(registry.get_arch(config.arch), 0, 4)
  ckpts = checkpoints.RunCheckpoints(workdir)
  epoch, best = ckpts.restore_best(like)
  ckpts.close()
  return epoch, jax.device_get(best)


def tiny_config(data_dir, strategy, **overrides):
  """The demo's model and data, shrunk to seconds per epoch on a CPU."""
  config = demo.get_config()
  config.data_dir = str(data_dir)
  config.strategy = strategy
  config.dataset_options.num_train = 120
  config.dataset_options.num_test = 48
  config.resize, config.crop = 36, 32
  config.batch_size = 16
  config.eval_batch_size = 32
  config.num_epochs = 2
  config.progress = False
  config.strategy_options.lp_epochs = 1
  config.strategy_options.phases = "head:1; all"  # past the head within num_epochs
  config.strategy_options.rgn_batches = 2
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.mark.parametrize("strategy", TRAINED)
def test_every_strategy_runs_and_writes_results(strategy, data_dir, tmp_path):
  results = training.train_and_evaluate(tiny_config(data_dir, strategy), tmp_path)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved == results
  assert saved["strategy"] == strategy and saved["epochs_run"] == 2
  for split in ("validation", "test"):
    assert set(METRICS) <= set(saved[split])
    assert all(np.isfinite(saved[split][m]) for m in METRICS)
  assert saved["test"]["count"] == 48
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["epoch"] for line in lines] == [0, 1]
  if strategy == "auto_rgn":
    rgn = [json.loads(line) for line in (tmp_path / "rgn.jsonl").read_text().splitlines()]
    assert len(rgn) == 2 and max(rgn[0]["weights"].values()) == pytest.approx(1.0)


def test_demo_strategies_learn(data_dir, tmp_path):
  """The demo's recipe on its own data size; kappa's chance level is 0."""
  for strategy in demo.get_config().demo_strategies:
    config = tiny_config(data_dir, strategy, num_epochs=4)
    config.dataset_options.num_train = 320
    config.dataset_options.num_test = 120
    results = training.train_and_evaluate(config, tmp_path / strategy)
    assert results["test"]["kappa"] > 0.4, (strategy, results["test"])
    assert results["test"]["auroc"] > 0.8, (strategy, results["test"])


@pytest.mark.parametrize("strategy", ["lp_ft", "auto_rgn"])
def test_interrupted_run_resumes_exactly(strategy, data_dir, tmp_path):
  config = tiny_config(data_dir, strategy, num_epochs=3)
  straight = training.train_and_evaluate(config, tmp_path / "straight")
  # Interrupted after epoch 1 (LP-FT's phase switch) and after epoch 2.
  assert training.train_and_evaluate(config, tmp_path / "sliced", max_epochs_this_call=1) is None
  assert training.train_and_evaluate(config, tmp_path / "sliced", max_epochs_this_call=1) is None
  resumed = training.train_and_evaluate(config, tmp_path / "sliced")
  for key in ("best_epoch", "epochs_run", "validation", "test"):
    assert resumed[key] == straight[key], key
  for name in ("straight", "sliced"):
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
  a = best_checkpoint(tmp_path / "straight", config)[1]
  b = best_checkpoint(tmp_path / "sliced", config)[1]
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_finished_run_says_so(data_dir, tmp_path, capsys):
  config = tiny_config(data_dir, "lp", num_epochs=1)
  first = training.train_and_evaluate(config, tmp_path)
  capsys.readouterr()
  assert training.train_and_evaluate(config, tmp_path) == first
  assert "has finished" in capsys.readouterr().out


def test_evaluate_reproduces_test_metrics(data_dir, tmp_path):
  config = tiny_config(data_dir, "ft", num_epochs=1)
  results = training.train_and_evaluate(config, tmp_path)
  again = evaluate.evaluate_run(tmp_path, "test")
  for metric in METRICS + ("loss",):
    assert again[metric] == pytest.approx(results["test"][metric], abs=1e-6)


def test_workdir_with_other_config_is_refused(data_dir, tmp_path):
  training.train_and_evaluate(tiny_config(data_dir, "lp", num_epochs=1), tmp_path,
                           max_epochs_this_call=0)
  with pytest.raises(ValueError, match=r"another identity \(lr: 0\.001 -> 0\.01\)"):
    training.train_and_evaluate(tiny_config(data_dir, "lp", num_epochs=1, lr=0.01), tmp_path)


def test_missing_dataset_names_prepare_command(tmp_path):
  config = base.get_config("isic2020,lp,resnet50")
  config.data_dir = str(tmp_path)
  with pytest.raises(DataError, match=r"python -m ftjax\.data prepare --dataset isic2020 "
                                      r".* --resize 232"):
    training.train_and_evaluate(config, tmp_path / "run")


def test_missing_weights_names_convert_command(data_dir, tmp_path):
  config = tiny_config(data_dir, "lp", init="pretrained", weights_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"resnet18-f37072fd\.pth.*weights_port convert"):
    training.train_and_evaluate(config, tmp_path / "run")


@pytest.mark.parametrize("field,value,listed", [
    ("strategy", "lp-ft", "lp_ft"), ("arch", "resnet", "densenet121"),
    ("dataset", "isic", "isic2020")])
def test_unknown_names_list_the_valid_ones(field, value, listed, data_dir, tmp_path):
  config = tiny_config(data_dir, "lp")
  config[field] = value
  with pytest.raises(ValueError, match=listed):
    training.train_and_evaluate(config, tmp_path)


def test_train_step_compiles_once_per_phase(data_dir, tmp_path, monkeypatch):
  """G-LF over 3 epochs has 3 phases: 3 step functions, each compiled exactly once."""
  made = []
  make_train_step = step.make_train_step

  def recording(*args, **kwargs):
    made.append(make_train_step(*args, **kwargs))
    return made[-1]

  monkeypatch.setattr(step, "make_train_step", recording)
  training.train_and_evaluate(tiny_config(data_dir, "g_lf", num_epochs=3), tmp_path)
  assert len(made) == 3
  assert [fn._cache_size() for fn in made] == [1, 1, 1]


def test_lp_on_cached_features_gives_the_results_of_lp(data_dir, tmp_path):
  results = {}
  for cache in (False, True):
    config = tiny_config(data_dir, "lp", cache_features=cache)
    config.strategy_options.bn_mode = "frozen"
    results[cache] = training.train_and_evaluate(config, tmp_path / str(cache))
  assert list((tmp_path / "True" / "features").glob("features-*.npz"))
  for split in ("validation", "test"):
    for metric, value in results[False][split].items():
      assert results[True][split][metric] == pytest.approx(value, rel=1e-5, abs=1e-6)
  losses = [[json.loads(line)["train_loss"] for line in
             (tmp_path / str(cache) / "metrics.jsonl").read_text().splitlines()]
            for cache in (False, True)]
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


def test_cached_features_refuse_strategies_that_train_the_backbone(data_dir, tmp_path):
  with pytest.raises(ValueError, match="cache_features"):
    training.train_and_evaluate(tiny_config(data_dir, "ft", cache_features=True), tmp_path)


# A bad option of any strategy is refused before the run directory is written.
@pytest.mark.parametrize("strategy,option,value,message", [
    ("surgical", "surgical_block", "layer9",
     "surgical_block 'layer9' is not a block of resnet18; valid: 'first', 'last', 'stem', "),
    ("llrd", "llrd_decay", -0.5, "llrd_decay must be >= 0, got -0.5."),
    ("llrd", "llrd_decay", float("nan"), "llrd_decay must be >= 0, got nan."),
    ("wise_ft", "wise_alphas", "0,2", "wise_alphas '0,2': 2.0 is outside [0, 1]: write "),
    ("bss", "bss_k", 0, "bss_k must be >= 1, got 0."),
    ("bss", "bss_weight", -0.001, "bss_weight must be >= 0, got -0.001."),
])
def test_bad_option_is_refused_before_anything_is_written(strategy, option, value, message,
                                                          data_dir, tmp_path):
  config = tiny_config(data_dir, strategy)
  config.strategy_options[option] = value
  with pytest.raises(ValueError, match="^" + re.escape(message)):
    training.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
