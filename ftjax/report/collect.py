"""Results of a sweep: loading, learning-rate selection, mean ± standard error.

Learning-rate selection (per dataset, arch and strategy; validation split only):
  1. For each learning rate, average the validation value of the dataset's first
     main metric (results.json "main_metrics"[0]; higher is better) over the
     seeds that finished. Only learning rates with the largest number of
     finished seeds compete, so a partial grid never compares a 1-seed mean
     with a 3-seed mean.
  2. The highest mean wins; a tie (equal to 1e-12) goes to the lower mean
     validation loss, then to the larger learning rate.
The test split is never read for selection: the reported test cells are the
seeds' test values at the selected learning rate.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any, Iterable

import numpy as np

from ftjax import run as run_lib
from ftjax.report import stats

# dataset -> arch -> strategy -> metric -> (mean, standard error), in percent.
Cells = dict[str, dict[str, dict[str, dict[str, tuple[float, float]]]]]
Key = tuple[str, str, str]  # (dataset, arch, strategy)


@dataclasses.dataclass(frozen=True)
class Record:
  """One finished run (its results.json)."""
  dataset: str
  arch: str
  strategy: str
  lr: float
  seed: int
  main_metrics: tuple[str, ...]
  validation: dict[str, float]
  test: dict[str, float]
  path: pathlib.Path
  class_names: tuple[str, ...] = ()  # the outputs' names (empty in older results.json)

  @property
  def key(self) -> Key:
    return (self.dataset, self.arch, self.strategy)


def load_results(workdir: str | pathlib.Path,
                 ignored: dict[str, str] | None = None) -> list[Record]:
  """The finished runs under `workdir`, sorted by (dataset, arch, strategy, lr, seed).

  Only run directories of the sweep layout (ftjax.run.relative_path) count,
  and only those whose identity.json is intact and names the run of its
  place. Every other results.json (a stray copy, a run moved into another
  cell, one without identity) goes into `ignored`: its path -> why.
  """
  root = pathlib.Path(workdir)
  ignored = {} if ignored is None else ignored
  records = []
  for path in sorted(root.rglob(run_lib.RunDir.RESULTS)):
    where = path.parent.relative_to(root).as_posix()
    why = _why_not_counted(root, path.parent)
    if why is not None:
      ignored[where] = why
      continue
    try:
      r = json.loads(path.read_text())
      record = Record(r["dataset"], r["arch"], r["strategy"], float(r["lr"]),
                      int(r["seed"]), _main_metrics(r), _metric_values(r, "validation"),
                      _metric_values(r, "test"), path.parent, _class_names(r))
    except (OSError, ValueError, KeyError, TypeError) as error:
      ignored[where] = f"results.json is unreadable ({type(error).__name__}: {error})"
      continue
    if run_lib.relative_path(record.dataset, record.arch, record.strategy, record.lr,
                             record.seed) != where:
      ignored[where] = "results.json names another run than its place"
      continue
    records.append(record)
  return sorted(records, key=lambda r: (r.key, r.lr, r.seed))


def _metric_values(results: dict[str, Any], split: str) -> dict[str, float]:
  values = results[split]
  if not isinstance(values, dict):
    raise TypeError(f"{split} is {type(values).__name__}, not metric values")
  for name, value in values.items():
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise TypeError(f"{split} metric {name!r} is {value!r}, not a number")
  return values


def _main_metrics(results: dict[str, Any]) -> tuple[str, ...]:
  """The run's main metrics: known metrics (stats.METRICS) it has values of."""
  names = results["main_metrics"]
  if (not isinstance(names, list) or not names
      or not all(isinstance(n, str) and n in stats.METRICS for n in names)):
    raise ValueError(f"main_metrics {names!r} is not a list of metrics of "
                     f"{', '.join(stats.METRICS)}")
  for split in ("validation", "test"):
    missing = [n for n in names if n not in results[split]]
    if missing:
      raise KeyError(f"{split} has no value of main metric(s) {missing}")
  return tuple(names)


def _class_names(results: dict[str, Any]) -> tuple[str, ...]:
  names = results.get("class_names", [])  # absent in results.json of an older ftjax
  if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
    raise TypeError(f"class_names is not a list of names: {names!r}")
  return tuple(names)


def _why_not_counted(root: pathlib.Path, run_dir: pathlib.Path) -> str | None:
  place = run_lib.parse_relative_path(run_dir.relative_to(root).as_posix())
  if place is None:
    return "not a run directory of the layout <dataset>/<arch>/<strategy>/lr<lr>/seed<seed>"
  saved = run_lib.RunDir(run_dir).saved_identity()
  if saved is None:
    return "no identity.json (not written by this ftjax's train)"
  if not saved or saved.get("hash") != run_lib.identity_hash(saved["fields"]):
    return "identity.json is damaged (its hash does not match its fields)"
  named = {k: saved["fields"].get(k) for k in place}
  if named != place:  # (lr compares as a number: 0.001 == 1e-3)
    return f"its identity is another run's ({named})"
  return None


def load_diverged(workdir: str | pathlib.Path) -> dict[str, str]:
  """Runs the sweep recorded as diverged (<run>/diverged.json): run path -> error line.

  They have no results.json, so they are in no cell; the report lists them.
  """
  out = {}
  root = pathlib.Path(workdir)
  for path in sorted(root.rglob("diverged.json")):
    if (path.parent / "results.json").exists():
      continue  # rerun with --retry_diverged and finished since
    try:
      error = str(json.loads(path.read_text())["error"])
    except (OSError, ValueError, KeyError, TypeError):
      error = "training diverged"
    out[path.parent.relative_to(root).as_posix()] = error
  return out


def group(records: Iterable[Record]) -> dict[Key, dict[float, list[Record]]]:
  """(dataset, arch, strategy) -> lr -> runs (one per seed)."""
  out: dict[Key, dict[float, list[Record]]] = {}
  for r in records:
    out.setdefault(r.key, {}).setdefault(r.lr, []).append(r)
  return out


@dataclasses.dataclass(frozen=True)
class Selection:
  """The chosen learning rate of one (dataset, arch, strategy) and why."""
  lr: float
  metric: str
  # lr -> (mean validation metric, mean validation loss, seeds) for every lr seen.
  candidates: dict[float, tuple[float, float, int]]


def select_lr(runs_by_lr: dict[float, list[Record]]) -> Selection:
  """The learning rate by validation (module docstring); never looks at test."""
  metric = next(iter(runs_by_lr.values()))[0].main_metrics[0]
  candidates = {
      lr: (float(np.mean([r.validation[metric] for r in runs])),
           float(np.mean([r.validation["loss"] for r in runs])), len(runs))
      for lr, runs in runs_by_lr.items()}
  most = max(n for _, _, n in candidates.values())
  eligible = [lr for lr, (_, _, n) in candidates.items() if n == most]

  def score(lr: float):
    value, loss, _ = candidates[lr]
    value = -math.inf if math.isnan(value) else value
    loss = math.inf if math.isnan(loss) else loss
    return (round(value, 12), -loss, lr)

  return Selection(max(eligible, key=score), metric, candidates)


def mean_se(values: Iterable[float]) -> tuple[float, float]:
  """Mean and standard error (sample std, ddof=1, over sqrt(n)); se is nan for n = 1."""
  values = np.asarray(list(values), dtype=np.float64)
  if values.size == 0:
    return math.nan, math.nan
  se = float(np.std(values, ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan
  return float(np.mean(values)), se


@dataclasses.dataclass
class Study:
  """A sweep's results reduced to the paper's cells."""
  cells: Cells                           # test values at the selected lr, percent
  selections: dict[Key, Selection]
  seeds: dict[Key, list[int]]            # seeds behind each cell
  main_metrics: dict[str, tuple[str, ...]]  # dataset -> its two metrics
  records: list[Record]
  # dataset -> the names of its outputs, where its results.json record them
  class_names: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
  diverged: dict[str, str] = dataclasses.field(default_factory=dict)  # run -> error
  ignored: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> why

  @property
  def datasets(self) -> list[str]:
    return list(self.cells)


def summarize(records: list[Record], split: str = "test") -> Study:
  """Selects each cell's learning rate on validation and averages `split` over seeds."""
  cells: Cells = {}
  selections, seeds, main_metrics = {}, {}, {}
  for key, runs_by_lr in group(records).items():
    dataset, arch, strategy = key
    selection = select_lr(runs_by_lr)
    runs = runs_by_lr[selection.lr]
    metrics = runs[0].main_metrics
    main_metrics[dataset] = metrics
    cell = cells.setdefault(dataset, {}).setdefault(arch, {}).setdefault(strategy, {})
    for metric in dict.fromkeys((*metrics, "loss", "map", "accuracy", "auroc", "kappa", "f1")):
      scale = 1.0 if metric == "loss" else 100.0  # the paper prints percent
      values = [getattr(r, split)[metric] * scale for r in runs if metric in getattr(r, split)]
      if values:
        cell[metric] = mean_se(values)
    selections[key], seeds[key] = selection, [r.seed for r in runs]
  class_names = {r.dataset: r.class_names for r in reversed(records) if r.class_names}
  return Study(cells, selections, seeds, main_metrics, records, class_names)


def study(workdir: str | pathlib.Path) -> Study:
  ignored: dict[str, str] = {}
  result = summarize(load_results(workdir, ignored))
  result.diverged = load_diverged(workdir)
  result.ignored = ignored
  return result


def as_json(s: Study) -> dict[str, Any]:
  """The summary as plain JSON (report/summary.json)."""
  return {
      "cells": s.cells,
      "selected_lr": {"/".join(k): v.lr for k, v in s.selections.items()},
      "lr_candidates": {"/".join(k): {f"{lr:g}": list(c) for lr, c in v.candidates.items()}
                        for k, v in s.selections.items()},
      "seeds": {"/".join(k): v for k, v in s.seeds.items()},
      "class_names": {d: list(names) for d, names in s.class_names.items()},
      "diverged": s.diverged,
      "ignored": s.ignored,
  }
