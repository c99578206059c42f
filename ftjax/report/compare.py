"""The paper's comparisons with full fine-tuning (FT): tables 11 and 12, figures 6-11.

Definitions (paper section 5, captions of table 11, table 12 and figures 6-11):
- Main metric of a dataset: the metric of its figure, i.e. the first of its two
  metrics (mAP for CheXpert and CholecT50, accuracy for MURA, MRI and BACH,
  AUROC for ISIC 2020).
- Improvement over FT of strategy s on (dataset, arch), in percent: the relative
  change of the mean main metric, 100 * (m_s - m_FT) / m_FT, with FT on the same
  dataset and architecture (table 11's footnote; "percentage change compared to
  Full fine-tuning" in figures 6-11).
- Table 11: per dataset, the (arch, strategy) with the highest mean main metric
  over all architectures and strategies (FT included), and its improvement over
  FT on that architecture (0 when FT itself is best).
- s beats FT on (dataset, arch) when its improvement is > 0.1 (percent).
  Table 12 counts, per strategy and architecture, the datasets where s beats FT;
  effectiveness = beaten cases / (datasets x architectures compared) * 100.
"""

from __future__ import annotations

import dataclasses
import math

from ftjax.report.collect import Cells

BEATS_FT_THRESHOLD = 0.1  # percent, relative improvement (table 12 caption: "> 0.1%")
BASELINE = "ft"


def relative_improvement(value: float, ft: float) -> float:
  """100 * (value - ft) / ft: the percentage change relative to FT."""
  return 100.0 * (value - ft) / ft


def improvements(cells: Cells, dataset: str, metric: str) -> dict[str, dict[str, float]]:
  """arch -> strategy (not FT) -> improvement over FT in percent, where both exist."""
  out: dict[str, dict[str, float]] = {}
  for arch, by_strategy in cells.get(dataset, {}).items():
    ft = by_strategy.get(BASELINE, {}).get(metric)
    if ft is None:
      continue
    out[arch] = {s: relative_improvement(v[metric][0], ft[0])
                 for s, v in by_strategy.items() if s != BASELINE and metric in v}
  return out


@dataclasses.dataclass(frozen=True)
class Best:
  """A table 11 row."""
  dataset: str
  arch: str
  strategy: str
  value: float         # its mean main metric, percent
  improvement: float   # over FT on the same arch, percent


def best_per_dataset(cells: Cells, metrics: dict[str, str]) -> dict[str, Best]:
  """Table 11: dataset -> best (arch, strategy) by mean main metric and its gain over FT.

  Ties go to the earlier architecture and strategy in the cells' order.
  """
  out = {}
  for dataset, metric in metrics.items():
    best = None
    for arch, by_strategy in cells.get(dataset, {}).items():
      for strategy, values in by_strategy.items():
        if metric in values and not math.isnan(values[metric][0]):
          if best is None or values[metric][0] > best[2]:
            best = (arch, strategy, values[metric][0])
    if best is None:
      continue
    arch, strategy, value = best
    ft = cells[dataset][arch].get(BASELINE, {}).get(metric)
    gain = math.nan if ft is None else relative_improvement(value, ft[0])
    out[dataset] = Best(dataset, arch, strategy, value, gain)
  return out


@dataclasses.dataclass
class Effectiveness:
  """Table 12: strategy -> arch -> datasets where it beats FT; and the denominators."""
  wins: dict[str, dict[str, list[str]]]
  compared: dict[str, dict[str, list[str]]]

  def count(self, strategy: str, arch: str) -> int:
    return len(self.wins[strategy].get(arch, []))

  def total(self, strategy: str) -> int:
    return sum(len(v) for v in self.wins[strategy].values())

  def percent(self, strategy: str) -> float:
    n = sum(len(v) for v in self.compared[strategy].values())
    return 100.0 * self.total(strategy) / n if n else math.nan

  def arch_total(self, arch: str) -> int:
    return sum(len(w.get(arch, [])) for w in self.wins.values())


def effectiveness(cells: Cells, metrics: dict[str, str], strategies: list[str],
                  archs: list[str], threshold: float = BEATS_FT_THRESHOLD) -> Effectiveness:
  """Counts (dataset, arch) cases where each strategy's improvement over FT > threshold."""
  wins = {s: {a: [] for a in archs} for s in strategies if s != BASELINE}
  compared = {s: {a: [] for a in archs} for s in strategies if s != BASELINE}
  for dataset, metric in metrics.items():
    for arch, gains in improvements(cells, dataset, metric).items():
      if arch not in archs:
        continue
      for strategy, gain in gains.items():
        if strategy in wins:
          compared[strategy][arch].append(dataset)
          if gain > threshold:
            wins[strategy][arch].append(dataset)
  return Effectiveness(wins, compared)
