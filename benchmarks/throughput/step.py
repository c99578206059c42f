"""The step stage: `ftjax.step.make_train_step` of a strategy's phase on a batch already on the device."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ftjax import step as step_lib
from benchmarks.throughput.device import (compiled_bytes, device_info, flops_of, peak_memory,
                                         peak_tflops)
from ftjax.models import registry
from ftjax.strategies import auto_rgn, get_strategy

PAPER_ARCHS = registry.PAPER_ARCHS
SMOKE_STRATEGIES = ("ft", "lp", "g_lf", "auto_rgn")
DTYPES = {"fp32": None, "bf16": jnp.bfloat16}
# Short XLA CPU compiles for --fast-compile (CI): the steps run slower.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


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


def finite_or_none(x: Any) -> Any:
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
  return {k: finite_or_none(v) for k, v in record.items()}


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
