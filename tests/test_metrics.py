"""ftjax.metrics against scikit-learn on random and edge-case inputs."""

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from ftjax import metrics

TOL = 1e-6


def _softmax(x):
  e = np.exp(x - x.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def _multiclass(seed, n=200, c=4, ties=False):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, c, n)
  logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels] * rng.random((n, 1))
  if ties:  # coarse scores: many exact ties within each class column
    logits = np.round(logits)
  return _softmax(logits), labels


def _multilabel(seed, n=150, c=5):
  rng = np.random.default_rng(seed)
  labels = (rng.random((n, c)) < 0.3).astype(int)
  scores = 1 / (1 + np.exp(-(rng.normal(size=(n, c)) + 2 * labels - 1)))
  return scores, labels


def _sk_per_class(fn, targets, scores):
  return np.mean([fn(targets[:, j], scores[:, j]) for j in range(targets.shape[1])])


def _sk_macro_accuracy(targets, predicted):
  return np.mean([skm.accuracy_score(targets[:, j], predicted[:, j])
                  for j in range(targets.shape[1])])


@pytest.mark.parametrize("seed,ties", [(0, False), (1, False), (2, True), (3, True)])
def test_multiclass_metrics_equal_sklearn(seed, ties):
  scores, labels = _multiclass(seed, ties=ties)
  targets = np.eye(scores.shape[1], dtype=int)[labels]
  predicted_ids = scores.argmax(axis=1)
  predicted = np.eye(scores.shape[1], dtype=int)[predicted_ids]
  ours = metrics.compute_all(scores, labels)
  expected = {
      "map": _sk_per_class(skm.average_precision_score, targets, scores),
      "auroc": skm.roc_auc_score(labels, scores, multi_class="ovr", average="macro"),
      "accuracy": _sk_macro_accuracy(targets, predicted),
      "kappa": skm.cohen_kappa_score(labels, predicted_ids),
      "f1": skm.f1_score(labels, predicted_ids, average="macro"),
  }
  for name, value in expected.items():
    assert abs(ours[name] - value) <= TOL, (name, ours[name], value)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multilabel_metrics_equal_sklearn(seed):
  scores, labels = _multilabel(seed)
  predicted = (scores >= 0.5).astype(int)
  ours = metrics.compute_all(scores, labels, multilabel=True)
  expected = {
      "map": skm.average_precision_score(labels, scores, average="macro"),
      "auroc": skm.roc_auc_score(labels, scores, average="macro"),
      "accuracy": _sk_macro_accuracy(labels, predicted),
      "kappa": np.mean([skm.cohen_kappa_score(labels[:, j], predicted[:, j])
                        for j in range(labels.shape[1])]),
      "f1": skm.f1_score(labels, predicted, average="macro", zero_division=0),
  }
  for name, value in expected.items():
    assert abs(ours[name] - value) <= TOL, (name, ours[name], value)


def test_binary_softmax_auroc_is_the_positive_class_auc():
  scores, labels = _multiclass(4, c=2)
  assert abs(metrics.macro_auroc(scores, labels)
             - skm.roc_auc_score(labels, scores[:, 1])) <= TOL


def test_all_tied_scores():
  labels = np.array([0, 1, 1, 0, 1])
  scores = np.full((5, 2), 0.5)
  assert abs(metrics.macro_auroc(scores, labels) - 0.5) <= TOL
  assert abs(metrics.mean_average_precision(scores, labels)
             - np.mean([skm.average_precision_score(labels == j, scores[:, j])
                        for j in range(2)])) <= TOL


def test_class_without_positives_is_named_and_left_out():
  scores, labels = _multilabel(5)
  labels[:, 2] = 0
  with pytest.warns(UserWarning, match=r"AUROC: class\(es\) Edema have no positive"):
    auroc = metrics.macro_auroc(scores, labels,
                                class_names=["A", "B", "Edema", "D", "E"])
  kept = [0, 1, 3, 4]
  assert abs(auroc - skm.roc_auc_score(labels[:, kept], scores[:, kept])) <= TOL
  with pytest.warns(UserWarning, match="mAP"):
    ap = metrics.mean_average_precision(scores, labels)
  assert abs(ap - skm.average_precision_score(labels[:, kept], scores[:, kept])) <= TOL


def test_multiclass_split_missing_a_class():
  scores, labels = _multiclass(6, c=3)
  labels[labels == 2] = 0  # class 2 never occurs
  predicted_ids = scores.argmax(axis=1)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ours = metrics.compute_all(scores, labels)
  assert abs(ours["f1"] - skm.f1_score(labels, predicted_ids, labels=[0, 1, 2],
                                       average="macro", zero_division=0)) <= TOL
  assert abs(ours["kappa"] - skm.cohen_kappa_score(labels, predicted_ids)) <= TOL


def test_undefined_kappa_is_nan_like_sklearn():
  labels = np.zeros(6, int)
  scores = np.tile([0.9, 0.1], (6, 1))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    assert np.isnan(skm.cohen_kappa_score(labels, scores.argmax(1)))
  assert np.isnan(metrics.cohen_kappa(scores, labels))
