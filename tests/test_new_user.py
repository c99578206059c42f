"""A new user's first hours: the report on a small own-data study is honest about its
sample size, says when validation and test disagree, leaves the paper's material out,
and gives plain accuracy and a confusion matrix; the CLIs answer --help and user
errors with one line."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import sklearn.metrics

from ftjax import report, sweep
from tests.test_own_data_report import KNEE, _predictions
from tests.test_sweep_report import REPO, write_result

CLIS = ("ftjax.train", "ftjax.sweep", "ftjax.report", "ftjax.data", "ftjax.evaluate",
        "ftjax.multirun", "ftjax.demo", "weights_port")


def _save(run_dir: pathlib.Path, predictions, groups) -> None:
  scores, labels = predictions
  (run_dir / "predictions").mkdir()
  np.savez(run_dir / "predictions" / "test.npz", scores=scores, labels=labels,
           ids=np.array([f"x{i:03d}" for i in range(len(scores))]), groups=groups)


def _study(root: pathlib.Path, dataset: str, n: int, groups, *, multilabel=False,
           test=(0.5, 0.5)) -> dict:
  """FT and LP-FT, two seeds each, LP-FT ahead on validation; `test`: the two
  strategies' test AUROC in results.json. Returns LP-FT's predictions per seed."""
  rng = np.random.default_rng(n)
  chosen = {}
  for strategy, validation, test_value in (("ft", 0.6, test[0]), ("lp_ft", 0.8, test[1])):
    for seed in (0, 1):
      spec = sweep.RunSpec(dataset, "resnet50", strategy, 1e-3, seed)
      run_dir = write_result(root, spec, {"auroc": validation}, {"auroc": test_value},
                             main_metrics=("auroc", "accuracy"))
      predictions = _predictions(rng, n, len(KNEE), multilabel)
      _save(run_dir, predictions, np.asarray(groups))
      if strategy == "lp_ft":
        chosen[seed] = predictions
  return chosen


def _bullet(markdown: str, dataset: str) -> str:
  return next(line for line in markdown.splitlines() if line.startswith(f"- {dataset}:"))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  """One test patient (six images) in `one_patient`; 40 images without patient ids in
  `knee_xr`, where test favours FT; a multi-label `findings`."""
  root = tmp_path_factory.mktemp("new_user")
  _study(root / "runs", "one_patient", 6, ["p1"] * 6, test=(0.66, 0.62))
  chosen = _study(root / "runs", "knee_xr", 40, [""] * 40, test=(0.70, 0.55))
  multi = _study(root / "runs", "findings", 30, [""] * 30, multilabel=True)
  report.write_report(root / "runs", root / "report", figures_too=False, resamples=50)
  return (root / "report" / "report.md").read_text(), chosen, multi, root


def test_one_test_patient_gets_no_interval_and_no_call(small):
  markdown, _, _, root = small
  line = _bullet(markdown, "one_patient")
  assert "too few test patients (1) for a verdict" in line
  assert "95% interval" not in line and "[" not in line.split("too few", 1)[1]
  intervals = markdown.split("### one_patient: test, mean", 1)[1].split("###", 1)[0]
  assert "95% CI" not in intervals
  assert "### one_patient: paired difference" not in markdown
  summary = json.loads((root / "report" / "summary.json").read_text())
  assert summary["bootstrap"]["too_few_test_groups"] == {"one_patient": 1}
  assert not any(k.startswith("one_patient/") for k in summary["vs_ft"])
  # 40 images without patient ids are enough by default, and too few at 50.
  assert "95% interval" in _bullet(markdown, "knee_xr")
  report.write_report(root / "runs", root / "strict", figures_too=False, resamples=20,
                      min_test_groups=50)
  strict = (root / "strict" / "report.md").read_text()
  assert "too few test images (40) for a verdict" in _bullet(strict, "knee_xr")


def test_recommendation_starts_by_saying_validation_and_test_disagree(small):
  markdown = small[0]
  line = _bullet(markdown, "knee_xr")
  assert line.startswith("- knee_xr: **validation and test disagree**: validation picks "
                         "**Grad. Last/All (LP-FT)** with ResNet-50 (test 55.00%), test "
                         "favours **Full Fine-tuning (FT)** with ResNet-50 (test 70.00%)")
  assert "validation and test disagree" in _bullet(markdown, "one_patient")
  assert "disagree" not in _bullet(markdown, "findings")  # equal test values


def test_own_data_report_leaves_out_the_papers_material(small):
  markdown = small[0]
  for paper_only in ("Paper datasets without results", "recomputed from the paper",
                     "Paper: method", "Tables 3-10"):
    assert paper_only not in markdown
  assert "macro one-vs-rest accuracy" in markdown  # what "accuracy" means


def _row(markdown: str, title: str, first: str) -> list[str]:
  table = markdown.split(f"### {title}\n", 1)[1].strip().split("\n\n", 1)[0]
  line = next(l for l in table.splitlines() if l.startswith(f"| {first} |"))
  return [c.strip() for c in line.strip("|").split("|")]


def test_plain_accuracy_and_confusion_matrix_equal_sklearn(small):
  markdown, chosen, multi, _ = small
  title = "Plain accuracy of the validation choice (test, %)"
  expected = np.mean([sklearn.metrics.accuracy_score(labels, scores.argmax(1))
                      for scores, labels in chosen.values()])
  assert _row(markdown, title, "knee_xr")[3] == f"{100 * expected:.2f}"
  exact = np.mean([sklearn.metrics.accuracy_score(labels, (scores >= 0.5).astype(int))
                   for scores, labels in multi.values()])  # subset accuracy
  assert _row(markdown, title, "findings")[3] == f"{100 * exact:.2f}"
  matrix = sum(sklearn.metrics.confusion_matrix(labels, scores.argmax(1), labels=[0, 1, 2])
               for scores, labels in chosen.values())
  confusion_title = "knee_xr: confusion matrix, Grad. Last/All (LP-FT) with ResNet-50"
  for true_class in range(3):
    assert _row(markdown, confusion_title, str(true_class))[1:] == [
        str(v) for v in matrix[true_class]]
  assert "### findings: confusion matrix" not in markdown  # multi-label: none
