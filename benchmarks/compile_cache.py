"""Compile seconds of a small sweep with and without the shared compilation cache.

  python -m benchmarks.compile_cache --workdir /tmp/compile_cache_bench

The tiny synthetic sweep of the tests (ResNet-18 at 32 px, 96 training images,
one epoch), `--strategies` x `--lrs` x `--seeds`, each run in a process of its
own as a job-array task or a subprocess run is, one after another: once with no
persistent cache, once sharing a fresh one (ftjax.compile_cache). Each run
reports XLA's compile seconds (loading from the cache included), its cache hits
and misses and its wall time. Prints a Markdown table; --json writes the records.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

CHILD = "--child"


def sweep_config(args) -> "object":
  from configs import sweep_demo  # pylint: disable=import-outside-toplevel
  config = sweep_demo.get_config()
  base = config.base
  base.data_dir = str(pathlib.Path(args.workdir) / "data")
  base.dataset_options.num_train, base.dataset_options.num_test = 96, 48
  base.resize, base.crop = 36, 32
  base.batch_size, base.eval_batch_size = 16, 32
  base.num_epochs = 1
  base.progress = False
  config.strategies = tuple(args.strategies.split(","))
  config.lrs = tuple(float(v) for v in args.lrs.split(","))
  config.seeds = tuple(int(v) for v in args.seeds.split(","))
  return config


def child(run_config: str, run_dir: str, cache_dir: str) -> None:
  """One run in this process; prints its compile record as the last line."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from ftjax import compile_cache  # pylint: disable=import-outside-toplevel
  from ftjax.engine import training  # pylint: disable=import-outside-toplevel
  if cache_dir:
    compile_cache.enable(pathlib.Path(cache_dir))
  stats = compile_cache.watch()
  start = time.perf_counter()
  config = ml_collections.ConfigDict(json.loads(pathlib.Path(run_config).read_text()))
  training.train_and_evaluate(config, run_dir)
  print(json.dumps({**stats.to_json(), "wall_seconds": time.perf_counter() - start}))


def run_all(args, config, label: str, cache_dir: pathlib.Path | None) -> list[dict]:
  from ftjax import sweep  # pylint: disable=import-outside-toplevel
  records = []
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  env["JAX_PLATFORMS"] = "cpu"
  for spec in sweep.grid(config):
    run_dir = pathlib.Path(args.workdir) / label / spec.name
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir.parent / f"{run_dir.name}.json"
    config_path.write_text(spec.config(config.base).to_json_best_effort())
    out = subprocess.run([sys.executable, "-m", "benchmarks.compile_cache", CHILD,
                          str(config_path), str(run_dir), str(cache_dir or "")],
                         capture_output=True, text=True, env=env, check=True)
    record = json.loads(out.stdout.strip().splitlines()[-1])
    records.append({"cache": label, "run": spec.name, **record})
    print(f"{label:8s} {spec.name}: {record['compile_seconds']:.1f} s compiling, "
          f"{record['hits']} hits, {record['misses']} misses", file=sys.stderr, flush=True)
  return records


def markdown(records: list[dict]) -> str:
  lines = ["| cache | run | compile s | hits | misses | wall s |", "|---|---|---:|---:|---:|---:|"]
  for r in records:
    lines.append(f"| {r['cache']} | {r['run']} | {r['compile_seconds']:.1f} | {r['hits']} | "
                 f"{r['misses']} | {r['wall_seconds']:.1f} |")
  for label in ("none", "shared"):
    mine = [r for r in records if r["cache"] == label]
    lines.append(f"| **{label}: total** | {len(mine)} runs | "
                 f"**{sum(r['compile_seconds'] for r in mine):.1f}** | "
                 f"{sum(r['hits'] for r in mine)} | {sum(r['misses'] for r in mine)} | "
                 f"{sum(r['wall_seconds'] for r in mine):.1f} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--strategies", default="ft,lp")
  parser.add_argument("--lrs", default="1e-3")
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--json", help="write the records here")
  args = parser.parse_args(argv)
  config = sweep_config(args)
  records = run_all(args, config, "none", None)
  records += run_all(args, config, "shared", pathlib.Path(args.workdir) / "shared_cache")
  print(markdown(records))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
  if len(sys.argv) == 5 and sys.argv[1] == CHILD:
    child(*sys.argv[2:])
  else:
    main()
