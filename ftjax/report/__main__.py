"""python -m ftjax.report --workdir runs/paper --out report/"""

import sys

from absl import app, flags

from ftjax.report.write import write_report

flags.DEFINE_string("workdir", "runs/paper", "sweep root holding the runs' results.json")
flags.DEFINE_string("out", "report", "output folder")
flags.DEFINE_boolean("figures", True, "write the PNG figures (needs matplotlib)")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    written = write_report(flags.FLAGS.workdir, flags.FLAGS.out,
                           figures_too=flags.FLAGS.figures)
  except FileNotFoundError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  for name, path in written.items():
    print(f"{name}: {path}")


if __name__ == "__main__":
  app.run(main)
