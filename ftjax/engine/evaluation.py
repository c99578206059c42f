"""Predictions over a whole split, the paper's metrics on them, and their file.

A run keeps each evaluated split's predictions in <run>/predictions/<split>.npz
(`save_predictions`, `load_predictions`): arrays `scores` (float32 [N, C],
softmax or sigmoid probabilities), `labels` (int [N] or {0, 1} [N, C]), `ids`
and `groups` (fixed-width unicode [N]; a group is the example's patient id, ""
where the dataset has none), in the split's stored order. The report bootstraps
its confidence intervals from them.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Sequence

import flax.linen as nn
import numpy as np
import scipy.special

from ftjax import distributed, metrics, step
from ftjax import run as run_lib
from ftjax.data import pipeline


@dataclasses.dataclass(frozen=True)
class Predictions:
  """One split's model outputs, one row per example, in the split's stored order."""
  logits: np.ndarray  # [N, C]
  labels: np.ndarray  # int [N] or {0, 1} [N, C]
  ids: np.ndarray     # unicode [N]
  groups: np.ndarray  # unicode [N]: patient id, "" where none

  def scores(self, multilabel: bool) -> np.ndarray:
    """Sigmoid (multi-label) or softmax probabilities, float32."""
    logits = self.logits.astype(np.float64)
    probs = scipy.special.expit(logits) if multilabel else scipy.special.softmax(logits, 1)
    return probs.astype(np.float32)


def predict_split(model: nn.Module, variables: dict[str, Any], source: Sequence, *,
                  batch_size: int, crop: int, num_workers: int = 0,
                  parallel: distributed.DataParallel | None = None) -> Predictions:
  """The logits, labels, ids and patient ids of every example of `source`, exactly
  once, in order.

  With a multi-device `parallel`, each (padded) batch is split over the mesh
  and the logits gathered back; the mask then drops the padding rows.
  """
  loader = pipeline.make_eval_loader(source, batch_size, crop=crop, num_workers=num_workers,
                                     keep_ids=True)
  if parallel is not None and parallel.active:
    parallel.check_divisible(batch_size, "config.eval_batch_size")
    variables = parallel.replicate(variables)
  columns: dict[str, list[np.ndarray]] = {"logits": [], "labels": [], "ids": [], "groups": []}
  for batch in loader:
    mask = np.asarray(batch["mask"], bool)
    images = batch["image"]
    if parallel is not None and parallel.active:
      images = parallel.shard_batch(np.asarray(images))
      out = parallel.gather(step.eval_step(model, variables, images))
    else:
      out = np.asarray(step.eval_step(model, variables, images))
    columns["logits"].append(out[mask])
    columns["labels"].append(np.asarray(batch["label"])[mask])
    columns["ids"].append(_text(batch["id"])[mask])
    columns["groups"].append(_text(batch["group"])[mask])
  return Predictions(**{k: np.concatenate(v) for k, v in columns.items()})


def _text(values) -> np.ndarray:
  """bytes (or str) array -> fixed-width unicode, so it saves without pickling."""
  values = np.asarray(values)
  return np.char.decode(values, "utf-8") if values.dtype.kind == "S" else values.astype(str)


def predict(model: nn.Module, variables: dict[str, Any], source: Sequence, *,
            batch_size: int, crop: int, num_workers: int = 0,
            parallel: distributed.DataParallel | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
  """(logits [N, C], labels) for every example of `source`, exactly once, in order."""
  out = predict_split(model, variables, source, batch_size=batch_size, crop=crop,
                      num_workers=num_workers, parallel=parallel)
  return out.logits, out.labels


def save_predictions(path: pathlib.Path, predictions: Predictions, multilabel: bool) -> None:
  """<path> (.npz), written atomically (a kill never leaves half a file)."""
  run_lib.replace_atomically(path, lambda f: np.savez(
      f, scores=predictions.scores(multilabel), labels=predictions.labels,
      ids=predictions.ids.astype(str), groups=predictions.groups.astype(str)))


def load_predictions(path: pathlib.Path) -> dict[str, np.ndarray]:
  """{'scores', 'labels', 'ids', 'groups'} of a saved split (no pickles are read)."""
  with np.load(path, allow_pickle=False) as saved:
    return {k: saved[k] for k in ("scores", "labels", "ids", "groups")}


def mean_loss(logits: np.ndarray, labels: np.ndarray, multilabel: bool) -> float:
  """The training loss on a whole split: softmax CE or sigmoid BCE, float64."""
  logits = logits.astype(np.float64)
  if multilabel:
    # BCE with logits, stable form: max(x, 0) - x * y + log(1 + exp(-|x|)).
    per = np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))
    return float(per.mean())
  log_probs = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
  return float(-np.mean(log_probs[np.arange(len(labels)), labels.astype(int)]))


def evaluate(model: nn.Module, variables: dict[str, Any], source: Sequence, *,
             multilabel: bool, class_names: Sequence[str] | None = None, batch_size: int,
             crop: int, num_workers: int = 0,
             parallel: distributed.DataParallel | None = None) -> dict[str, float]:
  """{'loss', 'map', 'accuracy', 'auroc', 'kappa', 'f1', 'count'} on `source`."""
  logits, labels = predict(model, variables, source, batch_size=batch_size, crop=crop,
                           num_workers=num_workers, parallel=parallel)
  return metrics_from_logits(logits, labels, multilabel, class_names)


def metrics_of(predictions: Predictions, multilabel: bool,
               class_names: Sequence[str] | None = None) -> dict[str, float]:
  """`evaluate`'s dict from a split's predictions."""
  return metrics_from_logits(predictions.logits, predictions.labels, multilabel, class_names)


def metrics_from_logits(logits: np.ndarray, labels: np.ndarray, multilabel: bool,
                        class_names: Sequence[str] | None = None) -> dict[str, float]:
  """{'loss', 'map', 'accuracy', 'auroc', 'kappa', 'f1', 'count'} of a split's logits."""
  scores = scipy.special.expit(logits) if multilabel else scipy.special.softmax(logits, 1)
  result = {"loss": mean_loss(logits, labels, multilabel)}
  result.update(metrics.compute_all(scores, labels, multilabel, list(class_names or [])
                                    or None))
  result["count"] = int(len(labels))
  return result
