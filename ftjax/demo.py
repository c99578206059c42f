"""python -m ftjax.demo: the embedded default, end to end with no downloads.

Prepares the synthetic dataset, trains each strategy of configs/demo.py on a
small randomly initialised ResNet, evaluates the best epoch of each on the
test split and prints a table. A few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import time

from ftjax import logging_utils
from ftjax.engine.training import train_and_evaluate

_DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.py"


def load_config(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location("ftjax_demo_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def table(rows: list[dict]) -> str:
  names = ["map", "accuracy", "auroc", "kappa", "f1"]
  lines = ["| strategy | best epoch | " + " | ".join(names) + " |",
           "|---|---|" + "---|" * len(names)]
  for row in rows:
    test = row["test"]
    lines.append(f"| {row['strategy']} | {row['best_epoch'] + 1} | "
                 + " | ".join(f"{test[n]:.3f}" for n in names) + " |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m ftjax.demo", description=__doc__)
  parser.add_argument("--config", type=pathlib.Path, default=_DEFAULT_CONFIG)
  parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("runs/demo"))
  args = parser.parse_args(argv)
  logging_utils.quiet_libraries()
  config = load_config(args.config)
  start = time.perf_counter()
  rows = []
  for name in config.demo_strategies:
    run_config = config.copy_and_resolve_references()
    run_config.strategy = name
    print(f"\n== {name} ==", flush=True)
    rows.append(train_and_evaluate(run_config, args.workdir / name))
  print(f"\nsynthetic test split ({rows[0]['test']['count']} images), "
        f"{config.arch} from random init, lr {config.lr:g}, "
        f"{time.perf_counter() - start:.0f} s in all:\n")
  print(table(rows))
  print(f"\nResults and metrics.jsonl of each run are in {args.workdir}/<strategy>/.")


def cli() -> None:
  """The console script's entry point (pyproject.toml); also `python -m`."""
  main()


if __name__ == "__main__":
  cli()
