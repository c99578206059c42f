"""How sure each comparison of a sweep is, and what to use: the report's verdict.

From the test predictions each run saved (<run>/predictions/test.npz):
bootstrap intervals per cell, paired differences to FT and to each dataset's
validation-chosen strategy (ftjax.report.stats, definitions there), rank tests
across cells, and a recommendation per dataset and per modality in words.
Cells whose runs lack saved predictions (older run directories) keep their
mean ± s.e. and are listed as lacking intervals.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import pathlib
import zipfile

import numpy as np

from ftjax.engine import evaluation
from ftjax import run as run_lib
from ftjax.report import stats, tables
from ftjax.report.collect import Key, Record, Study

BASELINE = "ft"
# Imaging modality of the paper's datasets (patterns match dataset names).
MODALITIES = {"chexpert": "X-ray", "mura_*": "X-ray", "brain_tumor_mri": "MRI",
              "bach": "histology", "isic2020": "dermoscopy", "cholect50": "endoscopy"}


def modality(dataset: str, labels: dict[str, str] | None = None) -> str:
  """The user's label for `dataset` (a name or fnmatch pattern), else the paper's
  modality, else the dataset's own name."""
  for table in (labels or {}, MODALITIES):
    for pattern, label in table.items():
      if fnmatch.fnmatchcase(dataset, pattern):
        return label
  return dataset


Interval = tuple[float, float, float]  # (estimate, low, high), percent


@dataclasses.dataclass
class Verdict:
  """Bootstrap results of a study's cells on their test sets."""
  resamples: int
  rope: float
  seed: int
  unit: dict[str, str]  # dataset -> "patients" or "examples" (what was resampled)
  intervals: dict[Key, dict[str, Interval]]
  lacking: dict[Key, str]  # cell -> why it has no interval
  # (key, seed) -> metric -> (value on the whole test set, value on each resample)
  samples: dict[tuple[Key, int], dict[str, tuple[float, np.ndarray]]]
  min_groups: int = stats.DEFAULT_MIN_TEST_GROUPS
  # dataset -> its number of test groups, where below min_groups (no verdict there)
  too_few: dict[str, int] = dataclasses.field(default_factory=dict)

  def too_few_text(self, dataset: str) -> str:
    """'too few test patients (N) for a verdict'; '' where there are enough."""
    if dataset not in self.too_few:
      return ""
    unit = "patients" if self.unit.get(dataset) == "patients" else "images"
    return f"too few test {unit} ({self.too_few[dataset]}) for a verdict"

  def difference(self, key: Key, other: Key, metric: str) -> stats.Difference | None:
    """key - other over the seeds both have (same seed, same test examples)."""
    seeds = sorted(s for k, s in self.samples if k == key and (other, s) in self.samples)
    if not seeds:
      return None
    pairs = [(self.samples[(key, s)][metric], self.samples[(other, s)][metric])
             for s in seeds]
    estimate = float(np.mean([a[0] - b[0] for a, b in pairs]))
    low, high = stats.percentile_interval(np.mean([a[1] - b[1] for a, b in pairs], axis=0))
    return stats.call_difference(estimate, low, high, self.rope)


def selected_runs(study: Study, key: Key) -> list[Record]:
  lr = study.selections[key].lr
  return [r for r in study.records if r.key == key and r.lr == lr]


def load_test(run: Record) -> dict[str, np.ndarray] | str:
  """The run's saved test predictions sorted by example id, or why there are none."""
  path = run.path / run_lib.RunDir.PREDICTIONS / "test.npz"
  if not path.exists():
    return "no saved test predictions (a run from an older ftjax)"
  try:
    saved = evaluation.load_predictions(path)
    n = len(saved["ids"])
    if saved["scores"].ndim != 2 or any(len(saved[k]) != n for k in saved):
      raise ValueError("its arrays have different lengths or scores is not [n, classes]")
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
    return (f"{path} is unreadable ({type(error).__name__}: {error}); rerun the run or "
            f"delete the file")
  order = np.argsort(saved["ids"], kind="mergesort")
  return {k: v[order] for k, v in saved.items()}


def analyse(study: Study, *, resamples: int = stats.DEFAULT_RESAMPLES,
            rope: float = stats.DEFAULT_ROPE, seed: int = stats.DEFAULT_SEED,
            min_groups: int = stats.DEFAULT_MIN_TEST_GROUPS) -> Verdict:
  """Intervals of every cell's two main metrics; one set of resamples per dataset.
  A dataset with fewer than `min_groups` test groups gets none (`Verdict.too_few`)."""
  verdict = Verdict(resamples, rope, seed, {}, {}, {}, {}, min_groups)
  for dataset in study.cells:
    metrics = study.main_metrics[dataset][:2]
    reference, indices = None, None
    for key in sorted(k for k in study.selections if k[0] == dataset):
      loaded = [(r.seed, load_test(r)) for r in selected_runs(study, key)]
      why = next((p for _, p in loaded if isinstance(p, str)), None)
      if why is not None:
        verdict.lacking[key] = why
        continue
      if reference is None:
        reference = loaded[0][1]
        verdict.unit[dataset] = ("patients" if (reference["groups"] != "").any()
                                 else "examples")
        count = stats.group_count(reference["ids"], reference["groups"])
        if count < min_groups:
          verdict.too_few[dataset] = count
        else:
          indices = stats.resample_indices(reference["ids"], reference["groups"],
                                           resamples, seed)
      if dataset in verdict.too_few:
        verdict.lacking[key] = (f"{verdict.too_few_text(dataset)} (at least {min_groups}; "
                                f"report --min_test_groups)")
        continue
      if any(not np.array_equal(p["ids"], reference["ids"]) for _, p in loaded):
        verdict.lacking[key] = "its test examples differ from the dataset's other runs"
        continue
      for run_seed, p in loaded:
        verdict.samples[(key, run_seed)] = {
            m: (stats.metric_value(m, p["scores"], p["labels"]),
                stats.metric_samples(m, p["scores"], p["labels"], indices)) for m in metrics}
      verdict.intervals[key] = {m: _cell_interval(verdict, key, m) for m in metrics}
  return verdict


def _cell_interval(verdict: Verdict, key: Key, metric: str) -> Interval:
  runs = [v[metric] for (k, _), v in verdict.samples.items() if k == key]
  low, high = stats.percentile_interval(np.mean([s for _, s in runs], axis=0))
  return float(np.mean([v for v, _ in runs])), low, high


# --- Tables -------------------------------------------------------------------------


def fmt_interval(interval: Interval | None) -> str:
  return "–" if interval is None else f"{interval[0]:.2f} [{interval[1]:.2f}, {interval[2]:.2f}]"


def fmt_difference(d: stats.Difference | None) -> str:
  return "–" if d is None else f"{d.estimate:+.2f} [{d.low:+.2f}, {d.high:+.2f}] {d.call}"


def interval_table(study: Study, verdict: Verdict, dataset: str) -> tables.Table:
  """Mean ± s.e. over seeds beside the 95% bootstrap interval, per arch and metric."""
  metrics = study.main_metrics[dataset][:2]
  archs, strategies = tables.archs_of(study.cells, dataset), tables.strategies_of(
      study.cells, dataset)
  header = ["Method"] + [f"{tables.name(tables.ARCH_NAMES, a)} "
                         f"{tables.name(tables.METRIC_NAMES, m)}" for a in archs
                         for m in metrics]
  rows = []
  for s in strategies:
    row = [tables.Cell(tables.name(tables.STRATEGY_NAMES, s))]
    for a in archs:
      for m in metrics:
        mean_se = study.cells[dataset][a].get(s, {}).get(m)
        interval = verdict.intervals.get((dataset, a, s), {}).get(m)
        text = tables.fmt_mean_se(mean_se)
        if interval is not None:
          text += f"; 95% CI [{interval[1]:.2f}, {interval[2]:.2f}]"
        row.append(tables.Cell(text))
    rows.append(row)
  unit = verdict.unit.get(dataset, "examples")
  return tables.Table(
      f"intervals_{dataset}", f"{tables.name(tables.DATASET_NAMES, dataset)}: test, mean ± "
      f"s.e. over seeds and 95% bootstrap interval (%)", header, rows,
      f"Interval: {verdict.resamples} resamples of the test {unit} (seed {verdict.seed}), "
      f"percentile method, statistic = mean over seeds. No interval: the cell's runs "
      f"saved no predictions, or the test split has fewer than {verdict.min_groups} "
      f"{'patients' if unit == 'patients' else 'images'}.")


def difference_table(study: Study, verdict: Verdict, dataset: str) -> tables.Table | None:
  """Each strategy minus FT (same arch, seeds, examples): interval and call."""
  metrics = study.main_metrics[dataset][:2]
  archs = tables.archs_of(study.cells, dataset)
  strategies = [s for s in tables.strategies_of(study.cells, dataset) if s != BASELINE]
  if not strategies or dataset in verdict.too_few:
    return None
  header = ["Method"] + [f"{tables.name(tables.ARCH_NAMES, a)} "
                         f"{tables.name(tables.METRIC_NAMES, m)}" for a in archs
                         for m in metrics]
  rows = [[tables.Cell(tables.name(tables.STRATEGY_NAMES, s))]
          + [tables.Cell(fmt_difference(verdict.difference((dataset, a, s),
                                                           (dataset, a, BASELINE), m)))
             for a in archs for m in metrics] for s in strategies]
  return tables.Table(
      f"vs_ft_{dataset}", f"{tables.name(tables.DATASET_NAMES, dataset)}: paired "
      f"difference to FT, points [95% interval] and call", header, rows,
      f"win: interval above 0 and difference > +{verdict.rope:g}; loss: interval below 0 "
      f"and difference < −{verdict.rope:g}; tie: otherwise (inside the ROPE of "
      f"±{verdict.rope:g} or not significant). –: no predictions or no FT cell.")


def win_tie_loss_table(study: Study, verdict: Verdict) -> tables.Table:
  """Per strategy, over every (dataset, arch) with intervals: wins, ties, losses vs FT."""
  counts: dict[str, list[int]] = {}
  for (dataset, arch, strategy) in sorted(verdict.intervals):
    if strategy == BASELINE:
      continue
    d = verdict.difference((dataset, arch, strategy), (dataset, arch, BASELINE),
                           study.main_metrics[dataset][0])
    if d is not None:
      tally = counts.setdefault(strategy, [0, 0, 0])
      tally[("win", "tie", "loss").index(d.call)] += 1
  rows = [[tables.Cell(tables.name(tables.STRATEGY_NAMES, s))]
          + [tables.Cell(str(n)) for n in counts[s]]
          + [tables.Cell(f"{100 * counts[s][0] / sum(counts[s]):.1f}")]
          for s in tables.ordered(counts, tuple(tables.STRATEGY_NAMES))]
  return tables.Table("win_tie_loss", "Wins, ties and losses against FT (main metric, "
                      "bootstrap, ROPE)", ["Method", "Win", "Tie", "Loss", "Win (%)"], rows,
                      f"Over every (dataset, architecture) with saved predictions; ROPE "
                      f"±{verdict.rope:g} points. Compare with table 12's count of any "
                      f"improvement > 0.1%.")


def as_json(study: Study, verdict: Verdict) -> dict:
  """The intervals and differences to FT for report/summary.json."""
  vs_ft = {}
  for (dataset, arch, strategy) in verdict.intervals:
    for metric in study.main_metrics[dataset][:2]:
      d = verdict.difference((dataset, arch, strategy), (dataset, arch, BASELINE), metric)
      if d is not None and strategy != BASELINE:
        vs_ft.setdefault("/".join((dataset, arch, strategy)), {})[metric] = \
            dataclasses.asdict(d)
  return {"bootstrap": {"resamples": verdict.resamples, "seed": verdict.seed,
                        "rope": verdict.rope, "unit": verdict.unit,
                        "min_test_groups": verdict.min_groups,
                        "too_few_test_groups": verdict.too_few},
          "intervals": {"/".join(k): v for k, v in verdict.intervals.items()},
          "vs_ft": vs_ft, "lacking_intervals": {"/".join(k): why
                                                for k, why in verdict.lacking.items()}}


def lacking_note(verdict: Verdict) -> str:
  if not verdict.lacking:
    return ""
  return ("Cells without intervals (mean ± s.e. only):\n\n"
          + "".join(f"- `{'/'.join(k)}`: {why}\n" for k, why in sorted(verdict.lacking.items())))


# --- Recommendation -----------------------------------------------------------------


def chosen_on_validation(study: Study, dataset: str) -> Key:
  """The (dataset, arch, strategy) with the highest mean validation main metric at its
  selected learning rate (ties: the earlier arch and strategy in the table order)."""
  keys = [k for k in study.selections if k[0] == dataset]
  order = lambda k: (tables.ordered(study.cells[dataset], tuple(tables.ARCH_NAMES)).index(
      k[1]), tables.strategies_of(study.cells, dataset).index(k[2]))
  value = lambda k: study.selections[k].candidates[study.selections[k].lr][0]
  return max(sorted(keys, key=order), key=lambda k: -math.inf if math.isnan(value(k))
             else round(value(k), 12))


def _who(arch: str, strategy: str) -> str:
  return (f"**{tables.name(tables.STRATEGY_NAMES, strategy)}** with "
          f"{tables.name(tables.ARCH_NAMES, arch)}")


def best_on_test(study: Study, dataset: str) -> Key:
  """The cell with the highest mean test main metric (ties: the table order)."""
  metric = study.main_metrics[dataset][0]
  cells = [(dataset, a, s) for a in tables.ordered(study.cells[dataset],
                                                   tuple(tables.ARCH_NAMES))
           for s in tables.strategies_of(study.cells, dataset)
           if metric in study.cells[dataset][a].get(s, {})]
  value = lambda k: study.cells[dataset][k[1]][k[2]][metric][0]
  return max(cells, key=lambda k: -math.inf if math.isnan(value(k)) else value(k))


def disagreement(study: Study, verdict: Verdict, dataset: str, chosen: Key) -> str:
  """'' when the validation choice is also the best on test; else the sentence that
  says which cell test favours and how sure that is, for the recommendation's start."""
  best = best_on_test(study, dataset)
  metric = study.main_metrics[dataset][0]
  test = lambda k: study.cells[dataset][k[1]][k[2]][metric][0]
  if best == chosen or not test(best) > test(chosen):
    return ""
  text = (f"**validation and test disagree**: validation picks {_who(*chosen[1:])} "
          f"(test {test(chosen):.2f}%), test favours {_who(*best[1:])} "
          f"(test {test(best):.2f}%)")
  d = verdict.difference(best, chosen, metric)
  if d is not None:
    return text + f", paired difference {fmt_difference(d)}. "
  why = verdict.too_few_text(dataset) or "no paired interval"
  return text + f" ({why}, so not a call either way). "


def recommend(study: Study, verdict: Verdict, dataset: str) -> str:
  """One paragraph a clinician-researcher can read."""
  key = chosen_on_validation(study, dataset)
  _, arch, strategy = key
  metric = study.main_metrics[dataset][0]
  metric_name = tables.name(tables.METRIC_NAMES, metric)
  interval = verdict.intervals.get(key, {}).get(metric)
  mean, se = study.cells[dataset][arch][strategy][metric]
  seeds = len(study.seeds[key])
  lead = disagreement(study, verdict, dataset, key)  # first, where test disagrees
  text = (f"{tables.name(tables.DATASET_NAMES, dataset)}: "
          f"{lead}{'Chosen' if lead else 'chosen'} on validation, "
          f"{_who(arch, strategy)}. Its test {metric_name} is {mean:.2f}% (± {se:.2f} s.e. "
          f"over {seeds} seed(s))")
  if dataset in verdict.too_few:
    return text + (f"; {verdict.too_few_text(dataset)}: no interval and no win/tie/loss "
                   f"call (at least {verdict.min_groups} are needed; "
                   f"report --min_test_groups sets it).")
  if interval is None:
    return text + (". No interval: its runs saved no test predictions, so how sure this "
                   "is cannot be said beyond the spread over seeds.")
  text += (f", 95% interval {interval[1]:.2f}–{interval[2]:.2f}% from "
           f"{verdict.resamples} resamples of the test {verdict.unit[dataset]}.")
  return text + _others(study, verdict, key)


def _others(study: Study, verdict: Verdict, key: Key) -> str:
  """The other strategies on the chosen architecture: as good, worse, better."""
  dataset, arch, strategy = key
  metric = study.main_metrics[dataset][0]
  text, same, worse, better = "", [], [], []
  for other in tables.strategies_of(study.cells, dataset):
    if other == strategy:
      continue
    d = verdict.difference((dataset, arch, other), key, metric)
    if d is None:
      continue
    label = f"{tables.name(tables.STRATEGY_NAMES, other)} ({d.estimate:+.2f})"
    {"tie": same, "loss": worse, "win": better}[d.call].append(label)
  if same:
    text += (f" As good within ±{verdict.rope:g} point or not significantly different on "
             f"{tables.name(tables.ARCH_NAMES, arch)}: {', '.join(same)} — any of these is "
             f"a defensible choice.")
  if worse:
    text += f" Clearly worse: {', '.join(worse)}."
  if better:
    text += (f" Better on test than the validation choice: {', '.join(better)} (validation "
             f"and test disagree; prefer more validation data before switching).")
  return text


def recommendations(study: Study, verdict: Verdict,
                    labels: dict[str, str] | None = None) -> str:
  """Markdown: per modality, the recommendation of each of its datasets."""
  by_modality: dict[str, list[str]] = {}
  for dataset in tables.ordered(study.cells, tuple(tables.DATASET_NAMES)):
    by_modality.setdefault(modality(dataset, labels), []).append(dataset)
  parts = []
  for label, datasets in by_modality.items():
    parts.append(f"### {label}\n\n" + "\n\n".join(
        f"- {recommend(study, verdict, d)}" for d in datasets) + "\n")
  return "\n".join(parts)


def across_cells(cells, metrics: dict[str, str], archs: list[str] | None = None
                 ) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
  """[blocks, strategies] of mean main metric over (dataset, arch) blocks that have
  every strategy that all blocks share; (values, strategies, blocks)."""
  blocks = [(d, a) for d in cells for a in cells[d] if archs is None or a in archs]
  if not blocks:
    return np.zeros((0, 0)), [], []
  shared = set.intersection(*(set(s for s, v in cells[d][a].items() if metrics[d] in v)
                              for d, a in blocks))
  strategies = tables.ordered(shared, tuple(tables.STRATEGY_NAMES))
  values = np.array([[cells[d][a][s][metrics[d]][0] for s in strategies] for d, a in blocks])
  return values, strategies, blocks


@dataclasses.dataclass
class RankTests:
  """Friedman and Wilcoxon-Holm over (dataset, arch) blocks, overall and per arch."""
  table: tables.Table
  pairwise: list[tables.Table]
  figures: list[pathlib.Path]
  results: dict[str, tuple[stats.Friedman, stats.PairwiseTest]]  # scope -> tests


def rank_tests(cells, metrics: dict[str, str], archs: list[str], out: pathlib.Path | None,
               *, slug: str = "friedman", what: str = "this sweep") -> RankTests:
  """The tests for every scope with >= 2 blocks and >= 2 strategies; CD PNGs into `out`
  (None: no figures)."""
  from ftjax.report import figures  # pylint: disable=import-outside-toplevel
  rows, pairwise, paths, results = [], [], [], {}
  for scope in ["all", *archs]:
    values, strategies, blocks = across_cells(cells, metrics, None if scope == "all"
                                              else [scope])
    if len(blocks) < 2 or len(strategies) < 2:
      continue
    friedman = stats.friedman(values)
    test = stats.wilcoxon_holm(values, strategies)
    results[scope] = (friedman, test)
    label = "all architectures" if scope == "all" else tables.name(tables.ARCH_NAMES, scope)
    ranked = sorted(zip(friedman.ranks, strategies))
    rows.append([tables.Cell(label), tables.Cell(str(len(blocks))),
                 tables.Cell(str(len(strategies))), tables.Cell(f"{friedman.chi2:.2f}"),
                 tables.Cell(_p(friedman.p_chi2)), tables.Cell(f"{friedman.f:.2f}"),
                 tables.Cell(_p(friedman.p_f)), tables.Cell(_p(friedman.p_tie_corrected)),
                 tables.Cell(", ".join(f"{_short(s)} {r:.2f}" for r, s in ranked)),
                 tables.Cell("; ".join("{" + ", ".join(map(_short, c)) + "}"
                                       for c in test.cliques) or "none")])
    pairwise.append(_pairwise_table(test, f"{slug}_pairs_{scope}", label, what))
    if out is not None:
      path = figures.cd_diagram(test, f"Critical difference (Wilcoxon-Holm, α = "
                                f"{stats.ALPHA}): {what}, {label}, {len(blocks)} cells",
                                out / f"cd_{slug}_{scope}.png")
      if path:
        paths.append(path)
  header = ["Scope", "Cells (N)", "Strategies (k)", "Friedman χ²_F", "p", "Iman-Davenport F_F",
            "p (F_F)", "p (tie-corrected χ²)", "Average rank (1 = best)",
            "Not significantly different (Wilcoxon-Holm cliques)"]
  table = tables.Table(slug, f"Friedman test over strategies: {what}", header, rows,
                       "Blocks: (dataset, architecture) cells with every strategy; value: "
                       "the dataset's main metric (mean over seeds). χ²_F and F_F as in "
                       "Demšar (2006); cliques from pairwise Wilcoxon signed-rank tests "
                       f"with Holm's correction at α = {stats.ALPHA}.")
  return RankTests(table, pairwise, paths, results)


def _p(p: float) -> str:
  return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _short(strategy: str) -> str:
  return strategy.upper().replace("_", "-")


def _pairwise_table(test: stats.PairwiseTest, slug: str, label: str, what: str
                    ) -> tables.Table:
  rows = [[tables.Cell(f"{_short(a)} vs {_short(b)}"), tables.Cell(_p(p)),
           tables.Cell(_p(adjusted)), tables.Cell("yes" if differs else "no")]
          for a, b, p, adjusted, differs in sorted(test.pairs, key=lambda t: t[2])]
  return tables.Table(slug, f"Pairwise Wilcoxon signed-rank tests, Holm-corrected: {what}, "
                      f"{label}", ["Pair", "p", "Holm-adjusted p",
                                   f"Differs at α = {stats.ALPHA}"], rows)
