"""Finished runs per hour: vmapped multi-run training vs the same runs one by one.

  python -m benchmarks.multirun_throughput --arch resnet50 --strategy ft \
      --lrs 1e-3,1e-4,1e-5 --seeds 0,1,2 --num_train 400 --epochs 3

A BACH-sized synthetic dataset (400 images, 4 classes by default) is trained
with every (lr, seed) of the grid twice: as one `ftjax.multirun` group and as
separate `ftjax.train` runs, each end to end (compile, training, validation
every epoch, test), with early stopping off so both do the same epochs. The
wall times give finished runs per hour and their ratio. Prints a Markdown
table; --json writes the record.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import tempfile
import time

import jax

from configs import base
from ftjax.engine import group as multirun
from ftjax.engine import experiment, training


def make_config(args) -> "base.ml_collections.ConfigDict":
  config = base.get_config(f"synthetic,{args.strategy},{args.arch}")
  config.init = "random"
  config.data_dir = args.data_dir
  config.dataset_options.num_train = args.num_train
  config.dataset_options.num_test = args.num_test
  config.resize, config.crop = args.resize, args.size
  config.batch_size = args.batch
  config.eval_batch_size = args.batch
  config.num_epochs = args.epochs
  config.patience = args.epochs + 1  # no early stop: both ways train every epoch
  config.compute_dtype = args.dtype
  config.progress = False
  config.strategy_options.lp_epochs = 1
  return config


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arch", default="resnet50")
  parser.add_argument("--strategy", default="ft")
  parser.add_argument("--lrs", default="1e-3,1e-4,1e-5")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--num_train", type=int, default=400, help="BACH has 400 images")
  parser.add_argument("--num_test", type=int, default=100)
  parser.add_argument("--size", type=int, default=224, help="center crop")
  parser.add_argument("--resize", type=int, default=232)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(),
                                                         "ftjax_bench_data"))
  parser.add_argument("--json", default=None, help="write the record here")
  args = parser.parse_args(argv)
  lrs = [float(x) for x in args.lrs.split(",")]
  seeds = [int(x) for x in args.seeds.split(",")]
  config = make_config(args)
  experiment.load(config)  # data prepared outside the timing
  runs = len(lrs) * len(seeds)

  with tempfile.TemporaryDirectory() as root:
    start = time.perf_counter()
    multirun.train_group(config, lrs, seeds, pathlib.Path(root) / "group")
    group_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for run_config in multirun.run_configs(config, lrs, seeds):
      training.train_and_evaluate(run_config, pathlib.Path(root) / "alone" /
                                  f"lr{run_config.lr:g}_seed{run_config.seed}")
    sequential_seconds = time.perf_counter() - start

  device = jax.devices()[0]
  record = {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "platform": device.platform, "device_kind": device.device_kind,
      "jax_version": jax.__version__, "arch": args.arch, "strategy": args.strategy,
      "runs": runs, "epochs": args.epochs, "num_train": args.num_train, "size": args.size,
      "batch": args.batch, "dtype": args.dtype,
      "multirun_seconds": group_seconds, "sequential_seconds": sequential_seconds,
      "multirun_runs_per_hour": 3600 * runs / group_seconds,
      "sequential_runs_per_hour": 3600 * runs / sequential_seconds,
      "ratio": sequential_seconds / group_seconds,
  }
  print(f"\n{args.arch} {args.strategy}, {runs} runs ({len(lrs)} lrs x {len(seeds)} seeds), "
        f"{args.epochs} epochs of {args.num_train} images at {args.size} px, batch "
        f"{args.batch}, {args.dtype}, {device.platform}: {device.device_kind}\n")
  print("| mode | wall s | finished runs / hour |")
  print("|---|---:|---:|")
  print(f"| multirun (vmap) | {group_seconds:.0f} | {record['multirun_runs_per_hour']:.1f} |")
  print(f"| sequential | {sequential_seconds:.0f} | "
        f"{record['sequential_runs_per_hour']:.1f} |")
  print(f"\nmultirun / sequential: {record['ratio']:.2f}x")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
  return record


if __name__ == "__main__":
  main()
