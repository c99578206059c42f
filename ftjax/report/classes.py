"""The classes of each dataset, and how well the chosen cell tells each one apart.

Per dataset whose results.json record its class names: one row per output (its
index and name) with the one-vs-rest test AUROC of the cell chosen on validation
(the recommendation's), the mean over that cell's seeds, from their saved test
predictions. A class without a positive or a negative test example has none.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ftjax import metrics
from ftjax.report import tables, verdict
from ftjax.report.collect import Key, Study


def per_class_auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """One-vs-rest AUROC of every class: float64 [classes], nan where undefined.

  ``labels``: class indices [N] or 0/1 columns [N, classes] (multi-label)."""
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels)
  targets = ((labels > 0.5) if labels.ndim == 2
             else metrics.one_hot(labels.astype(np.int64), scores.shape[1])).astype(np.int64)
  out = np.full(scores.shape[1], np.nan)
  for c in range(scores.shape[1]):
    if 0 < targets[:, c].sum() < len(targets):
      out[c] = metrics.binary_auroc(targets[:, c], scores[:, c])
  return out


def cell_auroc(study: Study, key: Key) -> tuple[np.ndarray | None, int]:
  """Per-class test AUROC of a cell averaged over its seeds with saved predictions
  (None without any), and how many seeds that is."""
  per_seed = []
  for run in verdict.selected_runs(study, key):
    saved = verdict.load_test(run)
    if not isinstance(saved, str):
      per_seed.append(per_class_auroc(saved["scores"], saved["labels"]))
  if not per_seed:
    return None, 0
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # a class undefined in every seed stays nan
    return np.nanmean(np.stack(per_seed), axis=0), len(per_seed)


def class_table(study: Study, dataset: str) -> tables.Table | None:
  """The dataset's classes with the chosen cell's per-class AUROC; None when its
  results.json record no class names (runs of an older ftjax)."""
  names = study.class_names.get(dataset)
  if not names:
    return None
  key = verdict.chosen_on_validation(study, dataset)
  _, arch, strategy = key
  auroc, seeds = cell_auroc(study, key)
  if auroc is not None and len(auroc) != len(names):
    auroc = None  # predictions of another label set than the names: not matched up
  who = (f"{tables.name(tables.STRATEGY_NAMES, strategy)} with "
         f"{tables.name(tables.ARCH_NAMES, arch)}")
  rows = [[tables.Cell(str(i)), tables.Cell(name),
           tables.Cell(_percent(auroc[i]) if auroc is not None else "–")]
          for i, name in enumerate(names)]
  note = (f"One-vs-rest test AUROC of the validation choice ({who}), mean over {seeds} "
          "seed(s); – : no positive or no negative test example of that class"
          if auroc is not None else
          f"No per-class AUROC: the runs of {who} saved no usable test predictions.")
  return tables.Table(f"classes_{dataset}",
                      f"{tables.name(tables.DATASET_NAMES, dataset)}: classes", ["#", "Class",
                      f"Test AUROC, {who}"], rows, note)


def _percent(value: float) -> str:
  return "–" if math.isnan(value) else f"{100 * value:.2f}"


def class_tables(study: Study) -> list[tables.Table]:
  datasets = tables.ordered(study.cells, tuple(tables.DATASET_NAMES))
  return [t for t in (class_table(study, d) for d in datasets) if t is not None]
