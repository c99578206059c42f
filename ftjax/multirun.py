"""python -m ftjax.multirun: several (lr, seed) runs of one dataset x arch x strategy in one
vmapped step (`ftjax.engine.group`).

  python -m ftjax.multirun --config configs/base.py:bach,ft --seeds 0,1,2 \
      --lrs 1e-3,1e-4,1e-5 --workdir runs
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from ftjax import cli_flags, compile_cache
from ftjax.engine.group import train_group


def _floats(text: str) -> list[float]:
  return [float(x) for x in text.split(",") if x.strip()]


def main(argv) -> None:
  # The persistent compilation cache, on by default: groups of one arch x strategy
  # compile the same programs (<workdir>/.jax_cache; --compilation_cache_dir='' off).
  compile_cache.enable(compile_cache.directory(
      {"compilation_cache_dir": flags.FLAGS.compilation_cache_dir}, flags.FLAGS.workdir))

  def run(config):
    lrs = _floats(flags.FLAGS.lrs) if flags.FLAGS.lrs else [config.lr]
    seeds = [int(x) for x in _floats(flags.FLAGS.seeds)] if flags.FLAGS.seeds else [config.seed]
    return train_group(config, lrs, seeds, flags.FLAGS.workdir)

  results = cli_flags.run_cli(argv, "configs/base.py:bach,ft", run)
  if any(r is None for r in results):
    sys.exit(1)


def cli() -> None:
  """The console script's entry point (pyproject.toml); also `python -m`."""
  config_flags.DEFINE_config_file("config", None, "ml_collections config file (one "
                                  "dataset, arch and strategy).")
  flags.DEFINE_string("lrs", None, "comma-separated learning rates (default: config.lr)")
  flags.DEFINE_string("seeds", None, "comma-separated seeds (default: config.seed)")
  flags.DEFINE_string("compilation_cache_dir", None, "persistent JAX compilation cache "
                      "(default <workdir>/.jax_cache; '' for none)")
  flags.DEFINE_string("workdir", "runs", "root of the run directories "
                      "(<dataset>/<arch>/<strategy>/lr<lr>/seed<seed>/ under it)")
  app.run(main, flags_parser=cli_flags.parse)


if __name__ == "__main__":
  cli()
