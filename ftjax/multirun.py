"""Several runs of one dataset x arch x strategy trained at once, in one compiled step.

  python -m ftjax.multirun --config configs/base.py:bach,ft --seeds 0,1,2 \
      --lrs 1e-3,1e-4,1e-5 --workdir runs

A small dataset (BACH has 400 images) leaves a GPU mostly idle with one run at
batch 64. Here the runs' parameters, BatchNorm statistics and optimizer states
are stacked along a leading run axis and the train step is `jax.vmap`ped over
it, so one compiled step advances every run. Each run keeps everything that
makes it that run: its initial weights and data order (its seed), its dropout
keys, its learning rate (the optax transform is built inside the vmapped step
from the run's traced lr), its Auto-RGN probe, its early stopping and best
epoch. Results equal separate `ftjax.train` runs to float32 rounding
(tests/test_multirun.py).

Each run gets the files of an ordinary run in
<workdir>/<dataset>/<arch>/<strategy>/lr<lr>/seed<seed>/ (config.json,
metrics.jsonl, rgn.jsonl, best checkpoint, results.json), so `ftjax.sweep`
sees them as done and `ftjax.report` reads them. The stacked state is
checkpointed every epoch in <...>/<strategy>/multirun/<lrs>_<seeds>/ and a
rerun resumes there. A run that stops early (or diverges) stops being
evaluated; its rows are still computed until every run has stopped. One
device: the runs, not the batch, are what is parallel here.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import sys
import time
from typing import Any, Sequence

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import tqdm

from ftjax import checkpoints, cli_flags, distributed, evaluation, step, train
from ftjax import run as run_lib
from ftjax.data import DataError
from ftjax.logging_utils import MetricWriter
from ftjax.models import registry
from ftjax.strategies import get_strategy


@dataclasses.dataclass
class Run:
  """One member of the group: its config, workdir and bookkeeping."""

  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  loop: dict[str, Any]
  diverged: str | None = None

  @property
  def active(self) -> bool:
    return not (self.loop["stopped_early"] or self.diverged or self.finished)

  @property
  def finished(self) -> bool:
    return self.loop["epoch"] >= self.config.num_epochs


def run_configs(config: ml_collections.ConfigDict, lrs: Sequence[float],
                seeds: Sequence[int]) -> list[ml_collections.ConfigDict]:
  """One config per (lr, seed), lr-major: the runs of the group."""
  if not lrs or not seeds:
    raise ValueError("multirun needs at least one learning rate and one seed.")
  configs = []
  for lr, seed in itertools.product(lrs, seeds):
    run_config = ml_collections.ConfigDict(config.to_dict())
    run_config.lr, run_config.seed = float(lr), int(seed)
    configs.append(run_config)
  return configs


def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree: Any, index: int) -> Any:
  return jax.tree_util.tree_map(lambda x: x[index], tree)


def train_group(config: ml_collections.ConfigDict, lrs: Sequence[float],
                seeds: Sequence[int], workdir: str | pathlib.Path,
                *, max_epochs_this_call: int | None = None) -> list[dict[str, Any] | None]:
  """Trains (or resumes) the group; returns each run's results (None: diverged,
  or unfinished after `max_epochs_this_call` epochs)."""
  workdir = pathlib.Path(workdir)
  if config.get("cache_features", False):
    raise ValueError("config.cache_features is for single ftjax.train runs; LP on cached "
                     "features is a few matmuls per epoch already. Set "
                     "--config.cache_features=False, or run each LP with ftjax.train.")
  configs = run_configs(config, lrs, seeds)
  for run_config in configs:
    train.check_config(run_config)
  runs = [Run(c, workdir / train.default_workdir(c).removeprefix("runs/"), train.new_loop())
          for c in configs]
  group_dir = (runs[0].workdir.parents[1] / "multirun" /
               (f"lr{'-'.join(f'{lr:g}' for lr in lrs)}_seed{'-'.join(map(str, seeds))}"))
  arch = registry.get_arch(config.arch)
  hparams = config.strategy_options.to_dict()
  strategy = get_strategy(config.strategy, arch, {**hparams, "lr": config.lr})
  info, builder = train.prepared_builder(config, arch)
  sources = {split: builder.as_data_source(split) for split in ("train", "validation", "test")}
  steps_per_epoch = train.train_steps_per_epoch(config, info.name, len(sources["train"]))
  # Validated: now claim each run's directory (refusing one of another identity).
  for run in runs:
    train.check_workdir_writable(run.workdir)
    train.claim_workdir(run.workdir, run.config, run_lib.run_identity(run.config, builder))
  train.check_workdir_writable(group_dir)
  loss_name = "sigmoid" if info.multilabel else "softmax"
  compute_dtype = train.COMPUTE_DTYPES[config.compute_dtype]
  model = arch.build(info.num_classes)
  monitor = train.Monitor(config.early_stopping_metric)
  eval_kwargs = dict(multilabel=info.multilabel, class_names=info.class_names,
                     batch_size=config.eval_batch_size, crop=config.crop,
                     num_workers=config.num_workers)

  state = _stack([step.create_train_state(strategy, train.initial_variables(
      run.config, arch, info.num_classes)) for run in runs])
  group_ckpts = checkpoints.RunCheckpoints(group_dir)
  restored = group_ckpts.restore_latest(state)
  if restored is not None:
    state, saved = restored
    for run, loop, diverged in zip(runs, saved["loops"], saved["diverged"]):
      run.loop, run.diverged = loop, diverged
    print(f"{group_dir}: resuming after epoch {saved['epoch']}.")
  for run in runs:
    for name in ("metrics.jsonl", "rgn.jsonl"):
      train.trim_jsonl(run.workdir / name, run.loop["epoch"])
  run_ckpts = [checkpoints.RunCheckpoints(run.workdir) for run in runs]
  writers = [MetricWriter(run.workdir) for run in runs]

  lr_values = jnp.asarray([run.config.lr for run in runs], jnp.float32)
  keys = [jax.random.split(jax.random.key(run.config.seed)) for run in runs]
  step_keys, probe_keys = jnp.stack([k[0] for k in keys]), jnp.stack([k[1] for k in keys])
  distinct_seeds = sorted({run.config.seed for run in runs})
  # One data stream per seed; runs of the same seed read the same batches.
  seed_row = jnp.asarray([distinct_seeds.index(run.config.seed) for run in runs])
  shared = len(distinct_seeds) == 1

  def step_batch(per_seed):
    """One step's batch: [B, ...] from the one shared stream, else [seeds, B, ...]."""
    return per_seed[0] if shared else train.stack_batches(per_seed)

  def per_run(batches):
    """The runs' batches and their vmap axis: the one shared stream as it is, or each
    run's row of the per-seed batches."""
    if shared:
      return batches, None
    return jax.tree_util.tree_map(lambda x: x[seed_row], batches), 0

  def tx_for(lr):
    return get_strategy(config.strategy, arch, {**hparams, "lr": lr}).transform

  def group_step(trainable):
    fn = step.make_step_fn(model, strategy, trainable, loss=loss_name,
                           compute_dtype=compute_dtype)

    def one(run_state, batch, key, lr, global_step):
      return fn(run_state, batch, jax.random.fold_in(key, global_step), tx_for(lr))

    def advance(states, batches, global_step):
      batches, batch_axis = per_run(batches)
      return jax.vmap(one, in_axes=(0, batch_axis, 0, 0, None))(
          states, batches, step_keys, lr_values, global_step)

    return jax.jit(advance, donate_argnums=(0,))

  def start_rgn_epoch(states, batches, epoch):
    probe = step.rgn_probe_fn(model, strategy, loss=loss_name, bn_mode=strategy.bn_mode,
                              compute_dtype=compute_dtype)

    def one(run_state, run_batches, key):
      weights = probe(run_state, run_batches, jax.random.fold_in(key, epoch))
      return step.start_rgn_epoch(run_state, strategy, weights), weights

    batches, batch_axis = per_run(batches)
    return jax.vmap(one, in_axes=(0, batch_axis, 0))(states, batches, probe_keys)

  start_rgn_epoch = jax.jit(start_rgn_epoch, donate_argnums=(0,))
  device = distributed.DataParallel(jax.devices()[:1])
  if jax.device_count() > 1:
    print(f"multirun: training on 1 of {jax.device_count()} devices; start one group per "
          f"device (CUDA_VISIBLE_DEVICES=i) to use the others.", file=sys.stderr)
  steps: dict[int, Any] = {}
  epoch = min(run.loop["epoch"] for run in runs)
  epochs_this_call = 0
  while any(run.active for run in runs):
    if max_epochs_this_call is not None and epochs_this_call >= max_epochs_this_call:
      break
    phase_index = strategy.plan.phase_index(epoch)
    trainable = strategy.plan.phases[phase_index].trainable
    if phase_index not in steps:
      steps[phase_index] = group_step(trainable)
    loaders = [iter(train.epoch_loader(
        _with_seed(config, seed), sources["train"], epoch)) for seed in distinct_seeds]
    batches = (step_batch([train.train_batch(next(l), info.multilabel) for l in loaders])
               for _ in range(steps_per_epoch))
    start = time.perf_counter()
    first = []
    if strategy.reset_each_epoch:
      if strategy.rgn["every"] != "epoch":
        raise ValueError("ftjax.multirun supports Auto-RGN with rgn_every='epoch' only.")
      first = [next(batches) for _ in range(min(strategy.rgn["batches"], steps_per_epoch))]
      # [rgn_batches, B, ...] for one shared stream, else [seeds, rgn_batches, B, ...].
      probe_batches = train.stack_batches(first, axis=0 if shared else 1)
      state, weights = start_rgn_epoch(state, probe_batches, epoch)
      for index, run in enumerate(runs):
        if run.active:
          writers[index].write_rgn(epoch, _unstack(weights, index))
    global_step = int(state.step[0])
    advance = steps[phase_index]
    losses = []
    bar = tqdm.tqdm(total=steps_per_epoch, disable=None if config.progress else True,
                    leave=False, desc=f"epoch {epoch + 1}/{config.num_epochs} "
                                      f"[{len(runs)} runs]", unit="step")
    device_batches = device.prefetch(itertools.chain(first, batches), config.prefetch)
    for i, batch in enumerate(device_batches):
      state, metrics = advance(state, batch, global_step + i)
      losses.append(metrics["loss"])
      bar.update(1)
    bar.close()
    step_losses = np.asarray(jax.device_get(losses), np.float32)  # [steps, runs]
    epoch_seconds = time.perf_counter() - start

    for index, run in enumerate(runs):
      if not run.active:
        continue
      run_losses = step_losses[:, index]
      try:
        train.check_finite(run_losses, epoch=epoch, first_step=global_step,
                           config=run.config, workdir=run.workdir,
                           epochs_done=run.loop["epoch"])
      except train.TrainingDivergedError as error:
        run.diverged = str(error)
        print(f"{run.workdir}: {error}", file=sys.stderr)
        continue
      variables = _unstack(train.model_variables(state), index)
      val = evaluation.evaluate(model, variables, sources["validation"], **eval_kwargs)
      if monitor.record(run.loop, epoch, val, last_phase_start=strategy.plan.last_phase_start,
                        patience=run.config.patience, seconds=epoch_seconds / len(runs)):
        run_ckpts[index].save_best(epoch, variables)
      writers[index].write_epoch(epoch, {
          "phase": phase_index, "trainable": sorted(trainable),
          "train_loss": float(np.mean(run_losses)),
          "images_per_second": steps_per_epoch * config.batch_size * len(runs) / epoch_seconds,
          "epoch_seconds": epoch_seconds, "multirun": len(runs),
          **{f"val_{k}": v for k, v in val.items()}})
    epoch += 1
    epochs_this_call += 1
    group_ckpts.save_latest(epoch, state, {
        "epoch": epoch, "loops": [run.loop for run in runs],
        "diverged": [run.diverged for run in runs]})
    if config.progress:
      print(f"epoch {epoch}: " + ", ".join(
          f"lr={run.config.lr:g} seed={run.config.seed} "
          + ("diverged" if run.diverged else f"loss {np.mean(step_losses[:, i]):.4f}")
          for i, run in enumerate(runs)), flush=True)

  results = []
  for index, run in enumerate(runs):
    writers[index].close()
    if run.diverged or run.active:
      run_ckpts[index].close()
      results.append(None)
      continue
    like = _unstack(train.model_variables(state), index)
    best_epoch, best = run_ckpts[index].restore_best(like)
    run_ckpts[index].close()
    results.append(train.finish_run(
        run.config, run.workdir, info=info, arch=arch, strategy_name=strategy.name,
        data_config=builder.builder_config.name, loop=run.loop, best_epoch=best_epoch,
        test=evaluation.evaluate(model, best, sources["test"], **eval_kwargs),
        val=evaluation.evaluate(model, best, sources["validation"], **eval_kwargs),
        devices=1, extra={"multirun": len(runs)}))
  group_ckpts.close()
  return results


def _with_seed(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.seed = seed
  return copy


def _floats(text: str) -> list[float]:
  return [float(x) for x in text.split(",") if x.strip()]


def main(argv) -> None:
  def run(config):
    lrs = _floats(flags.FLAGS.lrs) if flags.FLAGS.lrs else [config.lr]
    seeds = [int(x) for x in _floats(flags.FLAGS.seeds)] if flags.FLAGS.seeds else [config.seed]
    return train_group(config, lrs, seeds, flags.FLAGS.workdir)

  results = train.run_cli(argv, "configs/base.py:bach,ft", run)
  if any(r is None for r in results):
    sys.exit(1)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "ml_collections config file (one "
                                  "dataset, arch and strategy).")
  flags.DEFINE_string("lrs", None, "comma-separated learning rates (default: config.lr)")
  flags.DEFINE_string("seeds", None, "comma-separated seeds (default: config.seed)")
  flags.DEFINE_string("workdir", "runs", "root of the run directories "
                      "(<dataset>/<arch>/<strategy>/lr<lr>/seed<seed>/ under it)")
  app.run(main, flags_parser=cli_flags.parse)
