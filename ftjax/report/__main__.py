"""python -m ftjax.report --workdir runs/paper --out report/
python -m ftjax.report --paper --out docs/   (the paper's own tables 3-10, tested)"""

import sys

from absl import app, flags

from ftjax import cli_flags
from ftjax.report import stats
from ftjax.report.paper import write_paper_report
from ftjax.report.write import write_report

flags.DEFINE_string("workdir", "runs/paper", "sweep root holding the runs' results.json")
flags.DEFINE_string("out", "report", "output folder")
flags.DEFINE_boolean("figures", True, "write the PNG figures (needs matplotlib)")
flags.DEFINE_integer("bootstrap", stats.DEFAULT_RESAMPLES,
                     "bootstrap resamples of each test set (patients where it has them)",
                     lower_bound=10)
flags.DEFINE_float("rope", stats.DEFAULT_ROPE, "region of practical equivalence: "
                   "differences within ± this many points of the metric are a tie",
                   lower_bound=0.0)
flags.DEFINE_integer("bootstrap_seed", stats.DEFAULT_SEED, "seed of the resamples")
flags.DEFINE_integer("min_test_groups", stats.DEFAULT_MIN_TEST_GROUPS,
                     "fewest test patients (images where a dataset has no patient ids) "
                     "for an interval and a win/tie/loss call; below it the "
                     "recommendation says there are too few", lower_bound=1)
flags.DEFINE_list("modality", [], "dataset=label pairs (name or fnmatch pattern), e.g. "
                  "'my_ct=CT,derm_*=dermoscopy': groups the recommendations by your label")
flags.DEFINE_boolean("paper", False, "analyse the paper's published tables 3-10 instead "
                     "of a sweep (Friedman, CD diagram, table 12 with the ROPE)")


def _modalities(pairs: list[str]) -> dict[str, str]:
  out = {}
  for pair in pairs:
    name, sep, label = pair.partition("=")
    if not sep or not name.strip() or not label.strip():
      raise app.UsageError(f"--modality {pair!r}: expected dataset=label, e.g. my_ct=CT")
    out[name.strip()] = label.strip()
  return out


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  try:
    if f.paper:
      written = write_paper_report(f.out, rope=f.rope, figures_too=f.figures)
    else:
      written = write_report(f.workdir, f.out, figures_too=f.figures, resamples=f.bootstrap,
                             rope=f.rope, bootstrap_seed=f.bootstrap_seed,
                             modalities=_modalities(f.modality),
                             min_test_groups=f.min_test_groups)
  except FileNotFoundError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  for name, path in written.items():
    print(f"{name}: {path}")


def cli() -> None:
  """The console script's entry point (pyproject.toml); also `python -m`."""
  app.run(main, flags_parser=cli_flags.parse)


if __name__ == "__main__":
  cli()
