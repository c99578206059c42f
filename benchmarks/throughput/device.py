"""The device a figure was taken on: its kind, versions, peak TFLOP/s, FLOPs and memory."""

from __future__ import annotations

import datetime
import math
import os
import platform
import re
from typing import Any

import flax
import jax
import jaxlib
import numpy as np
import optax


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
