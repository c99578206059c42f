"""The e2e stage: the loader feeding the step as `ftjax.train` does."""

from __future__ import annotations

import itertools
import time
from typing import Any

import jax

from ftjax import step as step_lib
from benchmarks.throughput.data import prepared_source
from benchmarks.throughput.device import device_info
from benchmarks.throughput.step import DTYPES, FAST_COMPILE, Settings
from ftjax.models import registry
from ftjax.strategies import get_strategy

def bench_e2e(args, arch_name: str, strategy_name: str, phase: int,
              settings: Settings) -> dict[str, Any]:
  """The loader feeding the step as in `ftjax.train`: host batch -> device per step."""
  from ftjax import distributed  # pylint: disable=import-outside-toplevel
  from ftjax.engine import experiment  # pylint: disable=import-outside-toplevel
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
                                      num_workers=args.workers[-1])

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
          "batch": s.batch, "size": s.size, "dtype": s.dtype, "workers": args.workers[-1],
          "steps": s.steps, "warmup": s.warmup, "warmup_s_with_compile": warmup_s,
          "images_per_s": s.batch * s.steps / elapsed, "ms_per_step": 1e3 * elapsed / s.steps}
