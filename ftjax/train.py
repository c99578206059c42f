"""python -m ftjax.train --config configs/isic_lp.py --workdir runs/isic_lp

Trains one (dataset, architecture, strategy, learning rate, seed) run with the
paper's protocol (`ftjax.engine.training.train_and_evaluate`). Rerunning the same
command resumes after the last finished epoch; a finished run says so and exits.

Writes into the workdir: config.json, identity.json, metrics.jsonl (one line
per epoch), rgn.jsonl (Auto-RGN's per-tensor weights), TensorBoard scalars
(tb/), checkpoints/ and, at the end, results.json.
"""

from __future__ import annotations

import os
import pathlib

from absl import app, flags
import ml_collections
from ml_collections import config_flags

from ftjax import cli_flags
from ftjax import run as run_lib
from ftjax.engine.training import train_and_evaluate


def default_workdir(config: ml_collections.ConfigDict) -> str:
  return "runs/" + run_lib.relative_path(config.dataset, config.arch, config.strategy,
                                         config.lr, config.seed)


def main(argv) -> None:
  def run(config):
    workdir = pathlib.Path(flags.FLAGS.workdir or default_workdir(config))
    # A sweep that starts this command holds the run's lock for it.
    held = os.environ.get(run_lib.LOCK_HELD_ENV) == str(workdir.absolute())
    return train_and_evaluate(config, workdir, overwrite=flags.FLAGS.overwrite,
                              lock_held=held)
  cli_flags.run_cli(argv, "configs/isic_lp.py", run)


def cli() -> None:
  """The console script's entry point (pyproject.toml); also `python -m`. Flags are
  defined here only, so that importing this module defines none."""
  config_flags.DEFINE_config_file("config", None, "ml_collections config file; override "
                                  "fields with --config.FIELD=VALUE.")
  flags.DEFINE_string("workdir", None, "run directory (default: runs/<dataset>/<arch>/"
                      "<strategy>/lr<lr>/seed<seed>)")
  flags.DEFINE_boolean("overwrite", False, "if the workdir holds a run of another identity, "
                       "move it aside to <workdir>.old-<n> (never deleted) and start anew")
  app.run(main, flags_parser=cli_flags.parse)


if __name__ == "__main__":
  cli()
