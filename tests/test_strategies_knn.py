"""kNN (training-free) against scikit-learn's KNeighborsClassifier, and end to end.

The JAX search (chunked distances, running top-k, vote) must give exactly
scikit-learn's `predict_proba` (brute force, uniform weights) on the same
features, multi-class and multi-label; a run through `python -m ftjax.train`
and `ftjax.multirun` must write predictions that scikit-learn reproduces from
the run's cached features, and results.json metrics that scikit-learn's
metrics give on those predictions.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.neighbors import KNeighborsClassifier

from ftjax import evaluate, multirun
from ftjax.engine import evaluation, fit, training
from ftjax.strategies import knn, registry
from tests.test_train import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
METRICS = ("euclidean", "cosine")


def _clusters(seed, n, num_classes=4, dim=12):
  """Features around one centre per class (so neighbours mostly agree), and labels."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_classes, dim)) * 2.0
  labels = rng.integers(0, num_classes, n)
  return (centres[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


def _sklearn_multiclass(train_x, train_y, queries, k, metric, num_classes):
  """predict_proba with a column for every class (scikit-learn's has only those seen)."""
  model = KNeighborsClassifier(k, metric=metric, algorithm="brute").fit(train_x, train_y)
  out = np.zeros((len(queries), num_classes))
  out[:, model.classes_] = model.predict_proba(queries)
  return out


def _sklearn_multilabel(train_x, train_y, queries, k, metric):
  """P(label j) per label from scikit-learn's multi-output predict_proba."""
  model = KNeighborsClassifier(k, metric=metric, algorithm="brute").fit(train_x, train_y)
  columns = []
  for classes, proba in zip(model.classes_, model.predict_proba(queries)):
    positive = np.flatnonzero(classes == 1)
    columns.append(proba[:, positive[0]] if positive.size else np.zeros(len(queries)))
  return np.stack(columns, axis=1)


@pytest.fixture(params=["one_chunk", "many_chunks"])
def chunks(request, monkeypatch):
  """Small chunks make the running top-k merge across support and query chunks."""
  if request.param == "many_chunks":
    monkeypatch.setattr(knn, "SUPPORT_CHUNK", 37)
    monkeypatch.setattr(knn, "QUERY_CHUNK", 16)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("k", [1, 11])
def test_multiclass_probabilities_equal_sklearn(metric, k, chunks):
  train_x, train_y = _clusters(0, 300)
  queries, _ = _clusters(1, 77)
  # Class 4 of 5 has no training example: its column must be 0, not missing.
  ours = knn.KNN(k, metric).fit(train_x, train_y, num_classes=5,
                                multilabel=False).predict_proba(queries)
  expected = _sklearn_multiclass(train_x, train_y, queries, k, metric, 5)
  np.testing.assert_array_equal(ours, expected)
  if k > 1:  # real mixtures, not only 0/1
    assert 0 < np.count_nonzero((ours > 0) & (ours < 1))


@pytest.mark.parametrize("metric", METRICS)
def test_multilabel_probabilities_equal_sklearn(metric, chunks):
  train_x, classes = _clusters(2, 250, num_classes=3)
  rng = np.random.default_rng(3)
  # Labels follow the cluster (noisily); label 3 is never positive.
  train_y = np.concatenate([(np.eye(3)[classes] + (rng.random((250, 3)) < 0.2)) > 0,
                            np.zeros((250, 1), bool)], axis=1).astype(int)
  queries, _ = _clusters(4, 60, num_classes=3)
  ours = knn.KNN(11, metric).fit(train_x, train_y, num_classes=4,
                                 multilabel=True).predict_proba(queries)
  np.testing.assert_array_equal(ours, _sklearn_multilabel(train_x, train_y, queries, 11,
                                                          metric))


def test_comparison_catches_another_k_or_metric():
  """The equality above fails for a neighbour off (k=10) or the other metric."""
  train_x, train_y = _clusters(5, 200)
  train_x[:, 0] *= 20  # scale differs by row: cosine and Euclidean rank differently
  queries, _ = _clusters(6, 50)
  expected = _sklearn_multiclass(train_x, train_y, queries, 11, "euclidean", 4)
  for wrong in (knn.KNN(10, "euclidean"), knn.KNN(11, "cosine")):
    ours = wrong.fit(train_x, train_y, num_classes=4, multilabel=False).predict_proba(queries)
    assert not np.array_equal(ours, expected), wrong


def test_k_above_the_training_set_is_refused():
  train_x, train_y = _clusters(7, 5)
  with pytest.raises(ValueError, match=r"knn_k=11 is more than the 5 training examples"):
    knn.KNN(11, "euclidean").fit(train_x, train_y, num_classes=4, multilabel=False)


def test_non_finite_feature_is_named():
  train_x, train_y = _clusters(8, 40)
  train_x[17, 3] = np.nan
  with pytest.raises(ValueError, match=r"training example 17 has a non-finite"):
    knn.KNN(3, "euclidean").fit(train_x, train_y, num_classes=4, multilabel=False)


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


def _cached(run_dir: pathlib.Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """split -> (features, labels) of the feature files the run cached."""
  out = {}
  for path in sorted(run_dir.glob("features-*.npz")):
    with np.load(path, allow_pickle=False) as saved:
      split = json.loads(str(saved["description"]))["split"]
      out[split] = (saved["features"], saved["labels"])
  return out


def _sklearn_metrics(scores, labels):
  """The paper's five metrics (ftjax.metrics' definitions) through scikit-learn."""
  targets = np.eye(scores.shape[1], dtype=int)[labels]
  predicted_ids = scores.argmax(axis=1)
  predicted = np.eye(scores.shape[1], dtype=int)[predicted_ids]
  return {
      "map": np.mean([skm.average_precision_score(targets[:, j], scores[:, j])
                      for j in range(scores.shape[1])]),
      "auroc": skm.roc_auc_score(labels, scores, multi_class="ovr", average="macro"),
      "accuracy": np.mean([skm.accuracy_score(targets[:, j], predicted[:, j])
                           for j in range(scores.shape[1])]),
      "kappa": skm.cohen_kappa_score(labels, predicted_ids),
      "f1": skm.f1_score(labels, predicted_ids, average="macro"),
      "loss": skm.log_loss(labels, scores.astype(np.float64), labels=range(scores.shape[1])),
  }


def _check_run_against_sklearn(run_dir: pathlib.Path, features_dir: pathlib.Path,
                               k: int, metric: str) -> dict:
  results = json.loads((run_dir / "results.json").read_text())
  assert results["strategy"] == "knn"
  assert (results["best_epoch"], results["epochs_run"]) == (0, 0)
  cached = _cached(features_dir)
  assert set(cached) == {"train", "validation", "test"}
  num_classes = len(results["class_names"])
  for split in ("validation", "test"):
    saved = evaluation.load_predictions(run_dir / "predictions" / f"{split}.npz")
    features, labels = cached[split]
    np.testing.assert_array_equal(saved["labels"], labels)
    expected = _sklearn_multiclass(*cached["train"], features, k, metric, num_classes)
    np.testing.assert_array_equal(saved["scores"], expected.astype(np.float32))
    for name, value in _sklearn_metrics(expected, labels).items():
      assert results[split][name] == pytest.approx(value, abs=1e-9), (split, name)
    assert results[split]["count"] == len(labels)
  return results


def _train_cli(config_file: pathlib.Path, workdir: pathlib.Path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
         "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or ""}
  return subprocess.run([sys.executable, "-m", "ftjax.train", f"--config={config_file}",
                         f"--workdir={workdir}"], env=env, cwd=ROOT, capture_output=True,
                        text=True, timeout=600)


def _config_file(tmp_path, data_dir, **options) -> pathlib.Path:
  path = tmp_path / "cfg_knn.py"
  lines = "".join(f"  config.strategy_options.{k} = {v!r}\n" for k, v in options.items())
  path.write_text("from tests.test_train import tiny_config\n\n\n"
                  f"def get_config():\n  config = tiny_config({str(data_dir)!r}, 'knn')\n"
                  f"{lines}  return config\n")
  return path


@pytest.fixture(scope="module")
def cli_run(data_dir, tmp_path_factory):
  """A knn run of `python -m ftjax.train` (cosine, k=5) on the tiny synthetic data."""
  tmp = tmp_path_factory.mktemp("knn_cli")
  proc = _train_cli(_config_file(tmp, data_dir, knn_k=5, knn_metric="cosine"), tmp / "run")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return tmp / "run"


def test_train_cli_predictions_and_metrics_equal_sklearn(cli_run):
  results = _check_run_against_sklearn(cli_run, cli_run / "features", 5, "cosine")
  assert results["test"]["count"] == 48
  # Nothing was trained: no checkpoint was saved.
  assert not [p for p in (cli_run / "checkpoints").rglob("*") if p.is_file()]


def test_finished_run_is_read_back(cli_run, data_dir, capsys):
  config = tiny_config(data_dir, "knn")
  config.strategy_options.knn_k, config.strategy_options.knn_metric = 5, "cosine"
  before = (cli_run / "results.json").read_text()
  assert training.train_and_evaluate(config, cli_run) == json.loads(before)
  assert "has finished" in capsys.readouterr().out


def test_multirun_fits_each_seed_like_train(cli_run, data_dir, tmp_path):
  """Each member is the ftjax.train run of its seed (random init: seeds differ)."""
  config = tiny_config(data_dir, "knn")
  config.strategy_options.knn_k, config.strategy_options.knn_metric = 5, "cosine"
  group = multirun.train_group(config, [1e-3], [0, 1], tmp_path)
  runs = [tmp_path / "synthetic" / config.arch / "knn" / "lr0.001" / f"seed{s}"
          for s in (0, 1)]
  for run, seed_results in zip(runs, group):
    assert json.loads((run / "results.json").read_text()) == seed_results
  single = json.loads((cli_run / "results.json").read_text())
  assert group[0]["test"] == single["test"] and group[0]["validation"] == single["validation"]
  assert group[1]["seed"] == 1 and group[1]["test"] != group[0]["test"]
  features_dir = runs[0].parents[1] / "multirun" / "lr0.001_seed0-1" / "features"
  assert len(list(features_dir.glob("features-*.npz"))) == 6  # 3 splits x 2 backbones
  again = multirun.train_group(config, [1e-3], [0, 1], tmp_path)
  assert again == group  # read back, not refitted (fit_seconds would differ)


@pytest.mark.parametrize("options,message", [
    ({"knn_k": 0}, r"knn_k must be >= 1, got 0"),
    ({"knn_k": 2.5}, r"knn_k must be a whole number, got 2.5"),
    ({"knn_metric": "manhattan"}, r"knn_metric must be one of \('euclidean', 'cosine'\)"),
])
def test_bad_options_are_named(options, message):
  with pytest.raises(ValueError, match=message):
    registry.get_strategy("knn", "resnet18", options)


def test_multilabel_run_metrics_equal_sklearn():
  """fit.metrics_of on multi-label kNN probabilities: scikit-learn's metrics, and the
  loss as the mean of scikit-learn's log_loss per label."""
  train_x, classes = _clusters(9, 200, num_classes=3)
  rng = np.random.default_rng(10)
  train_y = ((np.eye(3)[classes] + (rng.random((200, 3)) < 0.25)) > 0).astype(int)
  queries, query_classes = _clusters(11, 80, num_classes=3)
  labels = ((np.eye(3)[query_classes] + (rng.random((80, 3)) < 0.25)) > 0).astype(int)
  probabilities = _sklearn_multilabel(train_x, train_y, queries, 11, "euclidean")
  predictions = fit.FittedPredictions(logits=np.zeros_like(probabilities), labels=labels,
                                      ids=np.array(["x"] * 80), groups=np.array([""] * 80),
                                      probabilities=probabilities)
  ours = fit.metrics_of(predictions, True, ["a", "b", "c"])
  predicted = (probabilities >= 0.5).astype(int)
  expected = {
      "map": skm.average_precision_score(labels, probabilities, average="macro"),
      "auroc": skm.roc_auc_score(labels, probabilities, average="macro"),
      "accuracy": np.mean([skm.accuracy_score(labels[:, j], predicted[:, j])
                           for j in range(3)]),
      "kappa": np.mean([skm.cohen_kappa_score(labels[:, j], predicted[:, j])
                        for j in range(3)]),
      "f1": skm.f1_score(labels, predicted, average="macro", zero_division=0),
      "loss": np.mean([skm.log_loss(labels[:, j], probabilities[:, j], labels=[0, 1])
                       for j in range(3)]),
  }
  assert 0 < np.count_nonzero(probabilities == 0)  # a label without a vote: clipped loss
  for name, value in expected.items():
    assert ours[name] == pytest.approx(value, abs=1e-9), name
  assert ours["count"] == 80


def test_evaluate_points_to_the_saved_results(cli_run):
  with pytest.raises(ValueError, match=r"trains no weights and keeps no checkpoint; its "
                                       r"metrics are in .*results\.json"):
    evaluate.evaluate_run(cli_run)
