"""Plain accuracy and the confusion matrix of each dataset's validation choice.

The report's "accuracy" is the paper's macro one-vs-rest accuracy (eq. 6: per
class, (TP + TN) / N of that class against the rest, averaged over classes); with
k classes it stays high even when many images are wrong. Beside it, from the
saved test predictions of the cell chosen on validation (mean over its seeds):
- plain accuracy: the fraction of test images whose predicted class (argmax) is
  their label; multi-label datasets: the fraction of images with every label
  right at score >= 0.5 (exact match), and no confusion matrix (an image has
  several labels, so there is no single predicted class to cross with its own);
- the confusion matrix, single-label only: rows the true class, columns the
  predicted class, counts summed over the seeds.
"""

from __future__ import annotations

import numpy as np

from ftjax import metrics
from ftjax.report import tables, verdict
from ftjax.report.collect import Study


def plain_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of examples predicted right: argmax == label, or (multi-label) every
  column's score >= 0.5 equal to its 0/1 label."""
  labels = np.asarray(labels)
  if labels.ndim == 2:
    predicted = metrics.predictions(scores, multilabel=True)
    return float(np.mean(np.all(predicted == (labels > 0.5), axis=1)))
  return float(np.mean(np.argmax(scores, axis=1) == labels))


def confusion_matrix(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """int64 [classes, classes]: [true, predicted] counts of argmax predictions."""
  classes = np.asarray(scores).shape[1]
  out = np.zeros((classes, classes), np.int64)
  np.add.at(out, (np.asarray(labels, np.int64), np.argmax(scores, axis=1)), 1)
  return out


def _chosen_predictions(study: Study, dataset: str):
  """The saved test predictions of the validation choice's seeds (readable ones)."""
  key = verdict.chosen_on_validation(study, dataset)
  saved = [verdict.load_test(run) for run in verdict.selected_runs(study, key)]
  return key, [p for p in saved if not isinstance(p, str)]


def accuracy_table(study: Study) -> tables.Table | None:
  """Per dataset: the choice's plain accuracy beside the paper's macro accuracy."""
  rows = []
  for dataset in tables.ordered(study.cells, tuple(tables.DATASET_NAMES)):
    key, saved = _chosen_predictions(study, dataset)
    if not saved:
      continue
    multilabel = saved[0]["labels"].ndim == 2
    plain = np.mean([plain_accuracy(p["scores"], p["labels"]) for p in saved])
    macro = study.cells[dataset][key[1]][key[2]].get("accuracy")
    rows.append([tables.Cell(tables.name(tables.DATASET_NAMES, dataset)),
                 tables.Cell(f"{tables.name(tables.STRATEGY_NAMES, key[2])} with "
                             f"{tables.name(tables.ARCH_NAMES, key[1])}"),
                 tables.Cell(str(len(saved))), tables.Cell(f"{100 * plain:.2f}"),
                 tables.Cell("–" if macro is None else f"{macro[0]:.2f}"),
                 tables.Cell("exact match (multi-label)" if multilabel
                             else "argmax = label")])
  if not rows:
    return None
  return tables.Table(
      "plain_accuracy", "Plain accuracy of the validation choice (test, %)",
      ["Dataset", "Chosen on validation", "Seeds", "Plain accuracy",
       "Macro one-vs-rest accuracy (the paper's)", "Counted as right"], rows,
      "Plain accuracy: fraction of test images predicted right, mean over seeds; "
      "multi-label: every label right at score ≥ 0.5. The paper's accuracy (the "
      "tables' Accuracy) averages one-vs-rest accuracies over classes.")


def confusion_table(study: Study, dataset: str) -> tables.Table | None:
  """The choice's test confusion matrix summed over seeds; None for a multi-label
  dataset or one without saved predictions."""
  key, saved = _chosen_predictions(study, dataset)
  if not saved or saved[0]["labels"].ndim == 2:
    return None
  matrix = sum(confusion_matrix(p["scores"], p["labels"]) for p in saved)
  names = study.class_names.get(dataset) or ()
  if len(names) != len(matrix):
    names = tuple(str(i) for i in range(len(matrix)))
  rows = [[tables.Cell(names[i])] + [tables.Cell(str(n)) for n in row]
          for i, row in enumerate(matrix)]
  who = (f"{tables.name(tables.STRATEGY_NAMES, key[2])} with "
         f"{tables.name(tables.ARCH_NAMES, key[1])}")
  return tables.Table(f"confusion_{dataset}", f"{tables.name(tables.DATASET_NAMES, dataset)}"
                      f": confusion matrix, {who}", ["True \\ predicted", *names], rows,
                      f"Test images, rows the true class, columns the predicted class "
                      f"(argmax), counts summed over {len(saved)} seed(s).")


def accuracy_tables(study: Study) -> list[tables.Table]:
  """The plain-accuracy table, then a confusion matrix per single-label dataset."""
  datasets = tables.ordered(study.cells, tuple(tables.DATASET_NAMES))
  found = [accuracy_table(study), *(confusion_table(study, d) for d in datasets)]
  return [t for t in found if t is not None]
