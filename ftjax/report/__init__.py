"""Paper-style report of a sweep: tables 3-12, figures 6-11, Auto-RGN plots, HTML.

  python -m ftjax.report --workdir runs/paper --out report/

  from ftjax import report
  study = report.study("runs/paper")       # lr selected on validation, mean ± s.e.
  report.write_report("runs/paper", "report/")   # + intervals, calls, recommendation
  verdict = report.analyse(study)                  # bootstrap from saved predictions
  report.write_paper_report("docs/")               # the paper's tables 3-10, tested
"""

from ftjax.report.collect import (Record, Selection, Study, load_results, mean_se,
                                  select_lr, study, summarize)
from ftjax.report.compare import (BEATS_FT_THRESHOLD, best_per_dataset, effectiveness,
                                  improvements, relative_improvement)
from ftjax.report.paper import write_paper_report
from ftjax.report.verdict import Verdict, analyse
from ftjax.report.write import write_report

__all__ = [
    "BEATS_FT_THRESHOLD", "Record", "Selection", "Study", "best_per_dataset",
    "effectiveness", "improvements", "load_results", "mean_se", "relative_improvement",
    "select_lr", "study", "summarize", "write_report", "Verdict", "analyse",
    "write_paper_report",
]
