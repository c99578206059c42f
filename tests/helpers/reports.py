"""Predictions and report tables of own-data datasets, shared by the report tests."""

from __future__ import annotations


import json
import pathlib

import numpy as np

from ftjax import run as run_lib


METRICS = ("loss", "map", "accuracy", "auroc", "kappa", "f1")
KNEE = ("effusion", "meniscus_tear", "normal")          # multi-class, class folder names

def predictions(rng, n: int, classes: int, multilabel: bool):
  """Scores that track the labels a little, so each class's AUROC differs."""
  if multilabel:
    labels = (rng.random((n, classes)) < 0.4).astype(np.int64)
    labels[:, -1] = 0  # the last finding has no positive test example
    scores = 1 / (1 + np.exp(-(labels * 1.5 + rng.normal(size=(n, classes)))))
  else:
    labels = rng.integers(0, classes, n)
    logits = np.eye(classes)[labels] * rng.uniform(0.5, 2.0, classes) + rng.normal(
        size=(n, classes))
    scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  return scores.astype(np.float32), labels

def class_rows(markdown: str, dataset: str) -> dict[str, str]:
  """Class name -> its AUROC cell, from the dataset's table in report.md."""
  table = markdown.split(f"### {dataset}: classes\n", 1)[1].strip().split("\n\n", 1)[0]
  rows = [line.strip("|").split("|") for line in table.splitlines()[2:]]
  return {cells[1].strip(): cells[2].strip() for cells in rows}

def own_data_sweep(root: pathlib.Path, dataset: str, class_names, multilabel: bool) -> dict:
  """FT and LP-FT over two seeds; LP-FT wins on validation. Returns its predictions."""
  rng = np.random.default_rng(len(dataset))
  chosen = {}
  for strategy, validation in (("ft", 0.6), ("lp_ft", 0.8)):
    for seed in (0, 1):
      scores = predictions(rng, 60, len(class_names or KNEE), multilabel)
      write_run(root, dataset, strategy, seed, validation, class_names, scores)
      if strategy == "lp_ft":
        chosen[seed] = scores
  return chosen

def write_run(root: pathlib.Path, dataset: str, strategy: str, seed: int, validation: float,
         class_names, predictions) -> None:
  """One run directory as train writes it: identity.json, predictions/test.npz and a
  results.json recording the class names (None: an older results.json without them)."""
  fields = {"dataset": dataset, "arch": "resnet50", "strategy": strategy, "lr": 1e-3,
            "seed": seed}
  run_dir = root / run_lib.relative_path(*fields.values())
  (run_dir / "predictions").mkdir(parents=True)
  (run_dir / "identity.json").write_text(json.dumps(
      {"hash": run_lib.identity_hash(fields), "fields": fields}))
  scores, labels = predictions
  np.savez(run_dir / "predictions" / "test.npz", scores=scores, labels=labels,
           ids=np.array([f"x{i:03d}" for i in range(len(scores))]),
           groups=np.array([""] * len(scores)))
  values = lambda main: {**{m: 0.5 for m in METRICS}, "auroc": main, "map": main,
                         "count": len(scores)}
  results = {**fields, "main_metrics": ["auroc", "accuracy"], "validation": values(validation),
             "test": values(0.5)}
  if class_names is not None:
    results["class_names"] = list(class_names)
  (run_dir / "results.json").write_text(json.dumps(results))

