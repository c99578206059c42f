"""Training throughput: the jitted step, the input pipeline, and both together.

  python -m benchmarks.throughput --arch resnet50 --strategy ft --batch 64 --dtype bf16
  python -m benchmarks.throughput --suite paper --dtype bf16 --batch 64 --json out.json --markdown out.md
  python -m benchmarks.throughput --arch resnet50 --strategy ft --compare torch
  python -m benchmarks.throughput --stage data --dataset synthetic --data_dir /tmp/d
  python -m benchmarks.throughput --stage all --arch resnet50 --strategy ft --data_dir /tmp/d
  python -m benchmarks.throughput --smoke        # CPU, seconds: what the tests run

Stages (--stage):
  step  (default) `ftjax.step.make_train_step` of a strategy's phase on a
        random batch already on the device: what the device can do. --phase
        picks the phase: 'last' (default, the steady state), an index, or
        'all' (one compile and one record per phase).
  data  images/s of the training loader (`pipeline.make_loader`) over a
        prepared TFDS dataset; synthetic data is generated when missing.
  e2e   that loader feeding the step, each host batch handed to the step as
        `ftjax.train` does: what training gets.
  all   the three, and which of data and step bounds training.

How the step is timed. The executable comes from `jitted.lower(...).compile()`,
so tracing and compiling are timed on their own and never enter a step time.
After --warmup calls come two measurements of --steps steps each:
  * throughput: all steps dispatched back to back, one `block_until_ready` at
    the end, as the training loop runs (asynchronous dispatch hides the host's
    work); images/s, mean ms/step, TFLOP/s and MFU come from it;
  * spread: every step blocked on by itself; median, p10 and p90 ms/step.
    Each includes one host round trip, so they sit slightly above the mean.
Every step gets its own dropout key, made before the timing starts.

FLOPs per step are XLA's count for the compiled executable (`cost_analysis()`).
MFU = achieved TFLOP/s / the device's dense peak for the compute dtype: the
bf16 tensor-core peak for bf16, and for float32 the TF32 peak on GPUs that
have one (XLA computes float32 convolutions and matmuls in TF32 there by
default). Unknown devices (and CPUs) get no peak, hence no MFU.

Memory. `peak_bytes_in_use` is the device allocator's high-water mark for the
whole process (`device.memory_stats()`; CPUs have none): in a suite it never
goes down, so read it for the largest configuration. `compiled_bytes` is XLA's
static size of the step's buffers (arguments + outputs - donated + temporaries),
per configuration and on every backend.

Auto-RGN: its per-epoch work, the probe (`auto_rgn.make_probe`) and the
optimizer's re-creation (`auto_rgn.start_epoch`), is timed too and spread over
--steps-per-epoch steps.

Everything runs on one device, the first. With --compare torch the same step
runs in PyTorch in this process (see benchmarks/torch_step.py) from the same
converted weights, and the first step's loss of both is recorded as a check.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import os
import pathlib
import platform
import re
import statistics
import sys
import tempfile
import time
from typing import Any, Sequence

import flax
import jax
import jaxlib
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from ftjax import step as step_lib
from ftjax.models import registry
from ftjax.strategies import STRATEGIES, auto_rgn, get_strategy

PAPER_ARCHS = registry.PAPER_ARCHS
SMOKE_STRATEGIES = ("ft", "lp", "g_lf", "auto_rgn")
DTYPES = {"fp32": None, "bf16": jnp.bfloat16}
# Short XLA CPU compiles for --fast-compile (CI): the steps run slower.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# Dense (no structured sparsity) peak TFLOP/s: (fp32, tf32 tensor, bf16 tensor).
# From the vendors' datasheets, whose tensor-core figures are quoted with
# sparsity, i.e. twice these: NVIDIA H100 (SXM5: FP32 67, TF32 989, BF16 1979;
# PCIe: 51, 756, 1513; NVL: 60, 835, 1671), H200 (SXM: as H100 SXM5; NVL: as
# H100 NVL), A100 (SXM4 and PCIe, 40/80 GB: 19.5, 312, 624), L40S (91.6, 366,
# 733), L4 (30.3, 120, 242), A10 (31.2, 125, 250); V100 (SXM2: FP32 15.7) and T4
# (8.1) have no TF32 or BF16. Google Cloud TPU pages: v4 275, v5e 197, v5p 459,
# v6e (Trillium) 918 bf16 TFLOP/s per chip. The first matching pattern wins.
PEAK_TFLOPS: tuple[tuple[str, tuple[float | None, float | None, float | None]], ...] = (
    (r"H100.*PCIe", (51.0, 378.0, 756.0)),
    (r"H100.*NVL", (60.0, 417.5, 835.5)),
    (r"H100", (67.0, 494.7, 989.4)),
    (r"H200.*NVL", (60.0, 417.5, 835.5)),
    (r"H200", (67.0, 494.7, 989.4)),
    (r"A100", (19.5, 156.0, 312.0)),
    (r"L40S", (91.6, 183.0, 366.0)),
    (r"\bL4\b", (30.3, 60.0, 121.0)),
    (r"\bA10\b", (31.2, 62.5, 125.0)),
    (r"V100", (15.7, None, None)),
    (r"\bT4\b", (8.1, None, None)),
    (r"TPU v4", (None, None, 275.0)),
    (r"TPU v5 ?(lite|e)", (None, None, 197.0)),
    (r"TPU v5", (None, None, 459.0)),
    (r"TPU v6", (None, None, 918.0)),
)


def peak_tflops(device_kind: str, dtype: str) -> tuple[float | None, str | None]:
  """(dense peak TFLOP/s for `dtype`, which figure it is), or (None, None)."""
  for pattern, (fp32, tf32, bf16) in PEAK_TFLOPS:
    if re.search(pattern, device_kind, re.IGNORECASE):
      if dtype == "bf16":
        return bf16, "bf16 tensor" if bf16 else None
      if tf32 is not None:
        return tf32, "tf32 tensor (XLA's default float32 precision)"
      return fp32, "fp32" if fp32 else None
  return None, None


@dataclasses.dataclass(frozen=True)
class Settings:
  """What every configuration of one invocation shares."""

  batch: int = 64
  size: int = 224
  dtype: str = "fp32"
  steps: int = 20
  warmup: int = 3
  num_classes: int = 10
  multilabel: bool = False
  lr: float = 1e-3
  steps_per_epoch: int = 100
  fast_compile: bool = False
  seed: int = 0


# ------------------------------------------------------------------ helpers


def device_info() -> dict[str, Any]:
  """Where and with what the numbers were taken."""
  device = jax.devices()[0]
  return {
      "platform": device.platform, "device_kind": device.device_kind,
      "device_count": jax.device_count(), "host_cpu_count": os.cpu_count(),
      "host_machine": platform.machine(), "python_version": platform.python_version(),
      "jax_version": jax.__version__, "jaxlib_version": jaxlib.__version__,
      "flax_version": flax.__version__, "optax_version": optax.__version__,
      "numpy_version": np.__version__,
      # Others' work on a shared host slows every number down: say how busy it was.
      "host_load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
      "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def flops_of(compiled) -> float | None:
  """FLOPs from `cost_analysis()`, which is a dict, a list of dicts or None."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if analysis is None:
    return None
  if isinstance(analysis, dict):
    analysis = [analysis]
  total = sum(float(a.get("flops", 0.0)) for a in analysis if isinstance(a, dict))
  return total if total > 0 and math.isfinite(total) else None


def compiled_bytes(compiled) -> int | None:
  """XLA's static buffer size of one executable (donated arguments counted once)."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(stats, (list, tuple)):
    stats = stats[0] if stats else None
  if stats is None:
    return None
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             - stats.alias_size_in_bytes + stats.temp_size_in_bytes)


def peak_memory(device) -> tuple[int | None, str | None]:
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if not stats or "peak_bytes_in_use" not in stats:
    return None, f"memory_stats() has no peak_bytes_in_use on {device.platform}"
  return int(stats["peak_bytes_in_use"]), "process high-water mark"


def synthetic_batch(batch: int, size: int, num_classes: int, multilabel: bool,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """Normalised-looking NHWC float32 images and labels, as the loader yields them."""
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
  if multilabel:
    labels = (rng.random((batch, num_classes)) < 0.4).astype(np.float32)
  else:
    labels = rng.integers(0, num_classes, batch).astype(np.int32)
  return {"image": images, "label": labels}


def _percentile(values: Sequence[float], q: float) -> float:
  return float(np.percentile(np.asarray(values), q))


def _finite(x: Any) -> Any:
  """None for NaN/inf (not JSON), the value otherwise."""
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def phase_indices(spec: str, num_phases: int) -> list[int]:
  """--phase -> 0-based indices into the plan: 'last', 'all' or an index."""
  if spec == "last":
    return [num_phases - 1]
  if spec == "all":
    return list(range(num_phases))
  index = int(spec)
  if not 0 <= index < num_phases:
    raise ValueError(f"--phase {index}: this plan has {num_phases} phase(s), "
                     f"indices 0..{num_phases - 1}.")
  return [index]


# ------------------------------------------------------------------ step stage


def bench_step(arch_name: str, strategy_name: str, phase: int, settings: Settings,
               variables: dict[str, Any] | None = None,
               batch: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
  """Times the train step of one (arch, strategy, phase); returns its record."""
  s = settings
  arch = registry.get_arch(arch_name)
  strategy = get_strategy(strategy_name, arch, {"lr": s.lr})
  num_phases = len(strategy.plan.phases)
  trainable = strategy.plan.phases[phase].trainable
  model = arch.build(s.num_classes)
  loss = "sigmoid" if s.multilabel else "softmax"
  compute_dtype = DTYPES[s.dtype]
  options = FAST_COMPILE if s.fast_compile else None
  device = jax.devices()[0]
  if variables is None:
    variables = registry.init_variables(arch, s.seed, s.num_classes, s.size)
  host = batch if batch is not None else synthetic_batch(
      s.batch, s.size, s.num_classes, s.multilabel, s.seed)
  data = jax.device_put(host, device)
  state = jax.device_put(step_lib.create_train_state(strategy, variables), device)
  trainable_params = sum(int(np.size(x)) for name in trainable
                         for x in jax.tree_util.tree_leaves(state.params[name]))
  total_params = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(state.params))
  base = jax.random.key(s.seed)
  keys = [jax.random.fold_in(base, i) for i in range(s.warmup + 2 * s.steps)]
  jax.block_until_ready((data, state, keys))

  jitted = step_lib.make_train_step(model, strategy, trainable, loss=loss,
                                    compute_dtype=compute_dtype, compiler_options=options)
  start = time.perf_counter()
  lowered = jitted.lower(state, data, keys[0])
  trace_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  flops = flops_of(compiled)

  key_iter = iter(keys)
  start = time.perf_counter()
  state, metrics = compiled(state, data, next(key_iter))
  first_loss = float(metrics["loss"])
  first_step_s = time.perf_counter() - start
  for _ in range(s.warmup - 1):
    state, metrics = compiled(state, data, next(key_iter))
  jax.block_until_ready((state, metrics))

  start = time.perf_counter()
  for _ in range(s.steps):
    state, metrics = compiled(state, data, next(key_iter))
  jax.block_until_ready((state, metrics))
  loop_s = (time.perf_counter() - start) / s.steps

  times = []
  for _ in range(s.steps):
    start = time.perf_counter()
    state, metrics = compiled(state, data, next(key_iter))
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  last_loss = float(metrics["loss"])

  info = device_info()
  peak, peak_basis = peak_tflops(info["device_kind"], s.dtype)
  achieved = flops / loop_s / 1e12 if flops else None
  record: dict[str, Any] = {
      "stage": "step", **info,
      "arch": arch.name, "strategy": strategy.name, "phase": phase, "num_phases": num_phases,
      "trainable": sorted(trainable), "trainable_params": trainable_params,
      "total_params": total_params, "batch": s.batch, "size": s.size, "dtype": s.dtype,
      "num_classes": s.num_classes, "loss": loss, "lr": s.lr, "bn_mode": strategy.bn_mode,
      "steps": s.steps, "warmup": s.warmup, "fast_compile": s.fast_compile,
      "images_per_s": s.batch / loop_s, "ms_per_step": 1e3 * loop_s,
      "ms_per_step_median": 1e3 * statistics.median(times),
      "ms_per_step_p10": 1e3 * _percentile(times, 10),
      "ms_per_step_p90": 1e3 * _percentile(times, 90),
      "trace_s": trace_s, "compile_s": compile_s, "compile_total_s": trace_s + compile_s,
      "first_step_s": first_step_s, "flops_per_step": flops,
      "tflops_achieved": achieved, "peak_tflops": peak, "peak_basis": peak_basis,
      "mfu": achieved / peak if achieved and peak else None,
      "compiled_bytes": compiled_bytes(compiled),
      "first_loss": first_loss, "last_loss": last_loss,
      "loss_finite": bool(np.isfinite(first_loss) and np.isfinite(last_loss)),
  }
  if strategy.epoch_start is not None and strategy.epoch_start.batches:
    record.update(_bench_rgn_epoch(model, strategy, state, host, s, loss, compute_dtype,
                                   device))
    amortised = record["rgn_epoch_ms"] / s.steps_per_epoch
    record["rgn_amortised_ms_per_step"] = amortised
    record["ms_per_step_with_rgn"] = record["ms_per_step"] + amortised
    record["images_per_s_with_rgn"] = s.batch / (record["ms_per_step_with_rgn"] / 1e3)
  record["peak_bytes_in_use"], record["memory_note"] = peak_memory(device)
  del state, metrics, compiled, data
  return {k: _finite(v) for k, v in record.items()}


def _bench_rgn_epoch(model, strategy, state, host, s: Settings, loss, compute_dtype,
                     device) -> dict[str, Any]:
  """Auto-RGN's epoch start: the probe over `rgn_batches` minibatches, then a fresh Adam.

  Compiled at XLA's default level even with --fast-compile: at the lowest
  level the probe's scan runs ~20x slower than the steps it stands for.
  """
  probe = auto_rgn.make_probe(
      step_lib.grad_fn_factory(model, loss=loss, bn_mode=strategy.bn_mode,
                               compute_dtype=compute_dtype), rgn_bn=strategy.epoch_start.bn)
  count = strategy.epoch_start.batches
  batches = jax.device_put({k: np.stack([v] * count) for k, v in host.items()}, device)
  key = jax.random.key(s.seed + 1)
  start = time.perf_counter()
  weights = jax.block_until_ready(probe(state, batches, key))
  first_s = time.perf_counter() - start
  repeats = max(1, min(s.steps // 2, 3))
  probe_times = []
  for _ in range(repeats):
    start = time.perf_counter()
    weights = jax.block_until_ready(probe(state, batches, key))
    probe_times.append(time.perf_counter() - start)
  reset_times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fresh = jax.block_until_ready(auto_rgn.start_epoch(state, strategy.transform, weights))
    reset_times.append(time.perf_counter() - start)
    del fresh
  probe_ms = 1e3 * statistics.median(probe_times)
  reset_ms = 1e3 * statistics.median(reset_times)
  return {"rgn_batches": count, "steps_per_epoch": s.steps_per_epoch,
          "rgn_probe_ms": probe_ms, "rgn_probe_compile_s": max(first_s - probe_ms / 1e3, 0.0),
          "rgn_reset_ms": reset_ms, "rgn_epoch_ms": probe_ms + reset_ms}


# ------------------------------------------------------------------ data and e2e


def _data_config(args, arch: registry.Arch):
  import ml_collections  # pylint: disable=import-outside-toplevel
  from ftjax.data import get_dataset  # pylint: disable=import-outside-toplevel
  info = get_dataset(args.dataset)
  resize = args.resize or max(arch.preprocessing.resize, args.size)
  options = {}
  if info.name.startswith("synthetic"):
    options = {"num_train": args.num_train, "num_test": 16, "image_size": max(64, resize)}
  return ml_collections.ConfigDict({
      "dataset": args.dataset, "data_dir": args.data_dir, "resize": resize,
      "dataset_options": options})


def prepared_source(args, arch: registry.Arch):
  """(dataset info, builder, train source); synthetic data is generated when missing."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from ftjax.data.prepared import prepared_builder  # pylint: disable=import-outside-toplevel
  config = _data_config(args, arch)
  if config.resize < args.size:
    raise ValueError(f"--resize {config.resize} is smaller than the crop --size {args.size}.")
  tfds.disable_progress_bar()
  info, builder = prepared_builder(config, arch)
  return info, builder, builder.as_data_source("train")


def bench_data(args, arch: registry.Arch) -> dict[str, Any]:
  """images/s of the training loader: decode, crop, normalise, batch."""
  from benchmarks import data_throughput  # pylint: disable=import-outside-toplevel
  info, builder, source = prepared_source(args, arch)
  rate, images = data_throughput.measure(source, args.batch, args.workers, args.min_images,
                                         args.size)
  return {"stage": "data", **device_info(), "dataset": info.name,
          "data_config": builder.builder_config.name, "train_images": len(source),
          "batch": args.batch, "size": args.size, "workers": args.workers,
          "images_per_s": rate, "images_timed": images}


def bench_e2e(args, arch_name: str, strategy_name: str, phase: int,
              settings: Settings) -> dict[str, Any]:
  """The loader feeding the step as in `ftjax.train`: host batch -> device per step."""
  from ftjax import distributed, experiment  # pylint: disable=import-outside-toplevel
  from ftjax.data import pipeline  # pylint: disable=import-outside-toplevel
  s = settings
  arch = registry.get_arch(arch_name)
  info, _, source = prepared_source(args, arch)
  if len(source) < s.batch:
    raise ValueError(f"{info.name}: {len(source)} training images, fewer than one batch "
                     f"of {s.batch}.")
  strategy = get_strategy(strategy_name, arch, {"lr": s.lr})
  trainable = strategy.plan.phases[phase].trainable
  model = arch.build(info.num_classes)
  loss = "sigmoid" if info.multilabel else "softmax"
  parallel = distributed.DataParallel(jax.devices()[:1])
  train_step = step_lib.make_train_step(
      model, strategy, trainable, loss=loss, compute_dtype=DTYPES[s.dtype],
      compiler_options=FAST_COMPILE if s.fast_compile else None,
      shardings=parallel.shardings())
  variables = registry.init_variables(arch, s.seed, info.num_classes, s.size)
  state = parallel.replicate(step_lib.create_train_state(strategy, variables))

  def batches():
    for epoch in itertools.count():
      yield from pipeline.make_loader(source, s.batch, seed=s.seed, epoch=epoch, shuffle=True,
                                      drop_remainder=True, crop=s.size,
                                      num_workers=args.workers)

  stream = batches()
  key = jax.random.key(s.seed)

  def run(n, offset):
    nonlocal state
    metrics = None
    for i in range(n):
      host = experiment.train_batch(  # pylint: disable=protected-access
          next(stream), info.multilabel)
      batch = parallel.shard_batch(host)
      state, metrics = train_step(state, batch, jax.random.fold_in(key, offset + i))
    jax.block_until_ready((state, metrics))

  start = time.perf_counter()
  run(s.warmup, 0)
  warmup_s = time.perf_counter() - start
  start = time.perf_counter()
  run(s.steps, s.warmup)
  elapsed = time.perf_counter() - start
  return {"stage": "e2e", **device_info(), "arch": arch.name, "strategy": strategy.name,
          "phase": phase, "num_phases": len(strategy.plan.phases), "dataset": info.name,
          "batch": s.batch, "size": s.size, "dtype": s.dtype, "workers": args.workers,
          "steps": s.steps, "warmup": s.warmup, "warmup_s_with_compile": warmup_s,
          "images_per_s": s.batch * s.steps / elapsed, "ms_per_step": 1e3 * elapsed / s.steps}


# ------------------------------------------------------------------ torch comparison


def compare_torch(arch_name: str, strategy_name: str, phase: int, settings: Settings,
                  torch_compile: bool | None) -> dict[str, Any]:
  """ftjax and PyTorch steps from the same weights and batch; one merged record."""
  from benchmarks import torch_step  # pylint: disable=import-outside-toplevel
  from weights_port import mapping  # pylint: disable=import-outside-toplevel
  s = settings
  arch = registry.get_arch(arch_name)
  device = torch_step.default_device()
  model = torch_step.build_model(arch_name, s.num_classes, seed=s.seed, device=device)
  variables = mapping.torch_to_flax(arch, torch_step.state_dict_numpy(model))
  host = synthetic_batch(s.batch, s.size, s.num_classes, s.multilabel, s.seed)
  record = bench_step(arch_name, strategy_name, phase, s, variables=variables, batch=host)
  strategy = get_strategy(strategy_name, arch, {"lr": s.lr})
  result = torch_step.benchmark(
      arch_name, strategy, strategy.plan.phases[phase].trainable, host["image"], host["label"],
      num_classes=s.num_classes, steps=s.steps, warmup=s.warmup, dtype=s.dtype,
      multilabel=s.multilabel, compile=torch_compile, model=model, device=device)
  record.update(result)
  for mode in ("eager", "compile"):
    rate = result.get(f"torch_{mode}_images_per_s")
    record[f"ftjax_over_torch_{mode}"] = record["images_per_s"] / rate if rate else None
  torch_loss = result["torch_eager_first_loss"]
  record["first_loss_rel_diff"] = _finite(
      abs(record["first_loss"] - torch_loss) / max(abs(torch_loss), 1e-12))
  # VGG's dropout draws different masks in the two frameworks.
  record["first_loss_comparable"] = arch.family != "vgg"
  return record


# ------------------------------------------------------------------ reporting


def _fmt(x: Any, spec: str = ".1f", missing: str = "-") -> str:
  return missing if x is None else format(x, spec)


def _phase(r) -> str:
  return f"{r['phase'] + 1}/{r['num_phases']}"


def progress_line(r: dict[str, Any]) -> str:
  if r["stage"] == "data":
    return (f"data {r['dataset']} batch {r['batch']} crop {r['size']} workers {r['workers']}: "
            f"{r['images_per_s']:.1f} images/s")
  if r["stage"] == "e2e":
    return (f"e2e {r['arch']} {r['strategy']} phase {_phase(r)}: "
            f"{r['images_per_s']:.1f} images/s, {r['ms_per_step']:.1f} ms/step")
  line = (f"{r['arch']} {r['strategy']} phase {_phase(r)}: {r['images_per_s']:.1f} images/s, "
          f"{r['ms_per_step']:.1f} ms/step (median {r['ms_per_step_median']:.1f}, "
          f"p10 {r['ms_per_step_p10']:.1f}, p90 {r['ms_per_step_p90']:.1f}), "
          f"compile {r['compile_total_s']:.1f} s")
  if r["flops_per_step"]:
    line += f", {r['flops_per_step'] / 1e9:.2f} GFLOP/step"
  if r.get("rgn_amortised_ms_per_step") is not None:
    line += (f", RGN probe {r['rgn_probe_ms']:.1f} ms/epoch "
             f"(+{r['rgn_amortised_ms_per_step']:.2f} ms/step)")
  if r.get("torch_eager_images_per_s"):
    line += f"; torch eager {r['torch_eager_images_per_s']:.1f} images/s"
  if r.get("torch_compile_images_per_s"):
    line += f", torch.compile {r['torch_compile_images_per_s']:.1f} images/s"
  if r.get("torch_compile_error"):
    line += f", torch.compile failed ({r['torch_compile_error'][:80]})"
  return line


def _table(header: Sequence[str], align: Sequence[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def _gib(n: int | None) -> float | None:
  return None if n is None else n / 2**30


def step_table(records: list[dict[str, Any]]) -> str:
  """One row per timed (arch, strategy, phase)."""
  torch = any("torch_eager_images_per_s" in r for r in records)
  rgn = any(r.get("rgn_amortised_ms_per_step") is not None for r in records)
  header = ["arch", "strategy", "phase", "trainable modules", "batch", "px", "dtype", "images/s",
            "ms/step", "median [p10, p90]", "compile s", "GFLOP/step", "TFLOP/s", "MFU",
            "peak mem GiB", "XLA buffers GiB"]
  if rgn:
    header += ["RGN probe ms/epoch", "+ms/step"]
  if torch:
    header += ["torch eager img/s", "torch.compile img/s", "ftjax/eager", "ftjax/compile",
               "loss rel diff"]
  rows = []
  for r in records:
    row = [r["arch"], r["strategy"], _phase(r), str(len(r["trainable"])),
           str(r["batch"]), str(r["size"]), r["dtype"], _fmt(r["images_per_s"]),
           _fmt(r["ms_per_step"]),
           f"{r['ms_per_step_median']:.1f} [{r['ms_per_step_p10']:.1f}, "
           f"{r['ms_per_step_p90']:.1f}]",
           _fmt(r["compile_total_s"]),
           _fmt(None if r["flops_per_step"] is None else r["flops_per_step"] / 1e9, ".2f"),
           _fmt(r["tflops_achieved"], ".3f"), _fmt(r["mfu"], ".1%"),
           _fmt(_gib(r["peak_bytes_in_use"]), ".2f"), _fmt(_gib(r["compiled_bytes"]), ".2f")]
    if rgn:
      row += [_fmt(r.get("rgn_probe_ms")), _fmt(r.get("rgn_amortised_ms_per_step"), ".2f")]
    if torch:
      row += [_fmt(r.get("torch_eager_images_per_s")),
              _fmt(r.get("torch_compile_images_per_s"),
                   missing="failed" if r.get("torch_compile_error") else "-"),
              _fmt(r.get("ftjax_over_torch_eager"), ".2f"),
              _fmt(r.get("ftjax_over_torch_compile"), ".2f"),
              _fmt(r.get("first_loss_rel_diff"), ".1e")]
    rows.append(row)
  return _table(header, ["l"] * 4 + ["r"] * (len(header) - 4), rows)


def derived_lines(records: list[dict[str, Any]]) -> list[str]:
  """LP/FT and Auto-RGN/FT per arch, compiles of the gradual plans, the bottleneck."""
  steps = [r for r in records if r["stage"] == "step"]
  last = {(r["arch"], r["strategy"]): r for r in steps if r["phase"] == r["num_phases"] - 1}
  lines = []
  for arch in dict.fromkeys(r["arch"] for r in steps):
    ft, lp, rgn = (last.get((arch, n)) for n in ("ft", "lp", "auto_rgn"))
    if ft and lp:
      lines.append(f"LP/FT throughput, {arch}: {lp['images_per_s'] / ft['images_per_s']:.2f}x "
                   f"({lp['images_per_s']:.1f} vs {ft['images_per_s']:.1f} images/s)")
    if ft and rgn and rgn.get("ms_per_step_with_rgn"):
      slowdown = rgn["ms_per_step_with_rgn"] / ft["ms_per_step"]
      lines.append(
          f"Auto-RGN vs FT step time, {arch}: {slowdown:.2f}x "
          f"(step alone {rgn['ms_per_step'] / ft['ms_per_step']:.2f}x; probe + Adam re-creation "
          f"{rgn['rgn_epoch_ms']:.1f} ms per epoch over {rgn['steps_per_epoch']} steps)")
    for name in ("g_lf", "g_fl"):
      timed = sorted((r for r in steps if r["arch"] == arch and r["strategy"] == name),
                     key=lambda r: r["phase"])
      if not timed:
        continue
      n = timed[0]["num_phases"]
      per_phase = ", ".join(f"{r['compile_total_s']:.1f}" for r in timed)
      scope = ("every phase" if len(timed) == n else
               f"phase(s) {', '.join(_phase(r) for r in timed)} timed; --phase all times each")
      lines.append(f"{name.upper().replace('_', '-')}, {arch}: {n} phases -> {n} step compiles "
                   f"in training, one per phase; compile s per timed phase: {per_phase} ({scope})")
  for r in steps:
    if r.get("torch_eager_images_per_s"):
      text = (f"ftjax / torch, {r['arch']} {r['strategy']} phase {_phase(r)}: "
              f"eager {r['ftjax_over_torch_eager']:.2f}x")
      if r.get("ftjax_over_torch_compile"):
        text += f", torch.compile {r['ftjax_over_torch_compile']:.2f}x"
      elif r.get("torch_compile_error"):
        text += ", torch.compile failed"
      elif not r.get("torch_compile_requested"):
        text += ", torch.compile not run (--torch-compile)"
      lines.append(text + f"; first-step loss {r['first_loss']:.6f} vs "
                   f"{r['torch_eager_first_loss']:.6f}")
  data = [r for r in records if r["stage"] == "data"]
  for r in (r for r in records if r["stage"] == "e2e"):
    step_rate = last.get((r["arch"], r["strategy"]), {}).get("images_per_s")
    if data and step_rate:
      data_rate = data[0]["images_per_s"]
      which = "the input pipeline" if data_rate < step_rate else "the train step"
      lines.append(f"Bottleneck, {r['arch']} {r['strategy']}: {which} (data "
                   f"{data_rate:.1f}, step {step_rate:.1f}, end to end "
                   f"{r['images_per_s']:.1f} images/s)")
  return lines


def markdown(records: list[dict[str, Any]]) -> str:
  parts = []
  if records:
    r = records[0]
    parts.append(f"{r['platform']}: {r['device_kind']} ({r['device_count']} device(s), "
                 f"{r['host_cpu_count']} host CPUs), jax {r['jax_version']}, flax "
                 f"{r['flax_version']}, optax {r['optax_version']}, {r['date_utc']}")
  steps = [r for r in records if r["stage"] == "step"]
  if steps:
    parts.append(step_table(steps))
  data = [r for r in records if r["stage"] == "data"]
  if data:
    parts.append(_table(["dataset", "config", "batch", "crop", "workers", "images/s"],
                        ["l", "l", "r", "r", "r", "r"],
                        [[r["dataset"], r["data_config"], str(r["batch"]), str(r["size"]),
                          str(r["workers"]), _fmt(r["images_per_s"])] for r in data]))
  e2e = [r for r in records if r["stage"] == "e2e"]
  if e2e:
    parts.append(_table(["arch", "strategy", "phase", "dataset", "batch", "px", "dtype",
                         "workers", "images/s", "ms/step"], ["l"] * 4 + ["r"] * 6,
                        [[r["arch"], r["strategy"], _phase(r), r["dataset"], str(r["batch"]),
                          str(r["size"]), r["dtype"], str(r["workers"]),
                          _fmt(r["images_per_s"]), _fmt(r["ms_per_step"])] for r in e2e]))
  lines = derived_lines(records)
  if lines:
    parts.append("\n".join(f"- {line}" for line in lines))
  return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------ command line


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
  p.add_argument("--suite", choices=("paper",),
                 help=f"paper: {', '.join(PAPER_ARCHS)} x all {len(STRATEGIES)} strategies "
                      "(--arch / --strategy narrow it)")
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
  p.add_argument("--workers", type=_positive("--workers", 0), default=0,
                 help="grain worker processes")
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
  if args.suite == "paper":
    defaults.update(arch=list(PAPER_ARCHS), strategy=list(STRATEGIES))
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
      report(bench_data(args, registry.get_arch(args.arch[0])))
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


if __name__ == "__main__":
  main()
