"""python -m ftjax.evaluate --workdir runs/isic_lp [--split test] [--checkpoint best]

Re-evaluates a run's checkpoint on a split with the config stored in the
workdir, and prints the five metrics (and the loss) as JSON.
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import app, flags
import ml_collections

from ftjax import cli_flags, step
from ftjax.engine import checkpoints, evaluation
from ftjax import run as run_lib
from ftjax.data.prepared import prepared_builder
from ftjax.data import DataError
from ftjax.models import registry
from ftjax.strategies import get_strategy, uses_lr

def evaluate_run(workdir: str | pathlib.Path, split: str = "test",
                 checkpoint: str = "best") -> dict:
  workdir = pathlib.Path(workdir)
  config = ml_collections.ConfigDict(run_lib.RunDir(workdir).read_config())
  if not uses_lr(config.strategy):  # training-free (kNN): nothing to restore
    raise ValueError(f"{workdir}: a {config.strategy!r} run trains no weights and keeps no "
                     f"checkpoint; its metrics are in {workdir / 'results.json'}, its "
                     f"predictions in {workdir / 'predictions'}.")
  arch = registry.get_arch(config.arch)
  info, builder = prepared_builder(config, arch)
  model = arch.build(info.num_classes)
  # Random variables of the right structure: the checkpoint supplies the values.
  like = registry.init_variables(arch, 0, info.num_classes)
  ckpts = checkpoints.RunCheckpoints(workdir)
  if checkpoint == "best":
    epoch, variables = ckpts.restore_best(like)
  else:
    strategy = get_strategy(config.strategy, arch,
                            {**config.strategy_options.to_dict(), "lr": config.lr})
    restored = ckpts.restore_latest(step.create_train_state(strategy, like))
    if restored is None:
      raise FileNotFoundError(f"{workdir}: no checkpoint yet.")
    state, loop = restored
    epoch, variables = loop["epoch"] - 1, {"params": state.params,
                                           "batch_stats": state.batch_stats}
  ckpts.close()
  result = evaluation.evaluate(
      model, variables, builder.as_data_source(split), multilabel=info.multilabel,
      class_names=info.class_names, batch_size=config.eval_batch_size, crop=config.crop,
      num_workers=config.num_workers)
  return {"workdir": str(workdir), "split": split, "checkpoint": checkpoint,
          "epoch": epoch, **result}


def main(argv) -> None:
  del argv
  try:
    print(json.dumps(evaluate_run(flags.FLAGS.workdir, flags.FLAGS.split,
                                  flags.FLAGS.checkpoint), indent=2))
  except (DataError, FileNotFoundError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)


def cli() -> None:
  """The console script's entry point (pyproject.toml); also `python -m`."""
  flags.DEFINE_string("workdir", None, "a run directory of ftjax.train", required=True)
  flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "split")
  flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                    "the best epoch by validation, or the last one")
  app.run(main, flags_parser=cli_flags.parse)


if __name__ == "__main__":
  cli()
