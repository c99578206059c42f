"""The paper's five metrics (section 3.2, eq. 5-9), multi-class and multi-label.

Inputs are numpy arrays: `scores` [N, C] (softmax or sigmoid probabilities, or
logits: every metric here depends on scores only through their order, or
through the prediction below), and `labels`, either int class ids [N]
(multi-class) or a {0, 1} matrix [N, C] (multi-label).

Predictions: argmax for multi-class; score >= 0.5 (probabilities) for
multi-label. Per-class metrics are one-vs-rest and averaged over classes
(macro). A class with no positive example in the split has no AUROC or AP;
it is left out of those two means with a warning that names it.
"""

from __future__ import annotations

import warnings

import numpy as np

METRICS = ("map", "accuracy", "auroc", "kappa", "f1")
# The fewest test groups (patients, or images where a dataset has no patient ids)
# for a bootstrap interval or a win/tie/loss call: with one patient every resample
# is that patient and the interval collapses to a point. The report's default, and
# the threshold of prepare's and inspect's warning.
MIN_TEST_GROUPS = 10


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
  return np.eye(num_classes, dtype=np.int64)[labels]


def _targets(labels: np.ndarray, num_classes: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim == 1:
    return one_hot(labels.astype(np.int64), num_classes)
  return (labels > 0.5).astype(np.int64)


def predictions(scores: np.ndarray, multilabel: bool, threshold: float = 0.5) -> np.ndarray:
  """One-hot [N, C] predictions: argmax (multi-class) or score >= threshold."""
  scores = np.asarray(scores)
  if multilabel:
    return (scores >= threshold).astype(np.int64)
  return one_hot(np.argmax(scores, axis=1), scores.shape[1])


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks, ties sharing their average rank."""
  order = np.argsort(values, kind="mergesort")
  sorted_values = values[order]
  # Boundaries of runs of equal values.
  starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
  ends = np.r_[starts[1:], len(values)]
  ranks = np.empty(len(values), np.float64)
  ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
  return ranks


def binary_auroc(target: np.ndarray, score: np.ndarray) -> float:
  """ROC AUC as the Mann-Whitney statistic (ties count one half)."""
  positives = int(target.sum())
  negatives = len(target) - positives
  ranks = _average_ranks(np.asarray(score, np.float64))
  rank_sum = ranks[target == 1].sum()
  return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def binary_average_precision(target: np.ndarray, score: np.ndarray) -> float:
  """AP = sum over distinct thresholds of (R_k - R_{k-1}) * P_k."""
  order = np.argsort(-np.asarray(score, np.float64), kind="mergesort")
  score, target = np.asarray(score, np.float64)[order], target[order]
  # The last index of each run of equal scores is one threshold.
  last = np.r_[np.flatnonzero(score[1:] != score[:-1]), len(score) - 1]
  true_positives = np.cumsum(target)[last]
  precision = true_positives / (last + 1)
  recall = true_positives / true_positives[-1]
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _per_class(fn, targets: np.ndarray, scores: np.ndarray, name: str,
               class_names=None) -> float:
  has_positive = targets.sum(axis=0) > 0
  has_negative = targets.sum(axis=0) < len(targets)
  valid = has_positive & (has_negative if fn is binary_auroc else True)
  if not valid.all():
    names = class_names or [str(c) for c in range(targets.shape[1])]
    missing = [names[c] for c in np.flatnonzero(~valid)]
    warnings.warn(f"{name}: class(es) {', '.join(missing)} have no positive (or, for "
                  f"AUROC, no negative) example in this split; left out of the mean.",
                  stacklevel=3)
  if not valid.any():
    return float("nan")
  return float(np.mean([fn(targets[:, c], scores[:, c]) for c in np.flatnonzero(valid)]))


def mean_average_precision(scores, labels, class_names=None) -> float:
  """Paper eq. 5: the mean over classes of average precision."""
  scores = np.asarray(scores)
  return _per_class(binary_average_precision, _targets(labels, scores.shape[1]), scores,
                    "mAP", class_names)


def macro_auroc(scores, labels, class_names=None) -> float:
  """Paper eq. 7: the mean over classes of one-vs-rest ROC AUC."""
  scores = np.asarray(scores)
  return _per_class(binary_auroc, _targets(labels, scores.shape[1]), scores, "AUROC",
                    class_names)


def _confusion(scores, labels, multilabel: bool):
  scores = np.asarray(scores)
  targets = _targets(labels, scores.shape[1])
  predicted = predictions(scores, multilabel)
  tp = np.sum(predicted & targets, axis=0)
  fp = np.sum(predicted & (1 - targets), axis=0)
  fn = np.sum((1 - predicted) & targets, axis=0)
  tn = len(targets) - tp - fp - fn
  return tp, fp, fn, tn


def macro_accuracy(scores, labels, multilabel: bool = False) -> float:
  """Paper eq. 6: the mean over classes of one-vs-rest (TP + TN) / N."""
  tp, fp, fn, tn = _confusion(scores, labels, multilabel)
  return float(np.mean((tp + tn) / (tp + tn + fp + fn)))


def macro_f1(scores, labels, multilabel: bool = False) -> float:
  """Paper eq. 9: the mean over classes of F1 (0 for a class never predicted nor present)."""
  tp, fp, fn, _ = _confusion(scores, labels, multilabel)
  denominator = 2 * tp + fp + fn
  f1 = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
  return float(np.mean(f1))


def _kappa(confusion: np.ndarray) -> float:
  """Cohen's kappa of a [true, predicted] confusion matrix; NaN when undefined."""
  total = confusion.sum()
  observed = np.trace(confusion) / total
  chance = np.sum(confusion.sum(axis=0) * confusion.sum(axis=1)) / total**2
  return float((observed - chance) / (1 - chance)) if chance < 1 else float("nan")


def cohen_kappa(scores, labels, multilabel: bool = False) -> float:
  """Paper eq. 8. Multi-class: kappa between argmax and label over all classes.

  Multi-label (the paper leaves it open): the mean over classes of the binary
  kappa of each class's presence. Kappa is undefined (NaN, as scikit-learn
  gives) when chance agreement is 1, e.g. one class everywhere in both labels
  and predictions; such classes are left out of the multi-label mean with a
  warning.
  """
  scores = np.asarray(scores)
  targets = _targets(labels, scores.shape[1])
  predicted = predictions(scores, multilabel)
  if not multilabel:
    return _kappa(targets.T @ predicted)
  present = lambda column: np.stack([1 - column, column], axis=1)  # [N, 2] one-hot
  per_class = np.array([_kappa(present(targets[:, c]).T @ present(predicted[:, c]))
                        for c in range(scores.shape[1])])
  if np.isnan(per_class).any():
    warnings.warn(f"kappa: undefined for class(es) "
                  f"{', '.join(map(str, np.flatnonzero(np.isnan(per_class))))} "
                  f"(one value everywhere); left out of the mean.", stacklevel=2)
  return float(np.nanmean(per_class)) if not np.isnan(per_class).all() else float("nan")


def compute_all(scores, labels, multilabel: bool = False, class_names=None) -> dict[str, float]:
  """All five metrics, keyed by METRICS."""
  return {
      "map": mean_average_precision(scores, labels, class_names),
      "accuracy": macro_accuracy(scores, labels, multilabel),
      "auroc": macro_auroc(scores, labels, class_names),
      "kappa": cohen_kappa(scores, labels, multilabel),
      "f1": macro_f1(scores, labels, multilabel),
  }
