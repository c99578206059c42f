"""Training-free runs: a strategy's `fit` hook on the cached backbone features (kNN).

Such a run has the files of a trained run (config.json, identity.json,
predictions/<split>.npz, results.json with best_epoch 0 and epochs_run 0), so
`ftjax.sweep` and `ftjax.report` treat it like any run. The backbone
(pretrained or seeded) embeds the three splits in eval mode once
(`features.load_or_extract`, kept under the features directory so a rerun
reads them back); the hook is fitted on the training split's features and
labels and predicts the validation and test splits' class probabilities.

A fitted predictor gives probabilities, not logits: they are saved as the
predictions' scores as they are, and the metrics are computed from them. The
loss is the cross-entropy (multi-label: the mean binary cross-entropy) of the
probabilities clipped to [eps, 1 - eps] (float64 eps), as scikit-learn's
log_loss, since a class with no vote has probability 0.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any, Sequence

import ml_collections
import numpy as np

from ftjax import metrics
from ftjax.engine import evaluation, features, loop
from ftjax import run as run_lib
from ftjax.data import pipeline
from ftjax.engine.experiment import Experiment

EVALUATED = ("test", "validation")
_EPS = np.finfo(np.float64).eps


@dataclasses.dataclass(frozen=True)
class FittedPredictions(evaluation.Predictions):
  """A split's predictions given as probabilities (`logits` holds their logs)."""
  probabilities: np.ndarray = None  # type: ignore[assignment]  # float64 [N, C]

  def scores(self, multilabel: bool) -> np.ndarray:
    del multilabel  # already probabilities, per class or per label
    return self.probabilities.astype(np.float32)


def probability_loss(probabilities: np.ndarray, labels: np.ndarray, multilabel: bool
                     ) -> float:
  """Cross-entropy (multi-label: mean binary cross-entropy) of clipped probabilities."""
  p = np.clip(np.asarray(probabilities, np.float64), _EPS, 1 - _EPS)
  if multilabel:
    y = np.asarray(labels, np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))
  return float(-np.mean(np.log(p[np.arange(len(labels)), np.asarray(labels, np.int64)])))


def metrics_of(predictions: FittedPredictions, multilabel: bool,
               class_names: Sequence[str]) -> dict[str, float]:
  """The keys of `evaluation.metrics_of`, from the probabilities."""
  result = {"loss": probability_loss(predictions.probabilities, predictions.labels,
                                     multilabel)}
  result.update(metrics.compute_all(predictions.probabilities, predictions.labels,
                                    multilabel, list(class_names) or None))
  result["count"] = int(len(predictions.labels))
  return result


def _split_features(exp: Experiment, config: ml_collections.ConfigDict, variables: Any,
                    split: str, directory: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """(features, labels) of `split`, as features.load_or_extract keys them for LP."""
  return features.load_or_extract(
      directory,
      {"dataset": exp.info.name, "data_config": exp.builder.builder_config.name,
       "split": split, "arch": exp.arch.name,
       "resize": config.resize or exp.arch.preprocessing.resize},
      exp.model, variables, exp.sources[split], batch_size=config.eval_batch_size,
      crop=config.crop, num_workers=config.num_workers, progress=config.progress)


def _ids(exp: Experiment, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(ids, groups) of `split` in stored order (the order of its features)."""
  config = exp.config
  ids, groups = [], []
  for batch in pipeline.make_eval_loader(exp.sources[split], config.eval_batch_size,
                                         crop=config.crop, num_workers=config.num_workers,
                                         keep_ids=True):
    mask = np.asarray(batch["mask"], bool)
    ids.append(evaluation._text(batch["id"])[mask])  # pylint: disable=protected-access
    groups.append(evaluation._text(batch["group"])[mask])  # pylint: disable=protected-access
  return np.concatenate(ids), np.concatenate(groups)


def _predictions(exp: Experiment, predictor: Any, split_features: np.ndarray,
                 labels: np.ndarray, split: str) -> FittedPredictions:
  probabilities = predictor.predict_proba(split_features)
  ids, groups = _ids(exp, split)
  with np.errstate(divide="ignore"):
    logits = np.log(probabilities).astype(np.float32)
  return FittedPredictions(logits=logits, labels=labels, ids=ids, groups=groups,
                           probabilities=probabilities)


def fit_and_evaluate(exp: Experiment, config: ml_collections.ConfigDict,
                     run: run_lib.RunDir, features_dir: str | pathlib.Path
                     ) -> dict[str, Any]:
  """Fits `exp.strategy.fit` for the run of `config` (its seed's initial weights) in
  the claimed directory `run`; writes its predictions and results.json."""
  start = time.perf_counter()
  variables = exp.initial_variables(config)
  cached = {split: _split_features(exp, config, variables, split, pathlib.Path(features_dir))
            for split in ("train",) + EVALUATED}
  info = exp.info
  predictor = exp.strategy.fit.fit(*cached["train"], num_classes=info.num_classes,
                                   multilabel=info.multilabel)
  predictions = {split: _predictions(exp, predictor, *cached[split], split)
                 for split in EVALUATED}
  scores = {split: metrics_of(predictions[split], info.multilabel, info.class_names)
            for split in EVALUATED}
  member = loop.Member(config, run)
  try:
    return loop.write_results(exp, member, best_epoch=0, test=scores["test"],
                              val=scores["validation"], devices=1,
                              extra={"fit_seconds": time.perf_counter() - start},
                              predictions=predictions)
  finally:
    member.close()
