"""Training throughput: the jitted step, the input pipeline, and both together.

  python -m benchmarks.throughput --arch resnet50 --strategy ft --batch 64 --dtype bf16
  python -m benchmarks.throughput --suite paper --dtype bf16 --batch 64 --json out.json --markdown out.md
  python -m benchmarks.throughput --arch resnet50 --strategy ft --compare torch
  python -m benchmarks.throughput --stage data --dataset synthetic --data_dir /tmp/d
  python -m benchmarks.throughput --stage all --arch resnet50 --strategy ft --data_dir /tmp/d
  python -m benchmarks.throughput --smoke        # CPU, seconds: what the tests run

The command line: flags, the defaults of a plain and of a --smoke run, the stages
in order. What each stage measures and how: `benchmarks.throughput`'s docstring.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys
import tempfile
from typing import Any, Sequence

import tqdm

from benchmarks.throughput.data import bench_data
from benchmarks.throughput.device import device_info
from benchmarks.throughput.e2e import bench_e2e
from benchmarks.throughput.report import markdown, progress_line
from benchmarks.throughput.step import (DTYPES, PAPER_ARCHS, SMOKE_STRATEGIES, Settings,
                                        bench_step, phase_indices)
from benchmarks.throughput.torch_compare import compare_torch
from ftjax.models import registry
from ftjax.strategies import STRATEGIES, get_strategy

def _positive(name: str, minimum: int = 1):
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
    if value < minimum:
      raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {value}")
    return value
  return parse


def _positive_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
  if not value > 0 or not math.isfinite(value):
    raise argparse.ArgumentTypeError(f"must be positive, got {text}")
  return value


def _arch_name(text: str) -> str:
  try:
    return registry.get_arch(text).name
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def _strategy_name(text: str) -> str:
  if text not in STRATEGIES:
    raise argparse.ArgumentTypeError(
        f"unknown strategy {text!r}; valid names: {', '.join(STRATEGIES)}")
  return text


def _phase_spec(text: str) -> str:
  if text in ("last", "all"):
    return text
  try:
    if int(text) >= 0:
      return str(int(text))
  except ValueError:
    pass
  raise argparse.ArgumentTypeError(f"--phase must be 'last', 'all' or an index >= 0, got {text!r}")


# The architectures of each --suite: the paper's CNNs, and the families compared today.
SUITES = {"paper": tuple(PAPER_ARCHS),
          "modern": ("vit_b_16", "vit_base_patch14_dinov2", "convnext_tiny", "efficientnet_b0")}
# Defaults of a plain run, and of --smoke (CPU, seconds); explicit flags win over both.
_DEFAULTS = dict(arch=["resnet50"], strategy=["ft"], batch=64, size=224, steps=20, warmup=3,
                 phase="last", steps_per_epoch=100, fast_compile=False, num_train=1024)
_SMOKE = dict(arch=["resnet18"], strategy=list(SMOKE_STRATEGIES), batch=4, size=32, steps=3,
              warmup=1, phase="all", steps_per_epoch=10, fast_compile=True, num_train=32)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m benchmarks.throughput", description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="\n".join(__doc__.splitlines()[1:9]))
  p.add_argument("--stage", choices=("step", "data", "e2e", "all"), default="step")
  p.add_argument("--suite", choices=tuple(SUITES),
                 help=f"paper: {', '.join(SUITES['paper'])}; modern: "
                      f"{', '.join(SUITES['modern'])}; each x all {len(STRATEGIES)} "
                      "strategies (--arch / --strategy narrow it)")
  p.add_argument("--smoke", action="store_true",
                 help="tiny CPU run: resnet18, 32 px, batch 4, 3 steps, "
                      f"{', '.join(SMOKE_STRATEGIES)}, every phase")
  p.add_argument("--arch", nargs="+", type=_arch_name, help="default resnet50")
  p.add_argument("--strategy", nargs="+", type=_strategy_name,
                 help=f"default ft; any of {', '.join(STRATEGIES)}")
  p.add_argument("--phase", type=_phase_spec,
                 help="'last' (default: the steady state), 'all', or a 0-based phase index")
  p.add_argument("--batch", type=_positive("--batch"))
  p.add_argument("--size", type=_positive("--size", 32), help="image side in px (>= 32)")
  p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32",
                 help="compute dtype; parameters stay float32")
  p.add_argument("--steps", type=_positive("--steps"), help="timed steps per measurement")
  p.add_argument("--warmup", type=_positive("--warmup"),
                 help="untimed steps after compiling, the first one included")
  p.add_argument("--steps-per-epoch", "--steps_per_epoch", dest="steps_per_epoch",
                 type=_positive("--steps-per-epoch"),
                 help="spreads Auto-RGN's per-epoch probe (default 100)")
  p.add_argument("--num-classes", "--num_classes", dest="num_classes",
                 type=_positive("--num-classes", 2), default=10)
  p.add_argument("--multilabel", action="store_true", help="sigmoid/BCE instead of softmax/CE")
  p.add_argument("--lr", type=_positive_float, default=1e-3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--fast-compile", "--fast_compile", dest="fast_compile",
                 action=argparse.BooleanOptionalAction,
                 help="XLA's cheapest optimisation level (CI; slower steps)")
  p.add_argument("--compare", choices=("torch",), help="also time the step in PyTorch")
  p.add_argument("--torch-compile", "--torch_compile", dest="torch_compile",
                 action=argparse.BooleanOptionalAction,
                 help="also time torch.compile (default: on with CUDA, off on CPU)")
  p.add_argument("--dataset", default="synthetic", help="data/e2e stages")
  p.add_argument("--data_dir", "--data-dir", dest="data_dir",
                 default=os.path.join(tempfile.gettempdir(), "ftjax_bench"))
  p.add_argument("--resize", type=_positive("--resize", 0), default=0,
                 help="prepare-time shorter side; 0: the arch's (at least --size)")
  p.add_argument("--workers", nargs="+", type=_positive("--workers", 0), default=[0],
                 help="grain worker processes: the data stage measures each count, e2e "
                      "uses the last")
  p.add_argument("--min_images", "--min-images", dest="min_images",
                 type=_positive("--min_images"), default=1024, help="data stage")
  p.add_argument("--num_train", "--num-train", dest="num_train",
                 type=_positive("--num_train"), help="synthetic training images (default 1024)")
  p.add_argument("--json", type=pathlib.Path, help="write the records here")
  p.add_argument("--markdown", type=pathlib.Path, help="write the Markdown report here")
  return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = build_parser()
  args = parser.parse_args(argv)
  defaults = dict(_SMOKE if args.smoke else _DEFAULTS)
  if args.suite:
    defaults.update(arch=list(SUITES[args.suite]), strategy=list(STRATEGIES))
  for key, value in defaults.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  if args.stage in ("data", "all") and args.min_images < args.batch:
    args.min_images = args.batch
  if args.compare == "torch":
    if args.stage not in ("step", "all"):
      parser.error("--compare torch times the step: use it with --stage step or all.")
    try:
      from benchmarks import torch_step  # pylint: disable=import-outside-toplevel
      torch_step.import_torch()
    except ImportError as e:
      parser.error(str(e))
  for name in args.strategy:
    for arch in args.arch:
      try:
        phase_indices(args.phase, len(get_strategy(name, arch).plan.phases))
      except ValueError as e:
        parser.error(f"{name} on {arch}: {e}")
  return args


def settings_of(args) -> Settings:
  return Settings(batch=args.batch, size=args.size, dtype=args.dtype, steps=args.steps,
                  warmup=args.warmup, num_classes=args.num_classes,
                  multilabel=args.multilabel, lr=args.lr,
                  steps_per_epoch=args.steps_per_epoch, fast_compile=args.fast_compile,
                  seed=args.seed)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """Runs the benchmark; returns the records (also written with --json)."""
  args = parse_args(argv)
  if args.compare == "torch":
    # Both frameworks share the GPU: JAX must not grab most of it up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  settings = settings_of(args)
  if args.stage in ("data", "e2e", "all"):
    from ftjax.data import get_dataset  # pylint: disable=import-outside-toplevel
    try:
      info = get_dataset(args.dataset)
    except ValueError as e:
      raise SystemExit(f"error: {e}") from None
    if args.stage == "all":  # the step stage then trains the dataset's head and loss
      settings = dataclasses.replace(settings, num_classes=info.num_classes,
                                     multilabel=info.multilabel)
  records: list[dict[str, Any]] = []
  info = device_info()
  print(f"{info['platform']}: {info['device_kind']}, {info['device_count']} device(s), "
        f"{info['host_cpu_count']} host CPUs, jax {info['jax_version']}; "
        f"batch {settings.batch}, {settings.size} px, {settings.dtype}", flush=True)

  def report(record, bar=None):
    records.append(record)
    line = progress_line(record)
    if bar is not None and not bar.disable:
      bar.write(line)
    else:
      print(line, flush=True)
    sys.stdout.flush()

  if args.stage in ("data", "all"):
    try:
      for workers in args.workers:
        report(bench_data(args, registry.get_arch(args.arch[0]), workers))
    except (ValueError, OSError) as e:
      raise SystemExit(f"error: data stage: {e}") from None
  configs = [(a, n) for a in args.arch for n in args.strategy]
  if args.stage in ("step", "all"):
    bar = tqdm.tqdm(configs, desc="configurations", unit="config", disable=None,
                    leave=False, file=sys.stderr)
    variables_cache: dict[str, Any] = {}
    for arch_name, name in bar:
      bar.set_postfix_str(f"{arch_name} {name}")
      phases = phase_indices(args.phase, len(get_strategy(name, arch_name).plan.phases))
      for phase in phases:
        if args.compare == "torch":
          record = compare_torch(arch_name, name, phase, settings, args.torch_compile)
        else:
          if arch_name not in variables_cache:
            variables_cache.clear()  # one architecture's weights at a time
            variables_cache[arch_name] = registry.init_variables(
                arch_name, settings.seed, settings.num_classes, settings.size)
          record = bench_step(arch_name, name, phase, settings, variables_cache[arch_name])
        report(record, bar)
    bar.close()
  if args.stage in ("e2e", "all"):
    for arch_name, name in configs:
      phases = phase_indices(args.phase, len(get_strategy(name, arch_name).plan.phases))
      for phase in phases:
        try:
          report(bench_e2e(args, arch_name, name, phase, settings))
        except ValueError as e:
          raise SystemExit(f"error: e2e stage: {e}") from None

  text = markdown(records)
  print("\n" + text, end="", flush=True)
  if args.json:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(records, indent=1) + "\n")
  if args.markdown:
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(text)
  return records
