"""Predictions and report tables of own-data datasets, shared by the report tests."""

from __future__ import annotations


import numpy as np


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

