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
from tests.helpers import reports
from tests.helpers.data_trees import write_image
from tests.helpers.reports import KNEE
from tests.helpers import REPO
from tests.helpers.sweeps import write_result

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
      predictions = reports.predictions(rng, n, len(KNEE), multilabel)
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
  assert "### Wins, ties and losses" in markdown and "### Wins, ties and losses" not in strict


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


# --- Command lines ---------------------------------------------------------------


def cli(*args, cwd, env=None) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", **(env or {})}
  return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def one_error_line(done: subprocess.CompletedProcess) -> str:
  lines = [l for l in done.stderr.splitlines() if l.strip()]
  assert done.returncode != 0 and len(lines) == 1, done.stderr[-2000:]
  assert lines[0].startswith("error: "), lines
  return lines[0]


def test_help_exits_zero_on_every_command(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  started = {m: subprocess.Popen([sys.executable, "-m", m, "--help"], cwd=tmp_path, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for m in CLIS}  # at once: each is mostly the start of Python and JAX
  for module, process in started.items():
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, (module, err[-2000:])
    assert "usage" in out.lower() or "flags:" in out.lower(), module


def test_data_help_says_what_prepare_and_inspect_do(tmp_path):
  out = cli("-m", "ftjax.data", "--help", cwd=tmp_path).stdout
  assert "prepare" in out and "write it under --data_dir" in out
  assert "inspect" in out and "contact sheet" in out


@pytest.mark.parametrize("module", ["ftjax.train", "ftjax.sweep", "ftjax.multirun"])
def test_missing_config_file_is_one_line(module, tmp_path):
  line = one_error_line(cli("-m", module, "--config=configs/nope.py", cwd=tmp_path))
  assert "--config configs/nope.py: no such file" in line


def _folder(root: pathlib.Path, per_class: int, patients: int = 0) -> pathlib.Path:
  for c, label in enumerate(("a", "b")):
    for i in range(per_class):
      prefix = f"p{label}{i % patients}_" if patients else ""
      # A seed per image: identical pixels under two classes are refused.
      write_image(root / label / f"{prefix}{i}.png", seed=c * per_class + i)
  return root


def test_report_command_takes_the_minimum_and_a_rerun_writes_the_same(small):
  root = small[3]
  args = ("-m", "ftjax.report", "--workdir=runs", "--out=cli", "--bootstrap=20",
          "--nofigures", "--min_test_groups=50")
  first = cli(*args, cwd=root)
  assert first.returncode == 0, first.stderr[-2000:]
  markdown = (root / "cli" / "report.md").read_text()
  assert "too few test images (40) for a verdict" in _bullet(markdown, "knee_xr")
  assert cli(*args, cwd=root).returncode == 0
  assert (root / "cli" / "report.md").read_text() == markdown
  line = one_error_line(cli("-m", "ftjax.report", "--workdir=nowhere", "--out=x", cwd=root))
  assert "No results.json of a run directory under nowhere" in line


def _prepare(tmp_path, *extra) -> subprocess.CompletedProcess:
  return cli("-m", "ftjax.data", "prepare", "--dataset", "folder", "--manual_dir", "m",
             "--resize", "32", "--workers", "1", *extra, cwd=tmp_path)


def test_prepare_needs_a_name_and_says_what_it_is_for(tmp_path):
  _folder(tmp_path / "m", 4)
  line = one_error_line(_prepare(tmp_path))
  assert "needs --name" in line and "--config.dataset=NAME" in line
  assert not (tmp_path / "data").exists()


def test_prepare_counts_patients_per_split_warns_and_reruns_the_same(tmp_path):
  _folder(tmp_path / "m", 12, patients=6)  # 6 patients per class
  # One validation patient holds one class: allowed here, the counts are the point.
  runs = [_prepare(tmp_path, "--name", "knee", "--option", r"patient_pattern=(p\w\d)_",
                   "--option", "test_fraction=0.34", "--option", "allow_one_class_split=true")
          for _ in range(2)]
  for done in runs:
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Downloading and preparing" not in done.stdout + done.stderr
    assert "INFO" not in done.stderr and "Using custom data configuration" not in done.stderr
  assert runs[0].stdout == runs[1].stdout  # the rerun reads what the first one wrote
  from ftjax.data.prepared import get_dataset
  builder = get_dataset("knee", tmp_path / "data").create(tmp_path / "data", resize=32)
  for split in ("train", "validation", "test"):
    source = builder.as_data_source(split)
    patients = len({source[i]["patient_id"] for i in range(len(source))})
    assert f"  {split}: {len(source)} images, {patients} patients" in runs[0].stdout
    warned = f"warning: {split} has {patients} patients, fewer than 10" in runs[0].stderr
    assert warned == (patients < 10 and split != "train")  # train: no verdict rests on it
  assert "data/knee" in runs[0].stdout  # the default --data_dir, as config.data_dir
  inspected = cli("-m", "ftjax.data", "inspect", "--dataset", "knee", "--resize", "32",
                  cwd=tmp_path)
  assert inspected.returncode == 0, inspected.stderr[-2000:]
  splits = json.loads(inspected.stdout)["splits"]
  for split, counts in splits.items():
    assert f"  {split}: {counts['count']} images, {counts['patients']} patients" in \
        runs[0].stdout
    assert (f"warning: {split} has {counts['patients']} patients" in inspected.stderr) == (
        counts["patients"] < 10 and split != "train")


def test_small_prepared_images_get_a_crop_of_their_size(tmp_path, capsys):
  from configs import base
  from ftjax.engine import experiment
  from ftjax.data.__main__ import main as data_main
  _folder(tmp_path / "m", 10)
  assert data_main(["prepare", "--dataset", "folder", "--name", "tiny", "--manual_dir",
                    str(tmp_path / "m"), "--data_dir", str(tmp_path / "d"), "--resize",
                    "32", "--workers", "1"]) == 0
  capsys.readouterr()
  config = base.get_config("tiny,ft,resnet18")
  config.data_dir, config.resize, config.batch_size = str(tmp_path / "d"), 32, 4
  exp = experiment.load(config)
  assert exp.config.crop == 32
  assert "config.crop: 32, the prepared size" in capsys.readouterr().err
  config.crop = 48  # chosen by the user: refused, naming the flag
  with pytest.raises(ValueError, match=r"config.crop \(48\) is larger than the prepared "
                     r"images \(config.resize=32\): set --config.crop=32"):
    experiment.load(config)


def test_crop_larger_than_the_prepared_size_is_one_line_naming_the_flag(tmp_path):
  line = one_error_line(cli("-m", "ftjax.train", f"--config={REPO}/configs/demo.py",
                            "--config.resize=32", "--config.crop=48", "--workdir=run",
                            cwd=tmp_path))
  assert "--config.crop=32" in line
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("strategy,options,option", [
    ("lp_ft", ["--config.strategy_options.lp_epochs=3"], "lp_epochs"),
    ("wise_ft", ["--config.strategy_options.lp_epochs=3"], "lp_epochs"),
    ("g_lf", ["--config.strategy_options.unfreeze_every=3"], "unfreeze_every")])
def test_a_plan_that_never_leaves_the_head_is_refused(tmp_path, strategy, options, option):
  line = one_error_line(cli("-m", "ftjax.train", f"--config={REPO}/configs/demo.py",
                            f"--config.strategy={strategy}", "--config.num_epochs=3",
                            *options, "--workdir=run", cwd=tmp_path))
  assert f"strategy {strategy}: config.num_epochs=3 ends within the plan's first" in line
  assert f"--config.strategy_options.{option}" in line
  assert not (tmp_path / "run").exists()


def test_every_strategy_is_checked_against_num_epochs():
  from ftjax.strategies import STRATEGIES, get_strategy
  from ftjax.strategies.registry import check_plan
  for name in STRATEGIES:
    strategy = get_strategy(name, "resnet18", {"lp_epochs": 2, "unfreeze_every": 2,
                                               "phases": "head:2; all"})
    if len(strategy.plan.phases) > 1:
      with pytest.raises(ValueError, match=f"strategy {name}: config.num_epochs=2 "):
        check_plan(name, strategy.plan, 2, strategy.options)
    assert check_plan(name, strategy.plan, 100, strategy.options) is None
  g_fl = get_strategy("g_fl", "resnet18")  # one block per epoch: cut short at 3
  assert "stops before the plan's last phase" in check_plan("g_fl", g_fl.plan, 3,
                                                            g_fl.options)


def test_library_logging_is_quiet_unless_asked(monkeypatch):
  from absl import logging
  from ftjax import logging_utils
  before = logging.get_verbosity()
  try:
    monkeypatch.delenv(logging_utils.VERBOSITY_ENV, raising=False)
    logging_utils.quiet_libraries()
    assert logging.get_verbosity() == logging.ERROR
    monkeypatch.setenv(logging_utils.VERBOSITY_ENV, "info")
    logging_utils.quiet_libraries()
    assert logging.get_verbosity() == logging.INFO
  finally:
    logging.set_verbosity(before)


@pytest.mark.slow
def test_prepare_at_32_then_train_at_32_runs_and_reruns_as_finished(tmp_path):
  _folder(tmp_path / "m", 10)
  assert _prepare(tmp_path, "--name", "tiny").returncode == 0
  args = ("-m", "ftjax.train", f"--config={REPO}/configs/base.py:tiny,ft,resnet18",
          "--config.resize=32", "--config.init=random", "--config.num_epochs=1",
          "--config.batch_size=4", "--config.progress=False", "--workdir=run")
  first, again = cli(*args, cwd=tmp_path), cli(*args, cwd=tmp_path)
  assert first.returncode == 0, first.stderr[-2000:]
  assert "config.crop: 32" in first.stderr and "INFO" not in first.stderr
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results["epochs_run"] == 1 and results["test"]["count"] > 0
  assert again.returncode == 0 and "this run has finished" in again.stdout


def test_demo_shows_progress_within_an_epoch_on_a_terminal_only(monkeypatch):
  import io
  from configs import demo
  from ftjax.engine import loop

  class Terminal(io.StringIO):
    def isatty(self) -> bool:
      return True

  config = demo.get_config()
  assert config.progress  # the demo asks for bars; tqdm shows them on a terminal only
  for stream, shown in ((io.StringIO(), False), (Terminal(), True)):
    monkeypatch.setattr(sys, "stderr", stream)
    bar = loop.progress_bar(config, 0, 10, "training")
    bar.update(5)
    bar.close()
    assert ("epoch 1/6 [training]" in stream.getvalue()) == shown
