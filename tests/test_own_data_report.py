"""The report names a dataset's classes (from results.json) beside the per-class test
AUROC of the cell chosen on validation, computed from the runs' saved predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sklearn.metrics

from ftjax import report
from tests.helpers.reports import KNEE, class_rows, own_data_sweep, predictions

FINDINGS = ("nodule", "fibrosis", "pneumothorax", "mass")  # multi-label, CSV columns
METRICS = ("loss", "map", "accuracy", "auroc", "kappa", "f1")








def _sklearn_auroc(predictions: dict) -> list[float | None]:
  """Per class, the mean over seeds of scikit-learn's one-vs-rest ROC AUC (None where a
  seed's test set has one value of that class)."""
  per_class = []
  for c in range(next(iter(predictions.values()))[0].shape[1]):
    values = []
    for scores, labels in predictions.values():
      target = labels[:, c] if labels.ndim == 2 else (labels == c).astype(int)
      if 0 < target.sum() < len(target):
        values.append(sklearn.metrics.roc_auc_score(target, scores[:, c]))
    per_class.append(float(np.mean(values)) if values else None)
  return per_class




@pytest.fixture(scope="module")
def written(tmp_path_factory):
  root = tmp_path_factory.mktemp("own_report")
  chosen = {"knee_xr": own_data_sweep(root / "runs", "knee_xr", KNEE, multilabel=False),
            "chest_findings": own_data_sweep(root / "runs", "chest_findings", FINDINGS,
                                     multilabel=True)}
  own_data_sweep(root / "runs", "old_set", None, multilabel=False)
  report.write_report(root / "runs", root / "report", figures_too=False, resamples=20)
  return root / "report", chosen


@pytest.mark.parametrize("dataset,names", [("knee_xr", KNEE), ("chest_findings", FINDINGS)])
def test_report_names_each_class_with_its_auroc_checked_against_sklearn(written, dataset,
                                                                       names):
  out, chosen = written
  markdown = (out / "report.md").read_text()
  rows = class_rows(markdown, dataset)
  assert list(rows) == list(names)
  for name, expected in zip(names, _sklearn_auroc(chosen[dataset])):
    assert rows[name] == ("–" if expected is None else f"{100 * expected:.2f}"), name
  assert "(LP-FT) with ResNet-50" in markdown.split(f"### {dataset}: classes", 1)[1][:300]
  html = (out / "index.html").read_text()
  assert all(f"<td>{name}</td>" in html for name in names)
  summary = json.loads((out / "summary.json").read_text())
  assert summary["class_names"][dataset] == list(names)
  csv = (out / "tables" / f"classes_{dataset}.csv").read_text().splitlines()
  assert [line.split(",")[1] for line in csv[1:]] == list(names)


def test_results_without_class_names_get_no_class_table(written):
  out, _ = written
  markdown = (out / "report.md").read_text()
  assert "old_set" in markdown and "### old_set: classes" not in markdown
  assert "old_set" not in json.loads((out / "summary.json").read_text())["class_names"]


def test_per_class_auroc_equals_sklearn_on_each_class():
  from ftjax.report.classes import per_class_auroc
  rng = np.random.default_rng(3)
  for multilabel in (False, True):
    scores, labels = predictions(rng, 80, 4, multilabel)
    got = per_class_auroc(scores, labels)
    expected = _sklearn_auroc({0: (scores, labels)})
    for value, want in zip(got, expected):
      assert (np.isnan(value) if want is None else np.isclose(value, want, atol=1e-12))


def test_two_strategies_on_several_datasets_get_their_friedman_row(written):
  """A user study comparing two strategies (k = 2, where scipy's Friedman refuses)."""
  out, _ = written
  markdown = (out / "report.md").read_text()
  assert "| all architectures | 3 | 2 |" in markdown


def test_friedman_of_two_strategies_without_ties_needs_no_correction():
  from ftjax.report import stats
  values = np.random.default_rng(5).normal(size=(6, 2))
  result = stats.friedman(values)
  # k = 2 without ties: Friedman's chi2 is the sign test's (wins - losses)^2 / N.
  wins = int(np.sum(values[:, 0] > values[:, 1]))
  assert result.chi2 == pytest.approx((wins - (6 - wins)) ** 2 / 6)
  assert result.chi2_tie_corrected == pytest.approx(result.chi2)
