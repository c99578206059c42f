"""Hostile launches and reports, through the command lines: a bad dataset, arch or
strategy name (config argument or flag), a bad SLURM field, and a report over seeds
that lack a metric. Each refusal is one `error:` line, a non-zero exit, and nothing
planned, written or submitted; the report says which seeds each mean is over.

The command lines of one test start together (each is mostly Python start-up).
"""

import json
import math
import os
import pathlib
import statistics
import subprocess
import sys

import ml_collections
import pytest

from configs import sweep_demo, sweep_extended, sweep_own
from ftjax import names, report, sweep
from ftjax.sweep import args as sweep_args
from ftjax.sweep.slurm_options import LaunchError, SlurmOptions
from tests.test_sweep_report import write_result

REPO = pathlib.Path(__file__).resolve().parents[1]
SWEEP = (sys.executable, "-m", "ftjax.sweep")


def run_all(commands: dict[str, list[str]], env: dict[str, str] | None = None
            ) -> dict[str, subprocess.CompletedProcess]:
  """Runs the command lines at once; name -> its completed process."""
  env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
  started = {name: subprocess.Popen(argv, cwd=REPO, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, argv in commands.items()}
  done = {}
  for name, process in started.items():
    out, err = process.communicate(timeout=600)
    done[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
  return done


def one_error_line(result: subprocess.CompletedProcess, status: int) -> str:
  """The refusal: this exit status, no traceback, stderr exactly one `error:` line
  (log lines of libraries aside), nothing on stdout (no run planned or listed)."""
  assert result.returncode == status, (result.returncode, result.stderr[-3000:])
  assert "Traceback" not in result.stderr and "USAGE" not in result.stderr, result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert result.stdout.strip() == "", result.stdout[-2000:]
  return errors[0]


# --- Names: config arguments and flags ---------------------------------------------


# Each class once in the default suite; every case with -m slow (each command line is a
# few CPU seconds of start-up).
QUICK_NAMES = ("arch as dataset", "dataset typo", "unknown strategy flag", "empty flag",
               "train: arch as strategy")


def test_unknown_names_are_one_line_before_anything_is_planned(tmp_path):
  _check_names(tmp_path, lambda name: name in QUICK_NAMES)


@pytest.mark.slow
def test_every_unknown_name_case(tmp_path):
  _check_names(tmp_path, lambda name: name not in QUICK_NAMES)


def _check_names(tmp_path: pathlib.Path, chosen) -> None:
  workdir = tmp_path / "runs"
  dry = ["--workdir", str(workdir), "--dry_run"]
  demo = ["--config", "configs/sweep_demo.py", *dry]
  cases = {  # name -> (command line, the line's text, in order)
      # A name in the wrong place: resnet18 is not taken for a dataset.
      "arch as dataset": ([*SWEEP, "--config", "configs/sweep_extended.py:resnet18", *dry],
                          ["configs/sweep_extended.py:resnet18:", "'resnet18' is an "
                           "architecture, not a dataset", "'datasets[/archs[/strategies]]'",
                           "valid dataset names: bach, brain_tumor_mri,"]),
      # The old 'dataset,arch' of sweep_own: told the order, not a second dataset.
      "old order": ([*SWEEP, "--config", "configs/sweep_own.py:knee_xr,resnet18", *dry],
                    ["'resnet18' is an architecture, not a dataset", "knee_xr,bach/resnet18"]),
      "strategy as arch": ([*SWEEP, "--config", "configs/sweep_paper.py:bach/lp_ft", *dry],
                           ["'lp_ft' is a strategy, not an architecture",
                            "valid architecture names: resnet18, resnet34,"]),
      "arch typo": ([*SWEEP, "--config", "configs/sweep_paper.py:bach/resnet5", *dry],
                    ["unknown architecture 'resnet5'; valid: resnet18,", "Did you mean "
                     "'resnet50'?"]),
      "strategy typo in argument": (
          [*SWEEP, "--config", "configs/sweep_demo.py:synthetic/resnet18/ft,lp_tf", *dry],
          ["unknown strategy 'lp_tf'; valid: ft, lp,", "Did you mean 'lp_ft'?"]),
      "four parts": ([*SWEEP, "--config", "configs/sweep_demo.py:synthetic/resnet18/ft/x",
                      *dry], ["4 parts; the argument is 'datasets[/archs[/strategies]]'"]),
      "dataset twice": ([*SWEEP, "--config", "configs/sweep_extended.py:bach,bach", *dry],
                        ["dataset 'bach' named twice"]),
      "empty dataset": ([*SWEEP, "--config", "configs/sweep_extended.py:bach,,isic2020",
                         *dry], ["an empty dataset name"]),
      "no dataset for own": ([*SWEEP, "--config", "configs/sweep_own.py", *dry],
                             ["name your dataset(s)"]),
      # Neither built in nor prepared in the data directory: refused by the sweep.
      "dataset typo": ([*SWEEP, "--config", "configs/sweep_extended.py:bahc", *dry,
                        f"--config.base.data_dir={tmp_path / 'data'}"],
                       ["config.datasets: unknown dataset 'bahc'; built-in names:",
                        "Did you mean 'bach'?"]),
      "unknown strategy flag": ([*SWEEP, *demo, "--strategies=ft,lpp"],
                                ["--strategies: 'lpp' is not in the sweep's strategies; "
                                 "valid: ft, lp, lp_ft, auto_rgn.", "Did you mean 'lp'?"]),
      "unknown dataset flag": ([*SWEEP, *demo, "--datasets=synthetc"],
                               ["--datasets: 'synthetc' is not in the sweep's datasets",
                                "Did you mean 'synthetic'?"]),
      "unknown arch flag": ([*SWEEP, *demo, "--archs=resnet18,vgg91"],
                            ["--archs: unknown architecture 'vgg91'"]),
      "empty flag": ([*SWEEP, *demo, "--strategies="], ["--strategies='': an empty name"]),
      "lr not a number": ([*SWEEP, *demo, "--lrs=1e-3,abc"], ["--lrs: 'abc' is not a number"]),
      "lr not in sweep": ([*SWEEP, *demo, "--lrs=1e-2"], ["--lrs: '1e-2' is not in the "
                                                          "sweep's lrs; valid: 0.001, 0.0001."]),
      "negative lr": ([*SWEEP, *demo, "--config.lrs=(0.001, -0.1)"],
                      ["config.lrs: -0.1 is not a finite number > 0."]),
      "runs_per_gpu 0": ([*SWEEP, *demo, "--config.runs_per_gpu=0"],
                         ["config.runs_per_gpu=0: must be a whole number >= 1"]),
      "missing config": ([*SWEEP, *dry], ["--config is required"]),
      "config file missing": ([*SWEEP, "--config", "configs/sweep_papr.py", *dry],
                              ["--config=configs/sweep_papr.py: the config file cannot be "
                               "loaded ([Errno 2] No such file"]),
      # The same checks for a training run's config argument.
      "train: arch as strategy": ([sys.executable, "-m", "ftjax.train", "--config",
                                   "configs/base.py:bach,resnet18", "--workdir", str(workdir)],
                                  ["configs/base.py:bach,resnet18: 'resnet18' is an "
                                   "architecture, not a strategy"]),
      "train: no argument taken": ([sys.executable, "-m", "ftjax.train", "--config",
                                    "configs/demo.py:resnet18", "--workdir", str(workdir)],
                                   ["this config file takes no argument after ':'"]),
  }
  cases = {name: case for name, case in cases.items() if chosen(name)}
  results = run_all({name: argv for name, (argv, _) in cases.items()})
  for name, (_, expected) in cases.items():
    line = one_error_line(results[name], 2)
    for text in expected:
      assert text in line, (name, line)
  assert not workdir.exists()  # nothing planned, nothing written


def test_archs_flag_sets_the_architectures(tmp_path):
  [result] = run_all({"archs": [
      *SWEEP, "--config", "configs/sweep_extended.py:bach", "--workdir", str(tmp_path / "w"),
      "--dry_run", "--archs=resnet34,vgg11", "--strategies=ft", "--lrs=1e-3", "--seeds=0",
      f"--config.base.data_dir={tmp_path / 'data'}"]}).values()
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.splitlines() == [  # bach is not prepared here: both pending
      "pending  bach/resnet34/ft/lr0.001/seed0", "pending  bach/vgg11/ft/lr0.001/seed0",
      "2 runs: 2 pending"]


def test_sweep_config_arguments_have_one_order():
  config = sweep_extended.get_config("knee_xr,bach/resnet18/ft,knn")
  assert (config.datasets, config.archs, config.strategies) == (
      ("knee_xr", "bach"), ("resnet18",), ("ft", "knn"))
  own = sweep_own.get_config("knee_xr")  # the defaults of the parts left out
  assert (own.datasets, own.archs, len(own.strategies)) == (("knee_xr",), ("resnet50",), 8)
  skipped = sweep_demo.get_config("/resnet34")  # an empty part keeps the config's
  assert (skipped.datasets, skipped.archs) == (("synthetic",), ("resnet34",))
  assert skipped.base.dataset_options.num_train == 320  # the demo's own options kept


def test_archs_replace_and_subsets_are_checked_in_process():
  config = sweep_demo.get_config()
  subsets = sweep_args.choose(config, {"archs": "vgg11", "seeds": "1", "lrs": "0.001"})
  assert config.archs == ("vgg11",) and subsets == {"seeds": [1], "lrs": [1e-3]}
  assert {s.arch for s in sweep.grid(config, **subsets)} == {"vgg11"}
  for given, message in (({"seeds": "-1"}, "--seeds: -1 is not a whole number >= 0"),
                         ({"seeds": "0,0"}, "--seeds: 0 named twice"),
                         ({"lrs": "nan"}, "--lrs: nan is not a finite number > 0")):
    with pytest.raises(names.UnknownName, match=message):
      sweep_args.choose(config, given)
  config.strategies = ("ft", "ft")  # a config file naming one twice
  with pytest.raises(names.UnknownName, match="config.strategies: strategy 'ft' named twice"):
    sweep_args.check_config(config)


# --- SLURM fields --------------------------------------------------------------------


FAKE_SLURM = """#!/bin/sh
echo "$0 $*" >> "{log}"
exit 1
"""


QUICK_SLURM = ("--config.slurm.partition=gpu\n#SBATCH --wrap=rm",
               "--config.slurm.additional=constraint=a100\n#SBATCH --x=1",
               "--config.slurm.additional=time=10", "--config.slurm.array_parallelism=-5",
               "--config.slurm.mem_gb=-1", "workdir")


def test_bad_slurm_fields_are_refused_before_planning_or_submitting(tmp_path):
  """Each field of the sbatch script, refused in one line: nothing is listed, the
  workdir is not written, and neither sbatch nor squeue is ever called."""
  _check_slurm(tmp_path, lambda case: case in QUICK_SLURM)


@pytest.mark.slow
def test_every_bad_slurm_field_case(tmp_path):
  _check_slurm(tmp_path, lambda case: case not in QUICK_SLURM)


def _check_slurm(tmp_path: pathlib.Path, chosen) -> None:
  bin_dir, called = tmp_path / "bin", tmp_path / "slurm_called.log"
  bin_dir.mkdir()
  for tool in ("sbatch", "squeue", "scancel"):
    (bin_dir / tool).write_text(FAKE_SLURM.format(log=called))
    (bin_dir / tool).chmod(0o755)
  workdir = tmp_path / "runs"
  slurm = [*SWEEP, "--config", "configs/sweep_demo.py", "--launcher", "slurm"]
  cases = {  # override -> the line's text; without --dry_run: it would submit
      "--config.slurm.partition=gpu\n#SBATCH --wrap=rm": "config.slurm.partition="
      "'gpu\\n#SBATCH --wrap=rm': holds '\\n' at position 3",
      "--config.slurm.account=lab\r": "config.slurm.account='lab\\r': holds '\\r'",
      "--config.slurm.qos=high prio": "config.slurm.qos='high prio': holds ' '",
      "--config.slurm.additional=constraint=a100\n#SBATCH --x=1":
          "config.slurm.additional['constraint']='a100\\n#SBATCH --x=1': holds '\\n'",
      "--config.slurm.additional=mail\ttype=END": "holds '\\t'",
      "--config.slurm.additional=--constraint=a100": "'--constraint' is not an sbatch flag "
                                                      "name",
      "--config.slurm.additional=time=10": "'time': set --time with config.slurm.timeout_min",
      "--config.slurm.additional=array=0-9": "'array': --array is written by the launcher",
      "--config.slurm.additional=output=/tmp/x": "'output': --output is written by",
      "--config.slurm.additional=constraint=a,constraint=b": "'constraint' is given twice",
      "--config.slurm.additional=constraint=": "'constraint' has no value",
      "--config.slurm.array_parallelism=-5": "config.slurm.array_parallelism=-5: must be a "
                                              "whole number of tasks running at once >= 1.",
      "--config.slurm.timeout_min=0": "config.slurm.timeout_min=0: must be a whole number "
                                       "of minutes >= 1.",
      "--config.slurm.mem_gb=-1": "config.slurm.mem_gb=-1: must be a finite number of GB > 0",
      "--config.slurm.mem_gb=0": "config.slurm.mem_gb=0:",
      "--config.slurm.cpus_per_task=0": "config.slurm.cpus_per_task=0: must be a whole "
                                         "number of CPUs per run >= 1.",
      "--config.slurm.gpus_per_task=-1": "config.slurm.gpus_per_task=-1: must be a whole "
                                          "number of GPUs per run >= 0.",
      "--config.slurm.max_requeues=-1": "config.slurm.max_requeues=-1: must be a whole "
                                         "number of requeues after a time limit >= 0.",
  }
  commands = {override: [*slurm, "--workdir", str(workdir), override] for override in cases}
  # The workdir names the job and its log paths in the script.
  commands["workdir"] = [*slurm, "--workdir", f"{workdir}\n#SBATCH --wrap=x"]
  cases["workdir"] = f"--workdir='{workdir}\\n#SBATCH --wrap=x': holds '\\n'"
  cases = {case: expected for case, expected in cases.items() if chosen(case)}
  commands = {case: argv for case, argv in commands.items() if case in cases}
  results = run_all(commands, env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
  for override, expected in cases.items():
    line = one_error_line(results[override], 1)
    assert expected in line, (override, line)
  assert not called.exists(), called.read_text()  # no sbatch, no squeue
  assert not workdir.exists() and not list(tmp_path.glob("runs*"))


def test_slurm_options_in_process():
  """The Python API: the same checks on construction; a fractional mem_gb is written
  in MB (not truncated to --mem=0GB, which is a whole node's memory)."""
  assert SlurmOptions(mem_gb=0.5).memory() == "512MB"
  assert SlurmOptions(mem_gb=16).memory() == "16GB"
  assert SlurmOptions(additional={"mail-type": "END"}).additional_sbatch() == {
      "mail-type": "END"}
  for bad, message in (({"mem_gb": math.nan}, "mem_gb=nan"),
                       ({"mem_gb": 0.0001}, "mem_gb=0.0001"),
                       ({"timeout_min": True}, "timeout_min=True"),
                       ({"timeout_min": 1.5}, "timeout_min=1.5"),
                       ({"partition": 3}, "partition=3: must be a name"),
                       ({"additional": {"job_name": "x"}}, "--job-name is written by"),
                       ({"additional": {"comment": "a\x00b"}}, "holds '\\\\x00'")):
    with pytest.raises(LaunchError, match=message):
      SlurmOptions(**bad)


# --- The report: the seeds behind each mean --------------------------------------------


def _uneven_study(root: pathlib.Path) -> dict[tuple[str, int], float]:
  """BACH / DenseNet-121, ft and lp, seeds 0-2 at lr 1e-4; some seeds lack a test
  kappa (absent, null or NaN). Returns the kappa values written, by (strategy, seed)."""
  kappa = {("ft", 0): 0.60, ("ft", 1): None, ("ft", 2): 0.70,
           ("lp", 0): 0.50, ("lp", 1): 0.54, ("lp", 2): "absent"}
  for (strategy, seed), value in kappa.items():
    run_dir = write_result(root, sweep.RunSpec("bach", "densenet121", strategy, 1e-4, seed),
                           {"accuracy": 0.7}, {"accuracy": 0.80 + seed / 100},
                           main_metrics=("accuracy", "kappa"))
    results = json.loads((run_dir / "results.json").read_text())
    if value == "absent":
      del results["test"]["kappa"]
    else:
      results["test"]["kappa"] = value
    (run_dir / "results.json").write_text(json.dumps(results))
  # ft seed 1 holds null; make one more seed non-finite: lp's accuracy in seed 1.
  run_dir = sweep.RunSpec("bach", "densenet121", "lp", 1e-4, 1).directory(root)
  results = json.loads((run_dir / "results.json").read_text())
  results["test"]["accuracy"] = math.nan
  (run_dir / "results.json").write_text(json.dumps(results))
  return {k: v for k, v in kappa.items() if isinstance(v, float)}


def test_report_states_the_seeds_behind_each_mean(tmp_path):
  kappa = _uneven_study(tmp_path / "runs")
  out = tmp_path / "report"
  [result] = run_all({"report": [sys.executable, "-m", "ftjax.report", "--workdir",
                                 str(tmp_path / "runs"), "--out", str(out), "--nofigures",
                                 "--bootstrap=10"]}).values()
  assert result.returncode == 0, result.stderr[-3000:]
  # The means over the seeds that have a value (statistics, not the report's code).
  ft = [100 * kappa[("ft", s)] for s in (0, 2)]
  ft_text = (f"{statistics.mean(ft):.2f} ± {statistics.stdev(ft) / math.sqrt(2):.2f} "
             f"(n=2 of 3)")
  lp_acc = [80.0, 82.0]  # seeds 0 and 2; seed 1's is NaN
  lp_text = (f"{statistics.mean(lp_acc):.2f} ± {statistics.stdev(lp_acc) / math.sqrt(2):.2f}"
             f" (n=2 of 3)")
  md = (out / "report.md").read_text()
  table = md.split("### Table 8: BACH (test")[1].split("###")[0]  # the paper's table 8
  [ft_row] = [l for l in table.splitlines() if l.startswith("| Full Fine-tuning (FT) |")]
  [lp_row] = [l for l in table.splitlines() if l.startswith("| Linear Probing (LP) |")]
  assert ft_text in ft_row and lp_text in lp_row, (ft_row, lp_row)
  assert "Full Fine-tuning (FT), DenseNet-121 Kappa: seed 1" in table
  assert "Linear Probing (LP), DenseNet-121 Kappa: seed 2" in table
  assert "Linear Probing (LP), DenseNet-121 Accuracy: seed 1" in table
  comparison = md.split("### Table 8 vs paper: BACH")[1].split("###")[0]
  assert "65.00 (n=2 of 3) / " in comparison
  assert "- `bach/densenet121/lp` accuracy: mean over seed(s) 0, 2; no value in seed(s) 1" in md
  assert ft_text in (out / "index.html").read_text().replace("&#x27;", "'")
  assert ft_text in (out / "tables" / "table_bach.csv").read_text()

  summary = json.loads((out / "summary.json").read_text())
  assert summary["seeds"]["bach/densenet121/ft"] == [0, 1, 2]
  assert summary["metric_seeds"]["bach/densenet121/ft"]["kappa"] == [0, 2]
  assert summary["missing_seeds"] == {"bach/densenet121/ft": {"kappa": [1]},
                                      "bach/densenet121/lp": {"accuracy": [1], "kappa": [2]}}
  rows = {(r.split(",")[2], r.split(",")[3]): r.split(",")
          for r in (out / "cells.csv").read_text().splitlines()[1:]}
  header = (out / "cells.csv").read_text().splitlines()[0].split(",")
  lp_kappa = dict(zip(header, rows[("lp", "kappa")]))
  assert (lp_kappa["seeds"], lp_kappa["missing_seeds"]) == ("0 1", "2")
  assert float(lp_kappa["mean"]) == pytest.approx(100 * statistics.mean([0.50, 0.54]))


def test_lr_selection_counts_only_seeds_with_a_validation_value(tmp_path):
  """A seed without the validation main metric does not count for its lr: the lr with
  more seeds that have it competes, and the evidence says n."""
  root = tmp_path / "runs"
  for lr, value in ((1e-3, 0.9), (1e-4, 0.6)):
    for seed in (0, 1):
      run_dir = write_result(root, sweep.RunSpec("bach", "resnet50", "ft", lr, seed),
                             {"accuracy": value}, {"accuracy": 0.5},
                             main_metrics=("accuracy", "kappa"))
      if lr == 1e-3 and seed == 1:
        results = json.loads((run_dir / "results.json").read_text())
        del results["validation"]["accuracy"]
        (run_dir / "results.json").write_text(json.dumps(results))
  selection = report.study(root).selections[("bach", "resnet50", "ft")]
  assert selection.lr == 1e-4
  assert selection.candidates[1e-3][2] == 1 and selection.candidates[1e-4][2] == 2
  assert selection.candidates[1e-3][0] == pytest.approx(0.9)
