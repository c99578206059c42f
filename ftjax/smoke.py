"""python -m ftjax.smoke: a self-contained check that the model zoo runs here.

Builds the paper's architectures with random weights (no downloads), prints
their parameter blocks, then fine-tunes a small ResNet for a few Adam steps on a
fixed random batch and shows the training loss falling.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from ftjax import step
from ftjax.models import registry
from ftjax.strategies import get_strategy


def describe(arch_name: str) -> str:
  arch = registry.get_arch(arch_name)
  counts = registry.block_param_counts(arch)
  blocks = " | ".join(f"{name} {count / 1e6:.2f}M" for name, count in counts.items())
  return (f"{arch.name:<12} {registry.param_count(arch):>12,} params, "
          f"{len(arch.blocks)} blocks: {blocks}")


def overfit(arch_name: str, steps: int, batch: int, size: int, num_classes: int,
            seed: int = 0) -> list[float]:
  """FT with Adam on one random batch: the loss must fall if forward and backward work."""
  arch = registry.get_arch(arch_name)
  strategy = get_strategy("ft", arch, {"lr": 1e-3})
  train_step = step.make_train_step(arch.build(num_classes), strategy,
                                    strategy.plan.phases[0].trainable)
  state = step.create_train_state(
      strategy, registry.init_variables(arch, seed, num_classes, size))
  rng = np.random.default_rng(seed)
  data = {"image": jnp.asarray(rng.standard_normal((batch, size, size, 3), dtype=np.float32)),
          "label": jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32)}
  losses = []
  for i in range(steps):
    state, metrics = train_step(state, data, jax.random.key(i))
    losses.append(float(metrics["loss"]))
  return losses


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m ftjax.smoke", description=__doc__)
  parser.add_argument("--arch", default="resnet18", choices=list(registry.ARCHS),
                      metavar="ARCH", help="model to fine-tune (default resnet18)")
  parser.add_argument("--steps", type=int, default=15)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, default=64, help="image side in pixels")
  args = parser.parse_args(argv)

  print(f"JAX {jax.__version__} on {jax.devices()[0].platform}: "
        f"{len(jax.devices())} device(s)\n")
  for name in registry.PAPER_ARCHS:
    print(describe(name))
  print(f"\nFine-tuning a randomly initialised {args.arch} on one random batch "
        f"({args.batch} images, {args.size} px, 4 classes) with Adam 1e-3:")
  start = time.perf_counter()
  losses = overfit(args.arch, args.steps, args.batch, args.size, num_classes=4)
  elapsed = time.perf_counter() - start
  for i in sorted({0, len(losses) // 2, len(losses) - 1}):
    print(f"  step {i + 1:>3}: loss {losses[i]:.4f}")
  verdict = "falls" if losses[-1] < 0.5 * losses[0] else "does NOT fall: something is wrong"
  print(f"Loss {verdict} ({losses[0]:.3f} -> {losses[-1]:.3f}) in {elapsed:.1f} s "
        f"including compilation.")


def cli() -> None:
  """The console script's entry point (pyproject.toml); also `python -m`."""
  main()


if __name__ == "__main__":
  cli()
