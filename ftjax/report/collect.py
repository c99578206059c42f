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

A metric a seed's results.json lacks (or holds as null, NaN or infinite) is
averaged over the seeds that have it, and the study says which those are
(`Study.metric_seeds`, `Study.missing`): the tables print "n=2 of 3" in such a
cell and list the missing seeds, summary.json holds both.
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
    # null, like NaN, is a seed without a value of that metric (`value_of`); a string
    # or a list is not a metric at all.
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
      raise TypeError(f"{split} metric {name!r} is {value!r}, not a number")
  return values


def _main_metrics(results: dict[str, Any]) -> tuple[str, ...]:
  """The run's main metrics, each a known metric (stats.METRICS)."""
  names = results["main_metrics"]
  if (not isinstance(names, list) or not names
      or not all(isinstance(n, str) and n in stats.METRICS for n in names)):
    raise ValueError(f"main_metrics {names!r} is not a list of metrics of "
                     f"{', '.join(stats.METRICS)}")
  # A main metric absent in a split is a seed without that value: the means say
  # which seeds they cover (tables.py), as for null or NaN.
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


def value_of(values: dict[str, Any], metric: str) -> float | None:
  """A metric of results.json's validation or test dict; None where the run has no
  finite value of it (absent, null, NaN, infinite)."""
  value = values.get(metric)
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value) if math.isfinite(value) else None


def _mean_of(runs: list[Record], metric: str) -> float:
  found = [v for v in (value_of(r.validation, metric) for r in runs) if v is not None]
  return float(np.mean(found)) if found else math.nan


def select_lr(runs_by_lr: dict[float, list[Record]]) -> Selection:
  """The learning rate by validation (module docstring); never looks at test. A seed
  without a finite validation value of the metric does not count for its lr."""
  metric = next(iter(runs_by_lr.values()))[0].main_metrics[0]
  candidates = {
      lr: (_mean_of(runs, metric), _mean_of(runs, "loss"),
           sum(value_of(r.validation, metric) is not None for r in runs))
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
  # Key -> metric -> the seeds its mean is over (those with a finite value).
  metric_seeds: dict[Key, dict[str, list[int]]]
  main_metrics: dict[str, tuple[str, ...]]  # dataset -> its two metrics
  records: list[Record]
  # dataset -> the names of its outputs, where its results.json record them
  class_names: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
  diverged: dict[str, str] = dataclasses.field(default_factory=dict)  # run -> error
  ignored: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> why

  @property
  def datasets(self) -> list[str]:
    return list(self.cells)

  def missing(self, key: Key, metric: str) -> list[int]:
    """The cell's seeds whose run has no value of `metric` (its mean is without them)."""
    covered = self.metric_seeds.get(key, {}).get(metric, [])
    return [seed for seed in self.seeds.get(key, []) if seed not in covered]

  def missing_by_cell(self) -> dict[Key, dict[str, list[int]]]:
    """Every cell and metric whose mean lacks seeds -> the missing seeds."""
    out: dict[Key, dict[str, list[int]]] = {}
    for key, by_metric in self.metric_seeds.items():
      # A main metric no seed has is listed too (its cell prints '–').
      for metric in dict.fromkeys((*self.main_metrics.get(key[0], ()), *by_metric)):
        if self.missing(key, metric):
          out.setdefault(key, {})[metric] = self.missing(key, metric)
    return out


def summarize(records: list[Record], split: str = "test") -> Study:
  """Selects each cell's learning rate on validation and averages `split` over seeds."""
  cells: Cells = {}
  selections, seeds, main_metrics, metric_seeds = {}, {}, {}, {}
  for key, runs_by_lr in group(records).items():
    dataset, arch, strategy = key
    selection = select_lr(runs_by_lr)
    runs = runs_by_lr[selection.lr]
    metrics = runs[0].main_metrics
    main_metrics[dataset] = metrics
    cell = cells.setdefault(dataset, {}).setdefault(arch, {}).setdefault(strategy, {})
    covered = metric_seeds.setdefault(key, {})
    for metric in dict.fromkeys((*metrics, "loss", "map", "accuracy", "auroc", "kappa", "f1")):
      scale = 1.0 if metric == "loss" else 100.0  # the paper prints percent
      found = [(r.seed, value_of(getattr(r, split), metric)) for r in runs]
      found = [(seed, v * scale) for seed, v in found if v is not None]
      if found:
        cell[metric] = mean_se(v for _, v in found)
        covered[metric] = [seed for seed, _ in found]
    selections[key], seeds[key] = selection, [r.seed for r in runs]
  class_names = {r.dataset: r.class_names for r in reversed(records) if r.class_names}
  return Study(cells, selections, seeds, metric_seeds, main_metrics, records, class_names)


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
      # The seeds behind each mean of "cells", and those a mean lacks.
      "metric_seeds": {"/".join(k): v for k, v in s.metric_seeds.items()},
      "missing_seeds": {"/".join(k): v for k, v in s.missing_by_cell().items()},
      "class_names": {d: list(names) for d, names in s.class_names.items()},
      "diverged": s.diverged,
      "ignored": s.ignored,
  }
