"""`python -m ftjax.report --paper`: the paper's own tables 3-10, tested.

The published cells are means ± s.e. over three seeds, so only what those allow:
- Friedman test over the 8 strategies on the 24 (dataset, arch) cells of the
  main metric (Table 11's: mAP, accuracy or AUROC), Iman-Davenport F, and the
  Wilcoxon-Holm critical-difference diagram, overall and per architecture.
- Table 12 recomputed with a ROPE: strategy minus FT in points of the main
  metric, its 95% interval d ± t(0.975, 4) · sqrt(se_s² + se_FT²) (Welch-style
  for two cells of 3 seeds, unpaired: the paper gives no per-seed values), and
  the win / tie / loss call of ftjax.report.stats.
"""

from __future__ import annotations

import math
import pathlib

import scipy.stats

from ftjax import paper_results
from ftjax.report import compare, stats, tables
from ftjax.report import verdict as verdict_lib

SEEDS = 3
T_975 = float(scipy.stats.t.ppf(0.975, 2 * (SEEDS - 1)))


def main_metrics() -> dict[str, str]:
  return {d: paper_results.metrics(d)[0] for d in paper_results.datasets()}


def difference(dataset: str, arch: str, strategy: str, rope: float) -> stats.Difference:
  """The strategy minus FT on one published cell, with the interval above."""
  metric = main_metrics()[dataset]
  mean, se = paper_results.paper_value(dataset, arch, strategy, metric)
  ft_mean, ft_se = paper_results.paper_value(dataset, arch, compare.BASELINE, metric)
  half = T_975 * math.hypot(se, ft_se)
  d = mean - ft_mean
  return stats.call_difference(d, d - half, d + half, rope)


def rope_table12(rope: float) -> tuple[tables.Table, dict[str, list[int]]]:
  """Per strategy and arch: wins / ties / losses against FT; the totals."""
  archs = list(paper_results.ARCHS)
  totals: dict[str, list[int]] = {}
  rows = []
  for strategy in [s for s in paper_results.STRATEGIES if s != compare.BASELINE]:
    per_arch, total = [], [0, 0, 0]
    for arch in archs:
      tally = [0, 0, 0]
      for dataset in paper_results.datasets():
        call = difference(dataset, arch, strategy, rope).call
        tally[("win", "tie", "loss").index(call)] += 1
      per_arch.append(tables.Cell("/".join(map(str, tally))))
      total = [a + b for a, b in zip(total, tally)]
    totals[strategy] = total
    printed = paper_results.TABLE12[strategy]
    rows.append([tables.Cell(tables.name(tables.STRATEGY_NAMES, strategy)), *per_arch,
                 tables.Cell("/".join(map(str, total))),
                 tables.Cell(f"{100 * total[0] / sum(total):.1f}"),
                 tables.Cell(f"{printed[3]} / 24 ({printed[4]:.1f})")])
  header = (["Method"] + [f"{tables.name(tables.ARCH_NAMES, a)} W/T/L" for a in archs]
            + ["Total W/T/L", "Win (%)", "Paper table 12: improved (%)"])
  return tables.Table(
      "paper_table12_rope", f"Table 12 recomputed with a ROPE of ±{rope:g} point(s) and "
      f"95% intervals from the published s.e.", header, rows,
      f"Win: interval above 0 and difference > +{rope:g}; loss: interval below 0 and "
      f"difference < −{rope:g}; tie otherwise. Interval: d ± {T_975:.3f}·sqrt(se² + "
      f"se_FT²). The paper counts any relative improvement > 0.1% as a win."), totals


def conclusions(ranks: verdict_lib.RankTests, totals: dict[str, list[int]],
                rope: float) -> str:
  """What the numbers say about the paper's claims, in sentences built from them."""
  friedman, test = ranks.results["all"]
  best = test.names[int(min(range(len(test.names)), key=lambda i: test.ranks[i]))]
  ft_clique = [c for c in test.cliques if compare.BASELINE in c]
  lp_ft = totals["lp_ft"]
  tied_with_ft = sorted({s for c in ft_clique for s in c} - {compare.BASELINE})
  lines = [
      f"- Strategies differ overall: Friedman χ²_F = {friedman.chi2:.2f} "
      f"(p = {verdict_lib._p(friedman.p_chi2)}), Iman-Davenport F_F = {friedman.f:.2f} "
      f"(p = {verdict_lib._p(friedman.p_f)}) over {friedman.blocks} cells and "
      f"{friedman.treatments} strategies.",
      f"- Best average rank: {verdict_lib._short(best)} "
      f"({min(test.ranks):.2f}); FT ranks "
      f"{test.ranks[test.names.index(compare.BASELINE)]:.2f}.",
      f"- Not significantly different from FT after Holm's correction: "
      f"{', '.join(map(verdict_lib._short, tied_with_ft)) or 'none'}; significantly "
      f"different from FT: "
      f"{', '.join(verdict_lib._short(s) for s in test.names if test.differs(s, 'ft')) or 'none'}.",
      f"- \"LP-FT improves over FT in over 50% of cases\" (table 12: 14 of 24, 58.3%): with a "
      f"ROPE of ±{rope:g} point and the published s.e., LP-FT wins {lp_ft[0]} of 24 "
      f"({100 * lp_ft[0] / 24:.1f}%), ties {lp_ft[1]} and loses {lp_ft[2]}.",
      "- Wins of every strategy against FT under the ROPE: " + ", ".join(
          f"{verdict_lib._short(s)} {t[0]}/24" for s, t in totals.items()) + ".",
      *(_power_note(scope, f, t) for scope, (f, t) in ranks.results.items() if scope != "all"),
  ]
  return "\n".join(lines) + "\n"


def write_paper_report(out: str | pathlib.Path, *, rope: float = stats.DEFAULT_ROPE,
                       figures_too: bool = True) -> dict[str, pathlib.Path]:
  """paper_reanalysis.md and its critical-difference PNGs (cd_paper_*.png) into `out`."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  ranks = verdict_lib.rank_tests(paper_results.results(), main_metrics(),
                                 list(paper_results.ARCHS), out if figures_too else None,
                                 slug="paper", what="the paper's tables 3-10")
  table12, totals = rope_table12(rope)
  images = "".join(f"![{p.stem}]({p.name})\n\n" for p in ranks.figures)
  text = (f"# The paper's tables 3-10, tested\n\n"
          f"Generated by `python -m ftjax.report --paper --out {out.as_posix()}` (ROPE "
          f"±{rope:g} point) from the published "
          f"means and standard errors shipped in `ftjax/paper_results.py` (8 strategies × "
          f"8 datasets × 3 architectures, 3 seeds each). Main metric per dataset: "
          + ", ".join(f"{tables.name(tables.DATASET_NAMES, d)} "
                      f"{tables.name(tables.METRIC_NAMES, m)}"
                      for d, m in main_metrics().items())
          + f".\n\n## What the numbers say\n\n{conclusions(ranks, totals, rope)}\n"
          f"## Friedman test and critical differences\n\n{ranks.table.markdown()}\n"
          f"{images}## Table 12 with a region of practical equivalence\n\n"
          f"{table12.markdown()}\n## Pairwise tests\n\n"
          + "\n".join(t.markdown() for t in ranks.pairwise))
  path = out / "paper_reanalysis.md"
  path.write_text(text)
  return {"paper_reanalysis.md": path, **{p.name: p for p in ranks.figures}}


def _power_note(scope: str, friedman: stats.Friedman, test: stats.PairwiseTest) -> str:
  """Why a per-architecture diagram may join everything: the smallest p that a
  two-sided Wilcoxon test on N cells can give, times Holm's first factor."""
  pairs = len(test.pairs)
  floor = pairs * 2.0 / 2 ** friedman.blocks
  name = tables.name(tables.ARCH_NAMES, scope)
  verdict = ("so no pair can differ: this diagram cannot separate strategies"
             if floor >= stats.ALPHA else "so strong differences can show")
  return (f"- {name} alone ({friedman.blocks} cells): Friedman p = "
          f"{verdict_lib._p(friedman.p_chi2)}; the smallest Holm-adjusted Wilcoxon p "
          f"possible is {pairs} × 2/2^{friedman.blocks} = {floor:.3g}, {verdict}.")
