"""Train-step time of LP vs FT: LP differentiates the head only.

  python -m benchmarks.step_lp_vs_ft --arch resnet50 --batch 8 --size 64 --steps 10

Times the jitted step (after a warm-up call that compiles it) on whatever
device JAX sees and prints a Markdown table: median ms/step and images/s.
Random weights and inputs; only the speed is measured.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from ftjax import step as step_lib
from ftjax.models import get_arch, init_variables
from ftjax.strategies import get_strategy


def time_strategy(name: str, arch_name: str, batch: int, size: int, steps: int,
                  num_classes: int, compute_dtype=None) -> dict[str, float]:
  arch = get_arch(arch_name)
  model = arch.build(num_classes)
  variables = init_variables(arch, 0, num_classes, size)
  strategy = get_strategy(name, arch)
  trainable = strategy.plan.phases[0].trainable
  train_step = step_lib.make_train_step(model, strategy, trainable,
                                        compute_dtype=compute_dtype)
  state = step_lib.create_train_state(strategy, variables)
  rng = np.random.default_rng(0)
  data = {"image": jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32)}
  key = jax.random.key(0)
  start = time.perf_counter()
  state, metrics = train_step(state, data, key)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = train_step(state, data, key)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return {"ms": 1e3 * median, "img_s": batch / median, "compile_s": compile_s}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arch", default="resnet50")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--num-classes", type=int, default=10)
  parser.add_argument("--bf16", action="store_true", help="bfloat16 compute")
  args = parser.parse_args(argv)
  dtype = jnp.bfloat16 if args.bf16 else None
  rows = {name: time_strategy(name, args.arch, args.batch, args.size, args.steps,
                              args.num_classes, dtype) for name in ("lp", "ft")}
  device = jax.devices()[0]
  print(f"{args.arch}, batch {args.batch}, {args.size} px, "
        f"{'bf16' if args.bf16 else 'fp32'}, {args.steps} timed steps, "
        f"{device.platform}: {device.device_kind}\n")
  print("| strategy | ms/step (median) | images/s | compile s |")
  print("|---|---:|---:|---:|")
  for name, row in rows.items():
    print(f"| {name} | {row['ms']:.1f} | {row['img_s']:.1f} | {row['compile_s']:.1f} |")
  print(f"\nFT / LP step time: {rows['ft']['ms'] / rows['lp']['ms']:.2f}x")


if __name__ == "__main__":
  main()
