"""ftjax.sweep (grid, resume, locks, failures) and ftjax.report (tables 3-12, figures)."""

import functools
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time

import ml_collections
import numpy as np
import pytest
import sklearn.metrics

from configs import sweep_demo, sweep_paper
from ftjax import run as run_lib
from ftjax import paper_results, report, sweep
from ftjax.sweep import local as sweep_local
from ftjax.engine import evaluation
from ftjax.report import compare, tables
from ftjax.strategies import get_strategy

REPO = pathlib.Path(__file__).resolve().parents[1]
METRICS = ("loss", "map", "accuracy", "auroc", "kappa", "f1")


def tiny_sweep_config(data_dir, strategies=("ft", "lp"), lrs=(1e-3, 1e-4), seeds=(0, 1)):
  """configs/sweep_demo.py shrunk to seconds per run on a CPU."""
  config = sweep_demo.get_config()
  base = config.base
  base.data_dir = str(data_dir)
  base.dataset_options.num_train = 96
  base.dataset_options.num_test = 48
  base.resize, base.crop = 36, 32
  base.batch_size, base.eval_batch_size = 16, 32
  base.num_epochs = 1
  base.progress = False
  base.strategy_options.lp_epochs = 1
  base.strategy_options.rgn_batches = 2
  config.strategies, config.lrs, config.seeds = strategies, lrs, seeds
  return config


def _overrides(config) -> list[str]:
  """The tiny config as command-line overrides of configs/sweep_demo.py."""
  b = config.base
  return [f"--config.base.data_dir={b.data_dir}",
          f"--config.base.dataset_options.num_train={b.dataset_options.num_train}",
          f"--config.base.dataset_options.num_test={b.dataset_options.num_test}",
          f"--config.base.resize={b.resize}", f"--config.base.crop={b.crop}",
          f"--config.base.batch_size={b.batch_size}",
          f"--config.base.eval_batch_size={b.eval_batch_size}",
          f"--config.base.num_epochs={b.num_epochs}",
          f"--config.base.strategy_options.rgn_batches={b.strategy_options.rgn_batches}",
          f"--config.base.strategy_options.lp_epochs={b.strategy_options.lp_epochs}",
          f"--strategies={','.join(config.strategies)}",
          f"--lrs={','.join(f'{lr:g}' for lr in config.lrs)}",
          f"--seeds={','.join(map(str, config.seeds))}"]


def write_result(root, spec: sweep.RunSpec, validation: dict, test: dict,
                 main_metrics=("accuracy", "auroc"), identity: dict | None = None
                 ) -> pathlib.Path:
  """A results.json and identity.json as train_and_evaluate writes them, with
  chosen metric values (identity: the run's fields; by default only its place's)."""
  run_dir = spec.directory(root)
  run_dir.mkdir(parents=True, exist_ok=True)
  identity = identity or {"dataset": spec.dataset, "arch": spec.arch,
                          "strategy": spec.strategy, "lr": spec.lr, "seed": spec.seed}
  (run_dir / "identity.json").write_text(json.dumps(
      {"hash": run_lib.identity_hash(identity), "fields": identity}))
  fill = lambda d: {**{m: 0.5 for m in METRICS}, **d, "count": 10}
  (run_dir / "results.json").write_text(json.dumps({
      "dataset": spec.dataset, "arch": spec.arch, "strategy": spec.strategy,
      "lr": spec.lr, "seed": spec.seed, "init": "random", "data_config": "x", "unit": None,
      "main_metrics": list(main_metrics), "best_epoch": 0, "epochs_run": 1,
      "stopped_early": False, "train_seconds": 1.0, "validation": fill(validation),
      "test": fill(test), "device": "cpu", "jax_version": "0"}))
  return run_dir


def fake_runner(log: pathlib.Path | None = None, seconds: float = 0.0, fail=()):
  """Stands in for training: optionally logs, sleeps, fails; writes results.json."""
  mutex = threading.Lock()

  def run(spec, config, run_dir, device):
    del device
    assert config.lr == spec.lr and config.strategy == spec.strategy
    if log is not None:
      with mutex, open(log, "a") as f:
        f.write(spec.name + "\n")
    time.sleep(seconds)
    if spec.name in fail:
      raise RuntimeError(f"injected failure in {spec.name}")
    write_result(run_dir.parents[4], spec, {"accuracy": 0.5}, {"accuracy": 0.5},
                 identity=sweep.expected_identity(config))
  return run


# --- The grid -------------------------------------------------------------------


def test_paper_grid_has_1728_runs_and_subsets():
  config = sweep_paper.get_config()
  assert len(sweep.grid(config)) == 8 * 3 * 8 * 3 * 3 == 1728
  subset = sweep.grid(config, datasets=["bach", "isic2020"], lrs=["1e-4"], seeds=["0", "2"])
  assert len(subset) == 2 * 3 * 8 * 1 * 2
  assert {s.lr for s in subset} == {1e-4} and {s.seed for s in subset} == {0, 2}
  assert subset[0].directory("runs/paper") == pathlib.Path(
      f"runs/paper/{subset[0].dataset}/{subset[0].arch}/{subset[0].strategy}/lr0.0001/seed0")
  with pytest.raises(ValueError, match="not in the sweep"):
    sweep.grid(config, datasets=["bahc"])
  spec = subset[0]
  run = spec.config(config.base)
  assert (run.dataset, run.arch, run.strategy, run.lr, run.seed) == (
      spec.dataset, spec.arch, spec.strategy, spec.lr, spec.seed)
  assert config.base.dataset == "isic2020"  # the base is copied, not changed



def test_extended_grid_adds_six_strategies_and_runs_knn_once_per_seed():
  from configs import sweep_extended
  config = sweep_extended.get_config()
  runs = sweep.grid(config)
  trained = len(sweep_paper.STRATEGIES) + len(sweep_extended.EXTENDED_STRATEGIES) - 1
  assert len(runs) == 8 * 3 * (trained * 3 * 3 + 1 * 3)  # knn: no lr, one run per seed
  knn = [r for r in runs if r.strategy == "knn"]
  assert {r.lr for r in knn} == {config.lrs[0]} and len(knn) == 8 * 3 * 3
  for name in sweep_extended.EXTENDED_STRATEGIES:  # each one a registered strategy
    get_strategy(name, "resnet50")
  own = sweep.grid(sweep_extended.get_config("knee_xr,bach"))
  assert {r.dataset for r in own} == {"knee_xr", "bach"}



def _bach_study(root: pathlib.Path, test_accuracy: dict[str, float]) -> pathlib.Path:
  """Two seeds per strategy of BACH / DenseNet-121 at lr 1e-4, each with this test
  accuracy (validation 0.7, kappa 0.6)."""
  for strategy, acc in test_accuracy.items():
    for seed in (0, 1):
      write_result(root, sweep.RunSpec("bach", "densenet121", strategy, 1e-4, seed),
                   {"accuracy": 0.7}, {"accuracy": acc, "kappa": 0.6},
                   main_metrics=("accuracy", "kappa"))
  return root

def test_report_shows_new_strategies_beside_the_papers_without_a_paper_value(tmp_path):
  root = _bach_study(tmp_path / "runs", {"ft": 0.80, "llrd": 0.83})
  md = report.write_report(root, tmp_path / "out")["report.md"].read_text()
  row = next(line for line in md.splitlines()
             if line.startswith("| Layer-wise LR Decay (LLRD)") and " / " in line)
  assert "83.00 / –" in row and "(+" not in row  # no published value to compare with
  assert any(line.startswith("| Full Fine-tuning (FT)") and "80.00 / 67.50 (+12.50)" in line
             for line in md.splitlines())


# --- Sweep: kill and restart, then the report on real runs ------------------------


def test_killed_sweep_restarts_without_redoing_runs_and_reports(tmp_path):
  config = tiny_sweep_config(tmp_path / "data")
  workdir = tmp_path / "runs"
  specs = sweep.grid(config)
  assert len(specs) == 8
  identities = {s: sweep.expected_identity(s.config(config.base)) for s in specs}
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "JAX_COMPILATION_CACHE_DIR": os.path.join(tempfile.gettempdir(),
                                                    "ftjax-test-jax-cache")}
  child = subprocess.Popen(
      [sys.executable, "-m", "ftjax.sweep", "--config", "configs/sweep_demo.py",
       "--workdir", str(workdir), "--devices", "1", *_overrides(config)],
      cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 150
  done = []
  while not done and time.time() < deadline and child.poll() is None:
    time.sleep(0.2)
    done = [s for s in specs if sweep.is_done(s.directory(workdir), identities[s])]
  assert done, child.stderr.read().decode()[-3000:] if child.poll() is not None else "slow"
  child.send_signal(signal.SIGKILL)  # no cleanup: like a preempted job
  child.wait()
  finished = {s: s.directory(workdir) / "results.json" for s in specs
              if sweep.is_done(s.directory(workdir), identities[s])}
  assert 0 < len(finished) < len(specs)
  mtimes = {s: p.stat().st_mtime_ns for s, p in finished.items()}

  summary = sweep.run_sweep(config, workdir, specs, progress=False)
  assert summary.ok and summary.total == 8
  assert set(summary.already_done) == set(finished)
  assert len(summary.ran) == 8 - len(finished)
  assert all(sweep.status(s.directory(workdir), identities[s]) == "done" for s in specs)
  assert {s: p.stat().st_mtime_ns for s, p in finished.items()} == mtimes
  again = sweep.run_sweep(config, workdir, specs, progress=False)
  assert not again.ran and len(again.already_done) == 8

  # The report on these runs: shape, and every cell recomputed with numpy.
  out = tmp_path / "report"
  written = report.write_report(workdir, out)
  assert written["index.html"].exists() and "<table>" in written["index.html"].read_text()
  assert (out / "figures" / "relative_synthetic.png").stat().st_size > 0
  lines = (out / "tables" / "table_synthetic.csv").read_text().splitlines()
  assert lines[0] == "Method,resnet18 Accuracy,resnet18 AUROC"
  assert [line.split(",")[0] for line in lines[1:]] == [
      "Full Fine-tuning (FT)", "Linear Probing (LP)"]
  results = [json.loads(p.read_text()) for p in workdir.rglob("results.json")]
  _check_saved_predictions(workdir)
  study = report.study(workdir)
  for strategy in ("ft", "lp"):
    runs = [r for r in results if r["strategy"] == strategy]
    val = {lr: np.mean([r["validation"]["accuracy"] for r in runs if r["lr"] == lr])
           for lr in (1e-3, 1e-4)}
    losses = {lr: np.mean([r["validation"]["loss"] for r in runs if r["lr"] == lr])
              for lr in (1e-3, 1e-4)}
    best = max(val, key=lambda lr: (round(val[lr], 12), -losses[lr], lr))
    assert study.selections[("synthetic", "resnet18", strategy)].lr == best
    for metric in ("accuracy", "auroc"):
      values = 100 * np.array([r["test"][metric] for r in runs if r["lr"] == best])
      mean, se = study.cells["synthetic"]["resnet18"][strategy][metric]
      assert mean == pytest.approx(values.mean())
      assert se == pytest.approx(values.std(ddof=1) / np.sqrt(2))


def _check_saved_predictions(workdir: pathlib.Path) -> None:
  """Every finished run saved both splits' predictions: each example once, and
  scikit-learn's AUROC on them is the one in results.json."""
  for path in workdir.rglob("results.json"):
    results = json.loads(path.read_text())
    for split in ("test", "validation"):
      saved = evaluation.load_predictions(path.parent / "predictions" / f"{split}.npz")
      assert saved["scores"].dtype == np.float32 and saved["ids"].dtype.kind == "U"
      assert len(set(saved["ids"])) == len(saved["ids"]) == results[split]["count"]
      assert set(saved["groups"]) == {""}  # the synthetic data has no patients
      np.testing.assert_allclose(saved["scores"].sum(axis=1), 1.0, atol=1e-5)
      auroc = sklearn.metrics.roc_auc_score(saved["labels"], saved["scores"],
                                            multi_class="ovr")
      assert auroc == pytest.approx(results[split]["auroc"], abs=1e-5)


# --- Locks -------------------------------------------------------------------------


def test_two_sweeps_at_once_run_every_run_exactly_once(tmp_path):
  config = tiny_sweep_config(tmp_path / "data", strategies=("ft", "lp"), seeds=(0, 1, 2))
  log = tmp_path / "runs.log"
  summaries = []
  threads = [threading.Thread(target=lambda: summaries.append(sweep.run_sweep(
      config, tmp_path / "runs", runner=fake_runner(log, 0.05), poll_seconds=0.05,
      progress=False))) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  ran = log.read_text().splitlines()
  names = [s.name for s in sweep.grid(config)]
  assert sorted(ran) == sorted(names)  # each run once, none missing
  assert len(summaries) == 2 and all(s.ok for s in summaries)
  assert sorted(s.name for x in summaries for s in x.ran) == sorted(names)


def test_run_locked_by_another_process_is_waited_for_not_rerun(tmp_path):
  config = tiny_sweep_config(tmp_path / "data", strategies=("ft",), lrs=(1e-3,),
                             seeds=(0, 1))
  workdir = tmp_path / "runs"
  held = sweep.grid(config)[0]
  held_dir = held.directory(workdir)
  held_dir.mkdir(parents=True)
  identity = sweep.expected_identity(held.config(config.base))
  identity_text = json.dumps({"hash": run_lib.identity_hash(identity), "fields": identity})
  code = (f"import fcntl, os, time, json, sys\n"
          f"fd = os.open({str(held_dir / 'lock')!r}, os.O_RDWR | os.O_CREAT)\n"
          f"fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(1.5)\n"
          f"open({str(held_dir / 'identity.json')!r}, 'w').write({identity_text!r})\n"
          f"open({str(held_dir / 'results.json')!r}, 'w').write('{{}}')\n")
  child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
  assert child.stdout.readline().strip() == "locked"
  assert sweep.status(held_dir) == "running"
  log = tmp_path / "runs.log"
  summary = sweep.run_sweep(config, workdir, runner=fake_runner(log), poll_seconds=0.1,
                            progress=False)
  child.wait()
  assert log.read_text().splitlines() == [sweep.grid(config)[1].name]
  assert summary.done_elsewhere == [held] and summary.ok
  assert sweep.status(held_dir, identity) == "done"


def test_failing_run_is_logged_and_the_sweep_goes_on(tmp_path):
  config = tiny_sweep_config(tmp_path / "data")
  specs = sweep.grid(config)
  bad = specs[2]
  summary = sweep.run_sweep(config, tmp_path / "runs",
                            runner=fake_runner(fail={bad.name}), progress=False)
  assert not summary.ok and [s for s, _ in summary.failed] == [bad]
  assert "injected failure" in (bad.directory(tmp_path / "runs") / "error.txt").read_text()
  assert sweep.status(bad.directory(tmp_path / "runs")) == "failed"
  assert all(sweep.is_done(s.directory(tmp_path / "runs"),
                           sweep.expected_identity(s.config(config.base)))
             for s in specs if s != bad)
  # A later sweep retries it and clears the error.
  retry = sweep.run_sweep(config, tmp_path / "runs", runner=fake_runner(), progress=False)
  assert retry.ok and retry.ran == [bad]
  assert not (bad.directory(tmp_path / "runs") / "error.txt").exists()
  assert "7 done" not in sweep.describe(specs, tmp_path / "runs", config.base)
  assert "8 done" in sweep.describe(specs, tmp_path / "runs", config.base)
  # Without the config the identity is unknown: finished runs are not counted done.
  assert "8 unverified" in sweep.describe(specs, tmp_path / "runs")


# --- Learning-rate selection and the report's arithmetic ------------------------------


def _spec(strategy, lr, seed, arch="resnet18"):
  return sweep.RunSpec("synthetic", arch, strategy, lr, seed)


def test_lr_is_selected_on_validation_never_on_test(tmp_path):
  root = tmp_path / "runs"
  # ft: 1e-3 is best on validation, 1e-4 is best on test -> 1e-3 must be chosen.
  for seed, (v3, t3, v4, t4) in enumerate([(0.9, 0.50, 0.7, 0.95), (0.8, 0.60, 0.7, 0.97)]):
    write_result(root, _spec("ft", 1e-3, seed), {"accuracy": v3}, {"accuracy": t3})
    write_result(root, _spec("ft", 1e-4, seed), {"accuracy": v4}, {"accuracy": t4})
  # A single-seed lr with a better validation mean does not compete with 2-seed ones.
  write_result(root, _spec("ft", 1e-5, 0), {"accuracy": 0.99}, {"accuracy": 0.99})
  # lp: equal validation accuracy; the lower validation loss (1e-4) wins the tie.
  for seed in (0, 1):
    write_result(root, _spec("lp", 1e-3, seed), {"accuracy": 0.6, "loss": 0.9},
                 {"accuracy": 0.9})
    write_result(root, _spec("lp", 1e-4, seed), {"accuracy": 0.6, "loss": 0.4},
                 {"accuracy": 0.2 + 0.1 * seed})
  study = report.study(root)
  assert study.selections[("synthetic", "resnet18", "ft")].lr == 1e-3
  assert study.selections[("synthetic", "resnet18", "lp")].lr == 1e-4
  mean, se = study.cells["synthetic"]["resnet18"]["ft"]["accuracy"]
  assert (mean, se) == pytest.approx((55.0, np.std([50.0, 60.0], ddof=1) / np.sqrt(2)))
  assert study.cells["synthetic"]["resnet18"]["lp"]["accuracy"] == pytest.approx((25.0, 5.0))

  report.write_report(root, tmp_path / "out", figures_too=False)
  rows = (tmp_path / "out" / "tables" / "table_synthetic.csv").read_text().splitlines()
  assert rows[1].startswith("Full Fine-tuning (FT),55.00 ± 5.00,")
  assert rows[2].startswith("Linear Probing (LP),25.00 ± 5.00,")


def _cells(values):
  """{(arch, strategy): main metric} -> Cells of one dataset 'd' with metric 'm'."""
  cells = {"d": {}}
  for (arch, strategy), v in values.items():
    cells["d"].setdefault(arch, {})[strategy] = {"m": (v, 0.0)}
  return cells


def test_improvement_and_effectiveness_follow_the_paper():
  cells = _cells({("a1", "ft"): 80.0, ("a1", "lp"): 80.2, ("a1", "g_lf"): 80.05,
                  ("a1", "l1_sp"): 60.0, ("a2", "ft"): 50.0, ("a2", "lp"): 49.0,
                  ("a2", "g_lf"): 55.0, ("a2", "l1_sp"): 50.06})
  gains = compare.improvements(cells, "d", "m")
  assert gains["a1"]["lp"] == pytest.approx(0.25)     # 100 * 0.2 / 80
  assert gains["a2"]["g_lf"] == pytest.approx(10.0)
  assert gains["a1"]["l1_sp"] == pytest.approx(-25.0)
  eff = compare.effectiveness(cells, {"d": "m"}, ["ft", "lp", "g_lf", "l1_sp"], ["a1", "a2"])
  # Beats FT when > 0.1 %: lp on a1 (0.25 %), not g_lf on a1 (0.0625 %).
  assert eff.wins["lp"] == {"a1": ["d"], "a2": []}
  assert eff.wins["g_lf"] == {"a1": [], "a2": ["d"]}
  assert eff.wins["l1_sp"] == {"a1": [], "a2": ["d"]}  # 100 * 0.06 / 50 = 0.12 > 0.1
  assert eff.percent("lp") == 50.0 and eff.arch_total("a2") == 2
  best = compare.best_per_dataset(cells, {"d": "m"})["d"]
  assert (best.arch, best.strategy, best.improvement) == ("a1", "lp", pytest.approx(0.25))


def test_tables_11_and_12_recomputed_from_the_papers_cells():
  cells = paper_results.results()
  metrics = {d: paper_results.metrics(d)[0] for d in paper_results.datasets()}
  best = compare.best_per_dataset(cells, metrics)
  for dataset, (arch, strategy, gain) in paper_results.TABLE11.items():
    assert (best[dataset].arch, best[dataset].strategy) == (arch, strategy)
    assert round(best[dataset].improvement, 1) == gain
  # The printed table 12 counts ISIC 2020 by accuracy; then LP, G-FL, LP-FT, L1-SP
  # and Auto-RGN match it exactly.
  eff = compare.effectiveness(cells, {**metrics, "isic2020": "accuracy"},
                              list(tables.STRATEGY_NAMES), list(paper_results.ARCHS))
  for strategy in ("lp", "g_fl", "lp_ft", "l1_sp", "auto_rgn"):
    counts = tuple(eff.count(strategy, a) for a in paper_results.ARCHS)
    assert counts + (eff.total(strategy),) == paper_results.TABLE12[strategy][:4]
    assert round(eff.percent(strategy), 1) == paper_results.TABLE12[strategy][4]


def test_shipped_paper_numbers_match_the_paper():
  v = paper_results.paper_value
  # Table 3 (CheXpert), typed from the paper.
  assert v("chexpert", "resnet50", "ft", "map") == (71.98, 0.7)
  assert v("chexpert", "resnet50", "ft", "auroc") == (87.72, 0.0)
  assert v("chexpert", "resnet50", "lp_ft", "map") == (73.35, 0.6)
  assert v("chexpert", "resnet50", "l1_sp", "auroc") == (87.85, 0.2)
  assert v("chexpert", "resnet50", "auto_rgn", "auroc") == (87.99, 0.3)
  assert v("chexpert", "densenet121", "g_fl", "map") == (72.96, 0.3)
  assert v("chexpert", "densenet121", "l2_sp", "auroc") == (86.54, 0.3)
  assert v("chexpert", "vgg19", "lp", "map") == (64.36, 0.5)
  assert v("chexpert", "vgg19", "auto_rgn", "map") == (72.72, 0.3)
  # Other tables.
  assert v("mura_humerus", "vgg19", "auto_rgn", "kappa") == (48.99, 12.7)
  assert v("isic2020", "densenet121", "lp", "auroc") == (86.12, 0.0)
  assert v("isic2020", "resnet50", "ft", "accuracy") == (97.98, 0.1)
  assert v("cholect50", "vgg19", "auto_rgn", "map") == (56.80, 13.6)
  assert paper_results.metrics("isic2020") == ("auroc", "accuracy")
  assert [paper_results.table_number(d) for d in paper_results.datasets()] == list(
      range(3, 11))
  assert sum(len(s) for a in paper_results.results().values() for s in a.values()) == 8 * 3 * 8
  # Table 11.
  assert paper_results.TABLE11["bach"] == ("densenet121", "auto_rgn", 11.1)
  assert paper_results.TABLE11["isic2020"] == ("densenet121", "lp", 20.8)
  assert paper_results.TABLE11["brain_tumor_mri"] == ("vgg19", "ft", 0.0)
  # Table 12.
  assert paper_results.TABLE12["lp_ft"] == (5, 7, 2, 14, 58.3)
  assert paper_results.TABLE12["g_lf"] == (3, 3, 5, 11, 45.8)
  assert paper_results.TABLE12["lp"] == (0, 1, 1, 2, 8.3)
  assert paper_results.TABLE12_TOTALS == (17, 24, 15)


def test_report_puts_the_papers_value_beside_every_cell(tmp_path):
  root = _bach_study(tmp_path / "runs", {"ft": 0.80, "auto_rgn": 0.77})
  (root / "bach/densenet121/auto_rgn/lr0.0001/seed0/rgn.jsonl").write_text("".join(
      json.dumps({"epoch": e, "weights": {"['conv0']['kernel']": 1.0,
                                          "['classifier']['kernel']": 0.3 * e}}) + "\n"
      for e in range(3)))
  written = report.write_report(root, tmp_path / "out")
  cells = (tmp_path / "out" / "cells.csv").read_text().splitlines()
  row = next(r for r in cells if r.startswith("bach,densenet121,auto_rgn,accuracy,"))
  assert row.split(",")[-3:] == ["75.0", "0.0", str(77.0 - 75.0)]
  md = written["report.md"].read_text()
  assert "77.00 / 75.00 (+2.00)" in md and "80.00 / 67.50 (+12.50)" in md
  assert (tmp_path / "out" / "figures" / "rgn_bach_densenet121.png").exists()
  assert "data:image/png;base64," in written["index.html"].read_text()


def test_subprocess_runs_get_the_same_config_and_one_device_each(tmp_path, monkeypatch):
  config = tiny_sweep_config(tmp_path / "data")
  spec = sweep.grid(config)[3]
  run = spec.config(config.base)
  path = tmp_path / "run_config.json"
  path.write_text(run.to_json_best_effort())
  loaded = sweep.get_config(str(path))  # what `python -m ftjax.train --config` receives
  assert json.loads(loaded.to_json_best_effort()) == json.loads(run.to_json_best_effort())
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
  assert sweep_local._device_ids(1) == [None]  # pylint: disable=protected-access
  assert sweep_local._device_ids(3) == ["0", "1", "2"]  # pylint: disable=protected-access
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
  assert sweep_local._device_ids(2) == ["4", "6"]  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
    sweep_local._device_ids(3)  # pylint: disable=protected-access


# --- Diverged runs and bounded retries ---------------------------------------------------

# What `python -m ftjax.train` prints for a TrainingDivergedError (then exits 1).
DIVERGED_LINE = ("error: training loss is nan at epoch 2/3, step 5 of the epoch (global step "
                 "17); training stopped and the checkpoint after epoch 1 is kept in {ckpt}. "
                 "Rerunning would diverge again: lower config.lr (now 0.001) or use "
                 "compute_dtype='float32' in a new --workdir.")

# Stands in for `python -m ftjax.train`: reads the run config the sweep wrote; lr 1e-3
# seed 0 diverges, strategy lp seed 1 fails otherwise, the rest write results.json.
FAKE_TRAIN = """
import json, pathlib, sys
workdir = pathlib.Path(sys.argv[sys.argv.index("--workdir") + 1])
config = json.loads((workdir / "run_config.json").read_text())
print("epoch 1: train loss 0.7", flush=True)
if config["lr"] == 1e-3 and config["seed"] == 0:
  print(%r.format(ckpt=workdir / "checkpoints"), file=sys.stderr)
  sys.exit(1)
if config["strategy"] == "lp" and config["seed"] == 1:
  print("error: synthetic is not prepared in /nowhere", file=sys.stderr)
  sys.exit(1)
accuracy = 0.6 if config["lr"] == 1e-4 else 0.9  # 1e-3 looks better on validation
split = lambda: {"loss": 0.5, "map": 0.5, "accuracy": accuracy, "auroc": 0.5, "kappa": 0.5,
                 "f1": 0.5, "count": 10}
import ml_collections
from ftjax import run, sweep
identity = sweep.expected_identity(ml_collections.ConfigDict(config))
(workdir / "identity.json").write_text(json.dumps(
    {"hash": run.identity_hash(identity), "fields": identity}))  # as ftjax.train does
(workdir / "results.json").write_text(json.dumps({
    "dataset": config["dataset"], "arch": config["arch"], "strategy": config["strategy"],
    "lr": config["lr"], "seed": config["seed"], "main_metrics": ["accuracy", "auroc"],
    "validation": split(), "test": split()}))
""" % DIVERGED_LINE


def _fake_train_runner():
  return functools.partial(sweep.run_in_subprocess,
                           command=(sys.executable, "-c", FAKE_TRAIN))


def test_diverged_run_is_recorded_reported_and_not_retried(tmp_path):
  config = tiny_sweep_config(tmp_path / "data", strategies=("ft",))
  workdir = tmp_path / "runs"
  specs = sweep.grid(config)
  bad = next(s for s in specs if s.lr == 1e-3 and s.seed == 0)
  bad_dir = bad.directory(workdir)
  summary = sweep.run_sweep(config, workdir, runner=_fake_train_runner(), progress=False)

  assert summary.ok and not summary.failed  # diverging is an outcome, not a fault
  assert [s for s, _ in summary.diverged] == [bad]
  assert summary.diverged[0][1].startswith("training loss is nan at epoch 2/3")
  assert sorted(summary.ran) == sorted(s for s in specs if s != bad)
  marker = json.loads((bad_dir / "diverged.json").read_text())
  assert marker["run"] == bad.name and marker["error"].startswith("training loss is nan")
  assert not (bad_dir / "error.txt").exists() and not (bad_dir / "attempts.json").exists()
  assert sweep.status(bad_dir) == "diverged"
  assert f"diverged {bad.name}" in sweep.describe(specs, workdir, config.base)
  assert "1 diverged, 3 done" in sweep.describe(specs, workdir, config.base)
  out, err = sweep.summary_lines(summary, workdir)
  assert out[0] == "sweep: 3 ran, 0 already done, 0 finished by another process, " \
                   "1 diverged, 0 failed, of 4."
  assert out[1] == (f"  DIVERGED {bad.name}: {summary.diverged[0][1]} "
                    f"({bad_dir / 'diverged.json'})")
  assert "--retry_diverged" in out[-1] and not err

  # A rerun does not retry it (it would diverge again), and says so.
  log = tmp_path / "rerun.log"
  again = sweep.run_sweep(config, workdir, runner=fake_runner(log), progress=False)
  assert not log.exists() and not again.ran and again.ok
  assert [s for s, _ in again.diverged_before] == [bad]
  assert again.diverged_before[0][1] == marker["error"]
  out, _ = sweep.summary_lines(again, workdir)
  assert "1 diverged" in out[0] and "DIVERGED earlier, not retried" in out[1]

  # Unless asked: then it runs, and a success clears the marker.
  retried = sweep.run_sweep(config, workdir, runner=fake_runner(log), progress=False,
                            retry_diverged=True)
  assert retried.ran == [bad] and log.read_text().split() == [bad.name]
  assert sweep.status(bad_dir, sweep.expected_identity(bad.config(config.base))) == "done"
  assert not (bad_dir / "diverged.json").exists()


def test_report_skips_diverged_runs_and_their_learning_rate(tmp_path):
  config = tiny_sweep_config(tmp_path / "data", strategies=("ft",))
  workdir = tmp_path / "runs"
  sweep.run_sweep(config, workdir, runner=_fake_train_runner(), progress=False)
  study = report.study(workdir)
  # lr 1e-3 has the better validation accuracy but lost seed 0 to divergence, so only
  # lr 1e-4 has every seed and is selected; the report reads no diverged run.
  selection = study.selections[("synthetic", "resnet18", "ft")]
  assert selection.lr == 1e-4 and selection.candidates[1e-3][2] == 1
  assert study.seeds[("synthetic", "resnet18", "ft")] == [0, 1]
  assert len(study.records) == 3
  assert list(study.diverged) == ["synthetic/resnet18/ft/lr0.001/seed0"]
  assert "training loss is" in study.diverged["synthetic/resnet18/ft/lr0.001/seed0"]
  files = report.write_report(workdir, tmp_path / "report", figures_too=False)
  text = files["report.md"].read_text()
  assert "## Diverged runs" in text and "`synthetic/resnet18/ft/lr0.001/seed0`" in text


def test_other_failures_are_retried_a_bounded_number_of_times(tmp_path):
  config = tiny_sweep_config(tmp_path / "data", strategies=("lp",), lrs=(1e-4,))
  workdir = tmp_path / "runs"
  bad = sweep.grid(config)[1]  # lp seed 1: fails with a non-divergence error
  bad_dir = bad.directory(workdir)
  for attempt in (1, 2):
    summary = sweep.run_sweep(config, workdir, runner=_fake_train_runner(), progress=False,
                              max_attempts=2)
    assert [s for s, _ in summary.failed] == [bad] and not summary.diverged
    assert "synthetic is not prepared" in summary.failed[0][1]
    assert json.loads((bad_dir / "attempts.json").read_text()) == {"failed": attempt}
  assert "synthetic is not prepared" in (bad_dir / "error.txt").read_text()
  assert sweep.status(bad_dir) == "failed"

  log = tmp_path / "runs.log"
  third = sweep.run_sweep(config, workdir, runner=fake_runner(log), progress=False,
                          max_attempts=2)
  assert not log.exists() and not third.ok and third.gave_up == [(bad, 2)]
  out, err = sweep.summary_lines(third, workdir, max_attempts=2)
  assert "1 given up" in out[0]
  assert err == [f"  GIVEN UP {bad.name}: failed 2 times (limit --max_attempts 2), not "
                 f"retried; see {bad_dir / 'error.txt'}, fix the cause, then rerun with "
                 f"--retry_failed."]
  fixed = sweep.run_sweep(config, workdir, runner=fake_runner(log), progress=False,
                          max_attempts=2, retry_failed=True)
  assert fixed.ok and fixed.ran == [bad]
  assert not (bad_dir / "error.txt").exists() and not (bad_dir / "attempts.json").exists()


def test_in_process_divergence_is_recognised(tmp_path, monkeypatch):
  from ftjax.engine import loop, training  # pylint: disable=import-outside-toplevel

  def diverge(config, workdir, **kwargs):
    raise loop.TrainingDivergedError("training loss is inf at epoch 1/1, step 1")
  monkeypatch.setattr(training, "train_and_evaluate", diverge)
  config = tiny_sweep_config(tmp_path / "data", strategies=("ft",), lrs=(1e-3,), seeds=(0,))
  summary = sweep.run_sweep(config, tmp_path / "runs", progress=False)
  assert [(s.name, e) for s, e in summary.diverged] == [
      (sweep.grid(config)[0].name, "training loss is inf at epoch 1/1, step 1")]
