"""The report's verdict: intervals, win/tie/loss vs FT, CD diagram, recommendation, --paper."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import sklearn.metrics

from ftjax import paper_results, report, sweep
from ftjax.report import paper, stats, verdict
from tests.test_sweep_report import REPO, write_result

N_TEST = 150
# strategy -> (probability a test image is classified right, validation accuracy, random
# stream): LP-FT draws FT's stream, so it is right wherever FT is and on ~0.5% more.
STRATEGIES = {"ft": (0.80, 0.70, 0), "lp": (0.55, 0.60, 1), "lp_ft": (0.805, 0.75, 0)}


def _save_predictions(run_dir, right_rate: float, seed: int, groups: np.ndarray) -> None:
  """<run>/predictions/test.npz in the documented layout, with a known accuracy."""
  rng = np.random.default_rng(seed)
  labels = np.arange(N_TEST) % 2
  right = rng.random(N_TEST) < right_rate
  predicted = np.where(right, labels, 1 - labels)
  scores = np.where(np.eye(2)[predicted] == 1, 0.9, 0.1).astype(np.float32)
  (run_dir / "predictions").mkdir()
  ids = np.array([f"img{i:04d}" for i in range(N_TEST)])
  order = rng.permutation(N_TEST)  # runs may store their examples in any order
  np.savez(run_dir / "predictions" / "test.npz", scores=scores[order], labels=labels[order],
           ids=ids[order], groups=groups[order])
  # results.json's test values are those of the same predictions, as a run writes them.
  results = json.loads((run_dir / "results.json").read_text())
  results["test"].update(accuracy=float(right.mean()),
                         kappa=sklearn.metrics.cohen_kappa_score(labels, predicted))
  (run_dir / "results.json").write_text(json.dumps(results))


def _sweep(root, with_predictions=True, groups=None, dataset="mura_wrist"):
  groups = np.full(N_TEST, "") if groups is None else groups
  for strategy, (right, val, stream) in STRATEGIES.items():
    for seed in (0, 1):
      spec = sweep.RunSpec(dataset, "resnet50", strategy, 1e-4, seed)
      run_dir = write_result(root, spec, {"accuracy": val}, {"accuracy": right},
                             main_metrics=("accuracy", "kappa"))
      if with_predictions:
        _save_predictions(run_dir, right, 10 * stream + seed, groups)


def test_report_has_intervals_calls_cd_diagram_and_recommendation(tmp_path):
  _sweep(tmp_path / "runs")
  (tmp_path / "runs" / "mura_wrist").rename(tmp_path / "runs" / "wrist_xr")  # own dataset
  for path in (tmp_path / "runs").rglob("results.json"):
    r = json.loads(path.read_text())
    r["dataset"] = "wrist_xr"
    path.write_text(json.dumps(r))
    identity = json.loads((path.parent / "identity.json").read_text())
    identity["fields"]["dataset"] = "wrist_xr"
    identity["hash"] = report.collect.run_lib.identity_hash(identity["fields"])
    (path.parent / "identity.json").write_text(json.dumps(identity))
  written = report.write_report(tmp_path / "runs", tmp_path / "out", resamples=300,
                                modalities={"wrist_*": "X-ray (mine)"})
  md = written["report.md"].read_text()
  # The interval of FT's accuracy: its centre is the two seeds' mean accuracy computed
  # with scikit-learn, its width about a binomial 95% interval's (150 images, 2 seeds).
  study = report.study(tmp_path / "runs")
  v = verdict.analyse(study, resamples=300)
  accuracies = []
  for seed in (0, 1):
    saved = np.load(tmp_path / f"runs/wrist_xr/resnet50/ft/lr0.0001/seed{seed}/predictions/"
                    "test.npz")
    accuracies.append(100 * sklearn.metrics.accuracy_score(saved["labels"],
                                                           saved["scores"].argmax(1)))
  mean, low, high = v.intervals[("wrist_xr", "resnet50", "ft")]["accuracy"]
  assert mean == pytest.approx(np.mean(accuracies))
  binomial = 2 * 1.96 * math.sqrt(0.8 * 0.2 / N_TEST) * 100 / math.sqrt(2)
  assert low < mean < high and 0.6 * binomial < high - low < 1.6 * binomial
  assert f"[{low:.2f}, {high:.2f}]" in md
  # LP (55% vs 80%) loses to FT; LP-FT is better on every resample but by less than the
  # ROPE: a tie.
  assert v.difference(("wrist_xr", "resnet50", "lp"), ("wrist_xr", "resnet50", "ft"),
                      "accuracy").call == "loss"
  assert v.difference(("wrist_xr", "resnet50", "lp_ft"), ("wrist_xr", "resnet50", "ft"),
                      "accuracy").call == "tie"
  wtl = (tmp_path / "out" / "tables" / "win_tie_loss.csv").read_text().splitlines()
  assert "Linear Probing (LP),0,0,1,0.0" in wtl and "Grad. Last/All (LP-FT),0,1,0,0.0" in wtl
  # Recommendation: LP-FT (best on validation), FT as good, LP clearly worse; grouped
  # under the user's modality label.
  rec = md[md.index("## Recommendation"):]
  assert "### X-ray (mine)" in rec
  assert "chosen on validation, **Grad. Last/All (LP-FT)** with ResNet-50" in rec
  assert "not significantly different" in rec and "Full Fine-tuning (FT) (" in rec
  assert "Clearly worse: Linear Probing (LP)" in rec
  summary = json.loads(written["summary.json"].read_text())
  assert summary["vs_ft"]["wrist_xr/resnet50/lp"]["accuracy"]["call"] == "loss"
  assert summary["intervals"]["wrist_xr/resnet50/ft"]["accuracy"] == pytest.approx(
      [mean, low, high])
  # 3 strategies on 1 cell cannot be ranked: no empty Friedman table, no diagram.
  assert "Friedman test over strategies" not in md
  html = written["index.html"].read_text()
  assert "<h2>Recommendation</h2>" in html and "X-ray (mine)" in html


def test_cd_diagram_is_drawn_across_cells(tmp_path):
  for dataset in ("mura_wrist", "bach"):
    _sweep(tmp_path / "runs", dataset=dataset)
  written = report.write_report(tmp_path / "runs", tmp_path / "out", resamples=50)
  png = tmp_path / "out" / "figures" / "cd_friedman_all.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "cd_friedman_all" in written["report.md"].read_text()
  assert "data:image/png;base64," in written["index.html"].read_text()


def test_patients_are_resampled_when_the_test_set_has_them(tmp_path):
  groups = np.array([f"patient{i // 3}" for i in range(N_TEST)])
  _sweep(tmp_path / "runs", groups=groups)
  v = verdict.analyse(report.study(tmp_path / "runs"), resamples=50)
  assert v.unit["mura_wrist"] == "patients"
  written = report.write_report(tmp_path / "runs", tmp_path / "out", resamples=50)
  assert "50 resamples of the test patients" in written["report.md"].read_text()


def test_old_runs_without_predictions_still_report_and_say_so(tmp_path):
  _sweep(tmp_path / "runs", with_predictions=False)
  written = report.write_report(tmp_path / "runs", tmp_path / "out", resamples=50)
  md = written["report.md"].read_text()
  assert "80.00 ± 0.00" in md  # mean ± s.e. from results.json, as before
  assert "Cells without intervals" in md
  assert "`mura_wrist/resnet50/lp`: no saved test predictions" in md
  assert "No interval: its runs saved no test predictions" in md


def test_paper_reanalysis_matches_an_independent_friedman(tmp_path):
  result = subprocess.run([sys.executable, "-m", "ftjax.report", "--paper", "--out",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  md = (tmp_path / "paper_reanalysis.md").read_text()
  # Friedman over the 24 published cells, computed here from the shipped numbers.
  metrics = paper.main_metrics()
  strategies = list(paper_results.results()["bach"]["resnet50"])
  values = np.array([[paper_results.paper_value(d, a, s, metrics[d])[0] for s in strategies]
                     for d in paper_results.datasets() for a in paper_results.ARCHS])
  direct = __import__("scipy").stats.friedmanchisquare(*values.T)
  assert f"{stats.friedman(values).chi2:.2f}" in md
  assert stats.friedman(values).chi2_tie_corrected == pytest.approx(direct.statistic)
  assert (tmp_path / "cd_paper_all.png").read_bytes()[:4] == b"\x89PNG"
  assert "LP-FT improves over FT in over 50% of cases" in md
  # A ROPE call on one published cell, by hand: CheXpert ResNet-50 LP-FT vs FT (mAP
  # 73.35 ± 0.6 vs 71.98 ± 0.7): d = 1.37, half-width 2.776 * sqrt(0.36 + 0.49) = 2.56.
  d = paper.difference("chexpert", "resnet50", "lp_ft", rope=1.0)
  assert d.estimate == pytest.approx(1.37) and d.call == "tie"
  assert d.high - d.estimate == pytest.approx(2.776 * math.sqrt(0.85), abs=1e-3)


def test_damaged_predictions_file_is_named_and_the_cell_keeps_its_mean(tmp_path):
  _sweep(tmp_path / "runs")
  damaged = tmp_path / "runs/mura_wrist/resnet50/lp/lr0.0001/seed1/predictions/test.npz"
  damaged.write_bytes(damaged.read_bytes()[:100])  # cut short
  written = report.write_report(tmp_path / "runs", tmp_path / "out", resamples=20)
  md = written["report.md"].read_text()
  assert f"`mura_wrist/resnet50/lp`: {damaged} is unreadable (" in md
  lp_row = next(line for line in md.splitlines()
                if line.startswith("| Linear Probing (LP) | ") and "±" in line)
  assert "95% CI" not in lp_row  # the first table with intervals: mean ± s.e. only
  assert "mura_wrist/resnet50/ft" in json.loads(written["summary.json"].read_text())[
      "intervals"]
