"""Figures 6-11 (relative improvement over FT) and per-layer Auto-RGN plots (PNG)."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from ftjax.report import compare, tables
from ftjax.report.collect import Cells, Study

# The paper's figure number per dataset (figure 7 holds the three MURA tasks).
FIGURE_NUMBERS = {"chexpert": 6, "mura_shoulder": 7, "mura_wrist": 7, "mura_humerus": 7,
                  "brain_tumor_mri": 8, "bach": 9, "isic2020": 10, "cholect50": 11}


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")  # files only, no display
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def improvement_figure(cells: Cells, dataset: str, metric: str,
                       path: pathlib.Path) -> pathlib.Path | None:
  """Grouped bars: improvement over FT (%) of each strategy, one bar per architecture."""
  gains = compare.improvements(cells, dataset, metric)
  if not gains:
    return None
  plt = _pyplot()
  archs = tables.ordered(gains, tuple(tables.ARCH_NAMES))
  strategies = tables.ordered({s for g in gains.values() for s in g},
                              tuple(tables.STRATEGY_NAMES))
  x = np.arange(len(strategies))
  width = 0.8 / len(archs)
  fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(strategies) + 2), 3.6), dpi=120)
  for i, arch in enumerate(archs):
    values = [gains[arch].get(s, np.nan) for s in strategies]
    ax.bar(x + (i - (len(archs) - 1) / 2) * width, values, width,
           label=tables.name(tables.ARCH_NAMES, arch))
  ax.axhline(0.0, color="black", linewidth=0.8)
  ax.set_xticks(x, [s.upper().replace("_", "-") for s in strategies], fontsize=8)
  metric_name = tables.name(tables.METRIC_NAMES, metric)
  ax.set_ylabel(f"relative {metric_name} vs FT (%)")
  number = FIGURE_NUMBERS.get(dataset)
  ax.set_title(f"{'Figure %d: ' % number if number else ''}"
               f"{tables.name(tables.DATASET_NAMES, dataset)}: relative {metric_name}")
  ax.legend(fontsize=8)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def read_rgn(run_dir: pathlib.Path) -> tuple[list[int], list[str], np.ndarray] | None:
  """rgn.jsonl -> (epochs, parameter paths, weights[epoch, path]); None if absent."""
  path = run_dir / "rgn.jsonl"
  if not path.exists():
    return None
  lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  if not lines:
    return None
  names = list(lines[0]["weights"])
  weights = np.array([[line["weights"].get(n, np.nan) for n in names] for line in lines])
  return [line["epoch"] for line in lines], names, weights


def rgn_figure(run_dir: pathlib.Path, title: str, path: pathlib.Path) -> pathlib.Path | None:
  """Heat map of Auto-RGN's per-tensor learning-rate weights, tensors x epochs."""
  rgn = read_rgn(run_dir)
  if rgn is None:
    return None
  epochs, names, weights = rgn
  plt = _pyplot()
  height = min(14.0, 1.5 + 0.12 * len(names))
  fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(epochs) + 3), height), dpi=110)
  image = ax.imshow(weights.T, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0,
                    interpolation="nearest")
  ax.set_xticks(range(len(epochs)), [str(e + 1) for e in epochs], fontsize=7)
  ax.set_xlabel("epoch")
  step = max(1, len(names) // 60)  # keep the labels legible on deep networks
  ax.set_yticks(range(0, len(names), step), [_short(n) for n in names[::step]], fontsize=5)
  ax.set_title(title, fontsize=9)
  fig.colorbar(image, ax=ax, label="RGN / max RGN")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def _short(param_path: str) -> str:
  return param_path.replace("['", "").replace("']", "/").rstrip("/")


def rgn_figures(study: Study, out: pathlib.Path) -> list[pathlib.Path]:
  """One per (dataset, arch) with Auto-RGN runs (runs that log rgn.jsonl): the
  lowest seed at the selected lr."""
  paths = []
  for (dataset, arch, strategy), selection in sorted(study.selections.items()):
    runs = [r for r in study.records if r.key == (dataset, arch, strategy)
            and r.lr == selection.lr]
    run = min(runs, key=lambda r: r.seed)
    if not (run.path / "rgn.jsonl").is_file():
      continue
    path = rgn_figure(run.path, f"Auto-RGN weights: {dataset} {arch} lr={run.lr:g} "
                      f"seed={run.seed}", out / f"rgn_{dataset}_{arch}.png")
    if path is not None:
      paths.append(path)
  return paths


def cd_diagram(test, title: str, path: pathlib.Path) -> pathlib.Path | None:
  """Critical-difference diagram: strategies on an axis of average rank (1 = best,
  left), a bar joining each clique that Wilcoxon-Holm cannot tell apart."""
  if len(test.names) < 2:
    return None
  plt = _pyplot()
  k = len(test.names)
  order = np.argsort(test.ranks, kind="mergesort")
  half = (k + 1) // 2
  fig, ax = plt.subplots(figsize=(7.0, 1.0 + 0.3 * half + 0.1 * len(test.cliques)),
                         dpi=130)
  ax.set_xlim(0.5, k + 0.5)
  ax.set_ylim(-(0.9 + 0.55 * half), 0.9)
  ax.hlines(0, 1, k, color="black", linewidth=1)
  for r in range(1, k + 1):
    ax.vlines(r, 0, 0.12, color="black", linewidth=1)
    ax.text(r, 0.22, str(r), ha="center", va="bottom", fontsize=8)
  for position, i in enumerate(order):
    rank, name = float(test.ranks[i]), _label(test.names[i])
    left = position < half
    y = -(position if left else k - 1 - position) * 0.55 - 0.9
    x_text = 0.55 if left else k + 0.45
    ax.plot([rank, rank, x_text], [0, y, y], color="black", linewidth=0.8)
    ax.text(x_text, y + 0.08, f"{name} ({rank:.2f})", ha="left" if left else "right",
            va="bottom", fontsize=8)
  for n, clique in enumerate(test.cliques):
    ranks = [float(test.ranks[test.names.index(s)]) for s in clique]
    y = -0.25 - 0.18 * n
    ax.hlines(y, min(ranks) - 0.03, max(ranks) + 0.03, color="tab:red", linewidth=3)
  ax.axis("off")
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def _label(strategy: str) -> str:
  return strategy.upper().replace("_", "-")
