"""Predictions over a whole split and the paper's metrics on them."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import numpy as np
import scipy.special

from ftjax import distributed, metrics, step
from ftjax.data import pipeline


def predict(model: nn.Module, variables: dict[str, Any], source: Sequence, *,
            batch_size: int, crop: int, num_workers: int = 0,
            parallel: distributed.DataParallel | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
  """(logits [N, C], labels) for every example of `source`, exactly once, in order.

  With a multi-device `parallel`, each (padded) batch is split over the mesh
  and the logits gathered back; the mask then drops the padding rows.
  """
  loader = pipeline.make_eval_loader(source, batch_size, crop=crop, num_workers=num_workers)
  if parallel is not None and parallel.active:
    parallel.check_divisible(batch_size, "config.eval_batch_size")
    variables = parallel.replicate(variables)
  logits, labels = [], []
  for batch in loader:
    mask = np.asarray(batch["mask"], bool)
    images = batch["image"]
    if parallel is not None and parallel.active:
      images = parallel.shard_batch(np.asarray(images))
      out = parallel.gather(step.eval_step(model, variables, images))
    else:
      out = np.asarray(step.eval_step(model, variables, images))
    logits.append(out[mask])
    labels.append(np.asarray(batch["label"])[mask])
  return np.concatenate(logits), np.concatenate(labels)


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


def metrics_from_logits(logits: np.ndarray, labels: np.ndarray, multilabel: bool,
                        class_names: Sequence[str] | None = None) -> dict[str, float]:
  """{'loss', 'map', 'accuracy', 'auroc', 'kappa', 'f1', 'count'} of a split's logits."""
  scores = scipy.special.expit(logits) if multilabel else scipy.special.softmax(logits, 1)
  result = {"loss": mean_loss(logits, labels, multilabel)}
  result.update(metrics.compute_all(scores, labels, multilabel, list(class_names or [])
                                    or None))
  result["count"] = int(len(labels))
  return result
