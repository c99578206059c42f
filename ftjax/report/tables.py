"""The paper's tables as data (Table), rendered to Markdown, HTML and CSV."""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import math

from ftjax import paper_results
from ftjax.report import compare
from ftjax.report.collect import Cells, Key, Study

STRATEGY_NAMES = {
    "ft": "Full Fine-tuning (FT)", "lp": "Linear Probing (LP)",
    "g_lf": "Grad. Last→First (G-LF)", "g_fl": "Grad. First→Last (G-FL)",
    "lp_ft": "Grad. Last/All (LP-FT)", "l1_sp": "L1-SP Regularization",
    "l2_sp": "L2-SP Regularization", "auto_rgn": "Auto-RGN",
    # Beyond the paper (no published values).
    "llrd": "Layer-wise LR Decay (LLRD)", "bitfit": "BitFit (biases + BN)",
    "surgical": "Surgical (one block)", "wise_ft": "WiSE-FT (LP/FT mix)",
    "knn": "k-NN on features", "bss": "Batch Spectral Shrinkage (BSS)",
    "scheduled": "Scheduled (custom plan)"}
ARCH_NAMES = {"resnet50": "ResNet-50", "densenet121": "DenseNet-121", "vgg19": "VGG-19",
              # Beyond the paper, in the order a report shows them.
              "vit_b_16": "ViT-B/16", "vit_b_32": "ViT-B/32", "vit_l_16": "ViT-L/16",
              "vit_tiny_patch16_224": "ViT-Ti/16 (timm)",
              "vit_small_patch16_224": "ViT-S/16 (timm)",
              "vit_base_patch16_224": "ViT-B/16 (timm)",
              "vit_small_patch14_dinov2": "DINOv2 ViT-S/14",
              "vit_base_patch14_dinov2": "DINOv2 ViT-B/14",
              "convnext_tiny": "ConvNeXt-T", "convnext_small": "ConvNeXt-S",
              "convnext_base": "ConvNeXt-B", "efficientnet_b0": "EfficientNet-B0",
              "efficientnet_b4": "EfficientNet-B4"}
METRIC_NAMES = {"map": "mAP", "auroc": "AUROC", "accuracy": "Accuracy", "kappa": "Kappa",
                "f1": "F1-Score", "loss": "Loss"}
DATASET_NAMES = {
    "chexpert": "CheXpert", "mura_shoulder": "MURA-Shoulder", "mura_wrist": "MURA-Wrist",
    "mura_humerus": "MURA-Humerus", "brain_tumor_mri": "T1w MRI", "bach": "BACH",
    "isic2020": "ISIC 2020", "cholect50": "CholecT50-Instrument"}


def name(kind: dict[str, str], key: str) -> str:
  return kind.get(key, key)


@dataclasses.dataclass
class Cell:
  text: str
  bold: bool = False       # best in its column
  underline: bool = False  # best over all architectures


@dataclasses.dataclass
class Table:
  """One table: a header row and body rows of Cells."""
  slug: str
  title: str
  header: list[str]
  rows: list[list[Cell]]
  note: str = ""

  def markdown(self) -> str:
    def fmt(c: Cell) -> str:
      text = c.text.replace("|", "\\|")
      text = f"<u>{text}</u>" if c.underline else text
      return f"**{text}**" if c.bold else text
    lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
             "|" + "---|" * len(self.header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in self.rows]
    if self.note:
      lines += ["", self.note]
    return "\n".join(lines) + "\n"

  def html(self) -> str:
    def fmt(c: Cell) -> str:
      text = html.escape(c.text)
      text = f"<u>{text}</u>" if c.underline else text
      return f"<b>{text}</b>" if c.bold else text
    head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in row) + "</tr>"
                   for row in self.rows)
    note = f"<p class='note'>{html.escape(self.note)}</p>" if self.note else ""
    return (f"<h3 id='{self.slug}'>{html.escape(self.title)}</h3>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}")

  def csv(self) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(self.header)
    writer.writerows([[c.text for c in row] for row in self.rows])
    return buffer.getvalue()


def fmt_mean_se(cell: tuple[float, float] | None) -> str:
  if cell is None:
    return "–"
  mean, se = cell
  return f"{mean:.2f} ± {se:.2f}" if not math.isnan(se) else f"{mean:.2f} (n=1)"


def fmt_cell(study: Study, key: Key, metric: str) -> str:
  """A cell's mean ± s.e.; "n=2 of 3" where the mean lacks some of the cell's seeds."""
  dataset, arch, strategy = key
  cell = study.cells[dataset].get(arch, {}).get(strategy, {}).get(metric)
  missing, total = study.missing(key, metric), len(study.seeds.get(key, []))
  if cell is None or not missing:
    return fmt_mean_se(cell)
  mean, se = cell
  spread = f" ± {se:.2f}" if not math.isnan(se) else ""
  return f"{mean:.2f}{spread} (n={total - len(missing)} of {total})"


def missing_note(study: Study, dataset: str, metrics) -> str:
  """The seeds each mean of the dataset's table lacks ('' when none lacks any)."""
  parts = []
  for (d, arch, strategy), by_metric in sorted(study.missing_by_cell().items()):
    for metric in metrics:
      if d == dataset and metric in by_metric:
        seeds = ", ".join(map(str, by_metric[metric]))
        parts.append(f"{name(STRATEGY_NAMES, strategy)}, {name(ARCH_NAMES, arch)} "
                     f"{name(METRIC_NAMES, metric)}: seed {seeds}")
  return (" Means over fewer seeds (no value in the missing seeds' results.json): "
          + "; ".join(parts) + ".") if parts else ""


def ordered(values, order) -> list[str]:
  """`values` in `order` first, the rest sorted after."""
  values = list(values)
  return [v for v in order if v in values] + sorted(v for v in values if v not in order)


def strategies_of(cells: Cells, dataset: str) -> list[str]:
  found = {s for by_s in cells[dataset].values() for s in by_s}
  return ordered(found, tuple(STRATEGY_NAMES))


def archs_of(cells: Cells, dataset: str) -> list[str]:
  return ordered(cells[dataset], tuple(ARCH_NAMES))


def dataset_table(study: Study, dataset: str) -> Table:
  """Tables 3-10: rows strategies; columns arch x the two main metrics; mean ± s.e.

  Bold: the best mean of each column; underlined: the best over all architectures.
  """
  cells, metrics = study.cells, study.main_metrics[dataset][:2]
  archs, strategies = archs_of(cells, dataset), strategies_of(cells, dataset)
  header = ["Method"] + [f"{name(ARCH_NAMES, a)} {name(METRIC_NAMES, m)}"
                         for a in archs for m in metrics]
  value = lambda a, s, m: cells[dataset][a].get(s, {}).get(m, (math.nan, math.nan))[0]
  col_best = {(a, m): max((value(a, s, m) for s in strategies), default=math.nan,
                          key=lambda v: -math.inf if math.isnan(v) else v)
              for a in archs for m in metrics}
  all_best = {m: max(col_best[(a, m)] for a in archs) for m in metrics}
  rows = []
  for s in strategies:
    row = [Cell(name(STRATEGY_NAMES, s))]
    for a in archs:
      for m in metrics:
        v = value(a, s, m)
        row.append(Cell(fmt_cell(study, (dataset, a, s), m),
                        bold=v == col_best[(a, m)], underline=v == all_best[m]))
    rows.append(row)
  number = _paper_table_number(dataset)
  title = (f"Table {number}: {name(DATASET_NAMES, dataset)}" if number
           else f"{name(DATASET_NAMES, dataset)}")
  return Table(f"table_{dataset}", title + " (test, mean ± standard error over seeds, %)",
               header, rows, "Learning rate per cell selected on validation (see the lr "
               "table). Bold: best in column; underlined: best over all architectures."
               + missing_note(study, dataset, metrics))


def _paper_table_number(dataset: str) -> int | None:
  return paper_results.table_number(dataset) if dataset in paper_results.datasets() else None


def paper_comparison_table(study: Study, dataset: str) -> Table | None:
  """ftjax beside the paper for every cell of a paper table: ours, paper, ours - paper."""
  if dataset not in paper_results.datasets():
    return None
  metrics = paper_results.metrics(dataset)
  archs = paper_results.ARCHS
  # The paper's eight, then any other strategy of the study beside them.
  strategies = ordered(set(paper_results.STRATEGIES) | set(
      strategies_of(study.cells, dataset) if dataset in study.cells else ()),
      tuple(STRATEGY_NAMES))
  header = ["Method"] + [f"{name(ARCH_NAMES, a)} {name(METRIC_NAMES, m)}"
                         for a in archs for m in metrics]
  rows = []
  for s in strategies:
    row = [Cell(name(STRATEGY_NAMES, s))]
    for a in archs:
      for m in metrics:
        paper = paper_results.paper_value(dataset, a, s, m)
        ours = study.cells.get(dataset, {}).get(a, {}).get(s, {}).get(m)
        missing = study.missing((dataset, a, s), m) if ours is not None else []
        total = len(study.seeds.get((dataset, a, s), []))
        ours_text = "–" if ours is None else f"{ours[0]:.2f}" + (
            f" (n={total - len(missing)} of {total})" if missing else "")
        if paper is None:  # a strategy the paper did not run
          row.append(Cell(f"{ours_text} / –"))
        elif ours is None:
          row.append(Cell(f"– / {paper[0]:.2f}"))
        else:
          row.append(Cell(f"{ours_text} / {paper[0]:.2f} ({ours[0] - paper[0]:+.2f})"))
    rows.append(row)
  return Table(f"paper_{dataset}",
               f"Table {paper_results.table_number(dataset)} vs paper: "
               f"{name(DATASET_NAMES, dataset)} (ftjax / paper (difference), %)",
               header, rows, "'–': no ftjax result for this cell yet, or no "
               "published value (strategies beyond the paper)."
               + missing_note(study, dataset, metrics))


def long_rows(study: Study) -> list[dict[str, object]]:
  """Every cell in long form with the paper's value beside it (cells.csv)."""
  rows = []
  for dataset, by_arch in study.cells.items():
    for arch, by_strategy in by_arch.items():
      for strategy, by_metric in by_strategy.items():
        key = (dataset, arch, strategy)
        for metric, (mean, se) in by_metric.items():
          paper = paper_results.paper_value(dataset, arch, strategy, metric)
          rows.append({
              "dataset": dataset, "arch": arch, "strategy": strategy, "metric": metric,
              "lr": study.selections[key].lr,
              # the seeds this mean is over, and the cell's seeds it lacks
              "seeds": " ".join(map(str, study.metric_seeds[key][metric])),
              "missing_seeds": " ".join(map(str, study.missing(key, metric))),
              "mean": mean, "se": se,
              "paper_mean": paper[0] if paper else "", "paper_se": paper[1] if paper else "",
              "diff": mean - paper[0] if paper else ""})
  return rows


def lr_table(study: Study) -> Table:
  """The learning rate chosen for every (dataset, arch, strategy) and the evidence."""
  rows = []
  for (dataset, arch, strategy), sel in sorted(study.selections.items()):
    evidence = "; ".join(f"{lr:g}: {v * 100:.2f} (loss {loss:.4f}, n={n})"
                         for lr, (v, loss, n) in sorted(sel.candidates.items()))
    rows.append([Cell(dataset), Cell(arch), Cell(strategy), Cell(f"{sel.lr:g}"),
                 Cell(f"val {name(METRIC_NAMES, sel.metric)}: {evidence}")])
  return Table("lr_selection", "Learning rates selected on validation",
               ["Dataset", "Arch", "Strategy", "Selected lr", "Validation mean per lr"],
               rows, "Highest mean validation main metric over seeds; tie: lower validation "
               "loss, then larger lr. Test values are never used.")


def table11(cells: Cells, metrics: dict[str, str], with_paper: bool = True) -> Table:
  """Best strategy and architecture per dataset and its improvement over FT."""
  best = compare.best_per_dataset(cells, metrics)
  header = ["Dataset", "Main metric", "Architecture", "Method", "Improvement over FT (%)"]
  if with_paper:
    header += ["Paper: architecture", "Paper: method", "Paper: improvement (%)"]
  rows = []
  for dataset in ordered(best, paper_results.datasets()):
    b = best[dataset]
    row = [Cell(name(DATASET_NAMES, dataset)), Cell(name(METRIC_NAMES, metrics[dataset])),
           Cell(name(ARCH_NAMES, b.arch)), Cell(name(STRATEGY_NAMES, b.strategy)),
           Cell(f"{b.improvement:.1f}")]
    if with_paper:
      paper = paper_results.TABLE11.get(dataset)
      row += ([Cell(name(ARCH_NAMES, paper[0])), Cell(name(STRATEGY_NAMES, paper[1])),
               Cell(f"{paper[2]:.1f}")] if paper else [Cell("–")] * 3)
    rows.append(row)
  return Table("table11", "Table 11: best fine-tuning method per dataset", header, rows,
               "Best mean main metric over all architectures and strategies; improvement = "
               "100·(m − m_FT)/m_FT with FT on the same architecture.")


def table12(cells: Cells, metrics: dict[str, str], archs: list[str], strategies: list[str],
            with_paper: bool = True, title: str = "Table 12: how often each strategy "
            "beats FT", slug: str = "table12") -> Table:
  """Per strategy and arch: datasets with improvement over FT > 0.1 %; effectiveness."""
  eff = compare.effectiveness(cells, metrics, strategies, archs)
  header = ["Method"] + [name(ARCH_NAMES, a) for a in archs] + ["Total", "Effectiveness (%)"]
  paper_ok = with_paper and tuple(archs) == paper_results.ARCHS
  if paper_ok:
    header += ["Paper: " + name(ARCH_NAMES, a) for a in archs] + ["Paper: total",
                                                                   "Paper: eff. (%)"]
  rows = []
  best = max((eff.percent(s) for s in eff.wins), default=math.nan)
  for s in eff.wins:
    n = sum(len(v) for v in eff.compared[s].values())
    row = [Cell(name(STRATEGY_NAMES, s))] + [Cell(str(eff.count(s, a))) for a in archs]
    row += [Cell(f"{eff.total(s)} / {n}"),
            Cell(f"{eff.percent(s):.1f}", bold=eff.percent(s) == best)]
    if paper_ok:
      p = paper_results.TABLE12.get(s)
      row += [Cell(str(x)) for x in p[:4]] + [Cell(f"{p[4]:.1f}")] if p else [Cell("–")] * 5
    rows.append(row)
  totals = [Cell("Total")] + [Cell(str(eff.arch_total(a))) for a in archs] + [Cell(""),
                                                                              Cell("")]
  if paper_ok:
    totals += [Cell(str(x)) for x in paper_results.TABLE12_TOTALS] + [Cell(""), Cell("")]
  rows.append(totals)
  return Table(slug, title, header, rows,
               f"A strategy beats FT on a (dataset, architecture) when its main metric's "
               f"relative improvement over FT is > {compare.BEATS_FT_THRESHOLD}%. "
               f"Effectiveness = beaten cases / cases compared.")
