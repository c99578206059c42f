"""python -m ftjax.train --config configs/isic_lp.py --workdir runs/isic_lp

Trains one (dataset, architecture, strategy, learning rate, seed) run with the
paper's protocol: Adam, up to `num_epochs` epochs, early stopping on the
validation split (patience counted in the last phase of the strategy's plan),
the best epoch by validation tested once. Rerunning the same command resumes
after the last finished epoch; a finished run says so and exits.

Writes into the workdir: config.json, metrics.jsonl (one line per epoch),
rgn.jsonl (Auto-RGN's per-tensor weights), TensorBoard scalars (tb/),
checkpoints/ and, at the end, results.json.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Callable

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import tqdm

from ftjax import checkpoints, cli_flags, distributed, evaluation, features, metrics, step
from ftjax import run as run_lib
from ftjax.data import DataError, pipeline
from ftjax.data.prepared import dataset_options, prepared_builder
from ftjax.models import init_variables, load_pretrained, registry
from ftjax.strategies import get_strategy
from ftjax.logging_utils import MetricWriter

COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}
INITS = ("pretrained", "random")


class TrainingDivergedError(FloatingPointError):
  """The training loss became NaN or infinite; the last good checkpoint is kept."""


def default_workdir(config: ml_collections.ConfigDict) -> str:
  return "runs/" + run_lib.relative_path(config.dataset, config.arch, config.strategy,
                                         config.lr, config.seed)


def initial_variables(config, arch: registry.Arch, num_classes: int):
  if config.init == "pretrained":
    _, variables = load_pretrained(arch, config.weights_dir, num_classes,
                                   rng=jax.random.key(config.seed))
    return variables
  if config.init == "random":
    return init_variables(arch, jax.random.key(config.seed), num_classes)
  raise ValueError(f"config.init must be {' or '.join(map(repr, INITS))}, got "
                   f"{config.init!r}.")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses values no run can use, naming the field, before anything starts."""
  def refuse(field: str, requirement: str) -> None:
    raise ValueError(f"config.{field} must be {requirement}, got {config[field]!r} "
                     f"(set it with --config.{field}=VALUE).")

  if not (isinstance(config.lr, (int, float)) and math.isfinite(config.lr) and config.lr > 0):
    refuse("lr", "a positive number (the paper's grid: 1e-3, 1e-4, 1e-5)")
  for field in ("batch_size", "eval_batch_size", "num_epochs", "patience", "crop"):
    if not isinstance(config[field], int) or config[field] < 1:
      refuse(field, "a positive integer")
  for field in ("resize", "num_workers", "prefetch"):
    if not isinstance(config[field], int) or config[field] < 0:
      refuse(field, "an integer >= 0")
  if 0 < config.resize < config.crop:
    refuse("resize", f"0 (the architecture's) or at least config.crop ({config.crop})")
  if config.compute_dtype not in COMPUTE_DTYPES:
    refuse("compute_dtype", " or ".join(map(repr, COMPUTE_DTYPES)))
  if config.init not in INITS:
    refuse("init", " or ".join(map(repr, INITS)))
  Monitor(config.early_stopping_metric)  # refuses an unknown metric


def claim_workdir(workdir: pathlib.Path, config: ml_collections.ConfigDict,
                  fields: dict[str, Any], *, overwrite: bool = False) -> pathlib.Path | None:
  """A workdir holds one run: refuse another identity (or move it aside), then
  record this run's config and identity (process 0). Returns where an old run
  was moved, or None."""
  run = run_lib.RunDir(workdir)
  aside = run.claim(fields, overwrite=overwrite)
  if aside is not None:
    print(f"{workdir}: the run there had another identity; moved it to {aside}.")
  if jax.process_index() == 0 and not run.matches(fields):
    check_workdir_writable(workdir)
    current = json.loads(config.to_json_best_effort())
    current["dataset_options"] = dataset_options(config)
    run.write_identity(current, fields)
  return aside


_WORKDIR_FIXES = {
    errno.ENOSPC: "the disk is full: free some space or use a --workdir on another disk",
    errno.EDQUOT: "the disk quota is exhausted: free some space or use a --workdir "
                  "on another disk",
    errno.EACCES: "permission denied: make it writable (chmod/chown) or use another "
                  "--workdir",
    errno.EPERM: "permission denied: make it writable (chmod/chown) or use another "
                 "--workdir",
    errno.EROFS: "the file system is read-only: use a --workdir on a writable disk",
    errno.ENOTDIR: "a file stands where a folder is needed: use another --workdir",
    errno.EEXIST: "a file stands where a folder is needed: use another --workdir",
}


def check_workdir_writable(workdir: pathlib.Path, probe_bytes: int = 1 << 16) -> None:
  """Creates the workdir and writes a small probe file, so that a read-only or full
  disk fails now, with the fix, instead of at the first checkpoint."""
  probe = workdir / f".write_probe.{jax.process_index()}.{os.getpid()}"
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
      os.write(fd, b"\0" * probe_bytes)
      os.fsync(fd)
    finally:
      os.close(fd)
      probe.unlink(missing_ok=True)
  except OSError as error:
    if error.errno not in _WORKDIR_FIXES:
      raise
    raise ValueError(f"workdir {workdir.absolute()} is not writable "
                     f"({os.strerror(error.errno)}); {_WORKDIR_FIXES[error.errno]}."
                     ) from error


def trim_jsonl(path: pathlib.Path, epochs_done: int) -> None:
  """Drops lines of epochs a killed run wrote but did not checkpoint (they are
  run again) and a half-written last line."""
  if not path.exists() or jax.process_index() != 0:
    return
  kept = []
  for line in path.read_text().splitlines():
    try:
      if json.loads(line)["epoch"] < epochs_done:
        kept.append(line)
    except (ValueError, KeyError, TypeError):
      continue
  text = "".join(line + "\n" for line in kept)
  if text != path.read_text():
    run_lib.write_atomic(path, text)


def check_finite(losses: np.ndarray, *, epoch: int, first_step: int,
                 config: ml_collections.ConfigDict, workdir: pathlib.Path,
                 epochs_done: int) -> None:
  bad = np.flatnonzero(~np.isfinite(losses))
  if not bad.size:
    return
  i = int(bad[0])
  kept = (f"the checkpoint after epoch {epochs_done} is kept in {workdir / 'checkpoints'}"
          if epochs_done else "no epoch had finished, so there is no checkpoint")
  raise TrainingDivergedError(
      f"training loss is {losses[i]} at epoch {epoch + 1}/{config.num_epochs}, step "
      f"{i + 1} of the epoch (global step {first_step + i + 1}); training stopped and "
      f"{kept}. Rerunning would diverge again: lower config.lr (now {config.lr:g}) or use "
      f"compute_dtype='float32' in a new --workdir.")


def new_loop() -> dict[str, Any]:
  """The loop state of a run that has not trained yet (Monitor.record updates it)."""
  return {"epoch": 0, "best_value": None, "best_epoch": None, "bad_epochs": 0,
          "stopped_early": False, "train_seconds": 0.0}


class Monitor:
  """Best epoch and early stopping on one validation metric."""

  def __init__(self, metric: str):
    if metric != "loss" and metric not in metrics.METRICS:
      raise ValueError(f"early_stopping_metric must be 'loss' or a metric name, got "
                       f"{metric!r}.")
    self.metric = metric
    self.sign = -1.0 if metric == "loss" else 1.0  # larger is better after the sign

  def improved(self, value: float, best: float | None) -> bool:
    return not np.isnan(value) and (best is None or self.sign * value > self.sign * best)

  def record(self, loop: dict[str, Any], epoch: int, val: dict[str, float], *,
             last_phase_start: int, patience: int, seconds: float) -> bool:
    """Updates the loop state after `epoch`; True if it is the new best epoch.

    Early stopping counts only from the plan's last phase on.
    """
    value = val[self.metric]
    best = self.improved(value, loop["best_value"])
    if best:
      loop["best_value"], loop["best_epoch"] = value, epoch
      if epoch >= last_phase_start:
        loop["bad_epochs"] = 0
    elif epoch >= last_phase_start:
      loop["bad_epochs"] += 1
      loop["stopped_early"] = loop["bad_epochs"] >= patience
    loop["epoch"] = epoch + 1
    loop["train_seconds"] += seconds
    return best


def model_variables(state: step.TrainState) -> dict[str, Any]:
  """The state's {'params', 'batch_stats'}: what the model applies and checkpoints keep."""
  return {"params": state.params, "batch_stats": state.batch_stats}


def stack_batches(batches: list[dict[str, np.ndarray]], axis: int = 0
                  ) -> dict[str, np.ndarray]:
  """Images and labels of the batches, each stacked along a new `axis`."""
  return {k: np.stack([b[k] for b in batches], axis) for k in ("image", "label")}


def train_batch(batch: dict[str, np.ndarray], multilabel: bool) -> dict[str, Any]:
  label = batch["label"].astype(np.float32 if multilabel else np.int32)
  return {"image": batch["image"], "label": label}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       max_epochs_this_call: int | None = None, overwrite: bool = False,
                       lock_held: bool = False) -> dict[str, Any] | None:
  """Runs (or resumes) one run; returns results.json's content, or None if the
  call stopped after `max_epochs_this_call` epochs with the run unfinished
  (a time slice of a preemptible job: rerun to continue).

  Everything is validated before anything is written. A workdir holding a run
  of another identity is refused (overwrite=True moves it aside). The run's
  lock is taken unless the caller holds it (lock_held: a sweep).
  """
  # Before any other JAX call: jax.distributed must start before the backend does.
  distributed.initialize(config)
  workdir = pathlib.Path(workdir)
  check_config(config)
  parallel = distributed.DataParallel()
  parallel.check_divisible(config.batch_size, "config.batch_size")
  parallel.check_divisible(config.eval_batch_size, "config.eval_batch_size")
  arch = registry.get_arch(config.arch)
  strategy = get_strategy(config.strategy, arch,
                          {**config.strategy_options.to_dict(), "lr": config.lr})
  if config.cache_features:
    features.check_supported(arch, strategy,
                             compute_dtype=COMPUTE_DTYPES[config.compute_dtype])
  info, builder = prepared_builder(config, arch)
  sources = {split: builder.as_data_source(split) for split in ("train", "validation", "test")}
  steps_per_epoch = train_steps_per_epoch(config, info.name, len(sources["train"]))
  fields = run_lib.run_identity(config, builder)
  run = run_lib.RunDir(workdir)
  if run.is_finished(fields):
    print(f"{workdir}: this run has finished; results in {run / run.RESULTS}.")
    return json.loads((run / run.RESULTS).read_text())
  check_workdir_writable(workdir)
  lock = None if lock_held or jax.process_count() > 1 else run.lock()
  try:
    if claim_workdir(workdir, config, fields, overwrite=overwrite) and lock is not None:
      # The old run moved aside with its lock file: lock the new directory.
      lock.release()
      lock = run.lock()
    return _train(config, workdir, parallel, arch, strategy, info, builder, sources,
                  steps_per_epoch, max_epochs_this_call)
  finally:
    if lock is not None:
      lock.release()


def _train(config, workdir, parallel, arch, strategy, info, builder, sources,
           steps_per_epoch, max_epochs_this_call):
  is_main = jax.process_index() == 0
  loss_name = "sigmoid" if info.multilabel else "softmax"
  compute_dtype = COMPUTE_DTYPES[config.compute_dtype]
  model = arch.build(info.num_classes)
  monitor = Monitor(config.early_stopping_metric)
  eval_kwargs = dict(multilabel=info.multilabel, class_names=info.class_names,
                     batch_size=config.eval_batch_size, crop=config.crop,
                     num_workers=config.num_workers, parallel=parallel)

  state = step.create_train_state(strategy, initial_variables(config, arch, info.num_classes))
  state = parallel.replicate(state)
  ckpts = checkpoints.RunCheckpoints(workdir)
  loop = new_loop()
  restored = ckpts.restore_latest(state)
  if restored is not None:
    state, loop = restored
    print(f"{workdir}: resuming after epoch {loop['epoch']}.")
  for name in ("metrics.jsonl", "rgn.jsonl"):
    trim_jsonl(workdir / name, loop["epoch"])
  writer = MetricWriter(workdir)
  # Independent streams: dropout per global step, Auto-RGN probe per epoch.
  step_rng, probe_rng = jax.random.split(jax.random.key(config.seed))
  cached = _cached_features(config, workdir, model, arch, strategy, info, builder, sources,
                            state, loss_name, parallel)
  train_steps: dict[int, Any] = {}  # phase index -> compiled step (one compile per phase)
  rgn_probe = None
  epochs_this_call = 0

  while loop["epoch"] < config.num_epochs and not loop["stopped_early"]:
    if max_epochs_this_call is not None and epochs_this_call >= max_epochs_this_call:
      ckpts.close()
      return None
    epoch = loop["epoch"]
    phase_index = strategy.plan.phase_index(epoch)
    trainable = strategy.plan.phases[phase_index].trainable
    if cached is not None:
      # LP on cached backbone features: the whole epoch is one compiled scan.
      start = time.perf_counter()
      global_step = int(state.step)
      order = features.batch_order(len(sources["train"]), config.batch_size,
                                   seed=config.seed, epoch=epoch,
                                   num_workers=config.num_workers)
      state, losses = cached["train_epoch"](state, *cached["train"], order, step_rng)
    else:
      if phase_index not in train_steps:
        train_steps[phase_index] = step.make_train_step(
            model, strategy, trainable, loss=loss_name, compute_dtype=compute_dtype,
            shardings=parallel.shardings())
      train_step = train_steps[phase_index]
      loader = iter(epoch_loader(config, sources["train"], epoch))

      start = time.perf_counter()
      first = []
      if strategy.reset_each_epoch:
        # Auto-RGN: weights from the epoch's first minibatches, then a fresh Adam.
        weights = None
        if strategy.rgn["every"] == "epoch":
          first = [next(loader) for _ in range(min(strategy.rgn["batches"], steps_per_epoch))]
          rgn_probe = rgn_probe or step.make_rgn_probe(
              model, loss=loss_name, rgn_bn=strategy.rgn["bn"], bn_mode=strategy.bn_mode,
              compute_dtype=compute_dtype)
          batches = parallel.shard_stacked(
              stack_batches([train_batch(b, info.multilabel) for b in first]))
          weights = rgn_probe(state, batches, jax.random.fold_in(probe_rng, epoch))
          if is_main:
            writer.write_rgn(epoch, weights)
        state = parallel.replicate(step.start_rgn_epoch(state, strategy, weights))

      global_step = int(state.step)
      host_batches = (train_batch(b, info.multilabel) for b in _chain(first, loader))
      losses = []
      # disable=None: no bar when output is not a terminal (sweep logs, CI).
      bar = tqdm.tqdm(total=steps_per_epoch, disable=None if config.progress else True,
                      leave=False,
                      desc=f"epoch {epoch + 1}/{config.num_epochs} "
                           f"[{len(trainable)} module(s) training]", unit="step")
      # Batches reach the devices ahead of use; nothing is read back until the
      # epoch ends, except a loss for the bar that is already computed.
      for i, batch in enumerate(parallel.prefetch(host_batches, config.prefetch)):
        state, step_metrics = train_step(state, batch,
                                         jax.random.fold_in(step_rng, global_step + i))
        losses.append(step_metrics["loss"])
        bar.update(1)
        if i % 10 == 0 and not bar.disable:
          rate = (i + 1) * config.batch_size / (time.perf_counter() - start)
          done = next((x for x in reversed(losses) if x.is_ready()), None)
          bar.set_postfix(img_s=f"{rate:.0f}",
                          **({} if done is None else {"loss": f"{float(done):.4f}"}))
      bar.close()
    # One host transfer per epoch; a NaN stops the run before anything is saved.
    step_losses = np.asarray(jax.device_get(losses), np.float32)
    try:
      check_finite(step_losses, epoch=epoch, first_step=global_step, config=config,
                   workdir=workdir, epochs_done=loop["epoch"])
    except TrainingDivergedError:
      writer.close()
      ckpts.close()
      raise
    train_loss = float(np.mean(step_losses))
    epoch_seconds = time.perf_counter() - start

    if cached is not None:
      val = features.evaluate(model, model_variables(state), *cached["validation"],
                              multilabel=info.multilabel, class_names=info.class_names,
                              batch_size=config.eval_batch_size, crop=config.crop)
    else:
      val = evaluation.evaluate(model, model_variables(state), sources["validation"],
                                **eval_kwargs)
    value = val[monitor.metric]
    if monitor.record(loop, epoch, val, last_phase_start=strategy.plan.last_phase_start,
                      patience=config.patience, seconds=epoch_seconds):
      ckpts.save_best(epoch, model_variables(state))
    if is_main:
      writer.write_epoch(epoch, {
          "phase": phase_index, "trainable": sorted(trainable), "train_loss": train_loss,
          "images_per_second": steps_per_epoch * config.batch_size / epoch_seconds,
          "epoch_seconds": epoch_seconds,
          **{f"val_{k}": v for k, v in val.items()}})
    ckpts.save_latest(loop["epoch"], state, loop)
    epochs_this_call += 1
    if config.progress:
      watched = "" if monitor.metric == "loss" else f", val {monitor.metric} {value:.4f}"
      print(f"epoch {epoch + 1}: train loss {train_loss:.4f}, val loss {val['loss']:.4f}"
            f"{watched}{' (best)' if loop['best_epoch'] == epoch else ''}", flush=True)

  best_epoch, best = ckpts.restore_best(parallel.replicate(model_variables(state)))
  results = finish_run(config, workdir, info=info, arch=arch, strategy_name=strategy.name,
                       data_config=builder.builder_config.name, loop=loop,
                       best_epoch=best_epoch, test=evaluation.evaluate(
                           model, best, sources["test"], **eval_kwargs),
                       val=evaluation.evaluate(
                           model, best, sources["validation"], **eval_kwargs),
                       devices=parallel.size)
  writer.close()
  ckpts.close()
  return results


def finish_run(config: ml_collections.ConfigDict, workdir: pathlib.Path, *, info, arch,
               strategy_name: str, data_config: str, loop: dict[str, Any], best_epoch: int,
               test: dict[str, float], val: dict[str, float], devices: int,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
  """Writes results.json (process 0) and prints the run's one-line summary."""
  results = {
      "dataset": info.name, "arch": arch.name, "strategy": strategy_name, "lr": config.lr,
      "seed": config.seed, "init": config.init, "data_config": data_config,
      "unit": dataset_options(config).get("unit"),
      "main_metrics": list(info.main_metrics), "best_epoch": best_epoch,
      "epochs_run": loop["epoch"], "stopped_early": loop["stopped_early"],
      "train_seconds": loop["train_seconds"], "validation": val, "test": test,
      "device": jax.devices()[0].device_kind, "devices": devices,
      "jax_version": jax.__version__, **(extra or {}),
  }
  results_path = workdir / "results.json"
  if jax.process_index() == 0:
    run_lib.write_atomic(results_path, json.dumps(results, indent=2) + "\n")
  main = ", ".join(f"{m} {test[m]:.4f}" for m in info.main_metrics)
  print(f"{info.name} {arch.name} {strategy_name} lr={config.lr:g} seed={config.seed}: "
        f"best epoch {best_epoch + 1} of {loop['epoch']}"
        f"{' (early stop)' if loop['stopped_early'] else ''}; test {main} -> {results_path}")
  return results


def _cached_features(config, workdir, model, arch, strategy, info, builder, sources, state,
                     loss_name, parallel) -> dict[str, Any] | None:
  """With config.cache_features: the train/validation features and the epoch function."""
  if not config.get("cache_features", False):
    return None
  cached = {"train_epoch": features.make_train_epoch(model, strategy, loss=loss_name,
                                                      crop=config.crop)}
  for split in ("train", "validation"):
    x, y = features.load_or_extract(
        workdir / "features",
        {"dataset": info.name, "data_config": builder.builder_config.name, "split": split,
         "arch": arch.name, "resize": config.resize or arch.preprocessing.resize},
        model, model_variables(state), sources[split], batch_size=config.eval_batch_size,
        crop=config.crop, num_workers=config.num_workers, progress=config.progress)
    cached[split] = parallel.replicate((jnp.asarray(x), jnp.asarray(y)))
  return cached


def train_steps_per_epoch(config, dataset: str, num_records: int) -> int:
  """Batches per training epoch; an error if there are none."""
  steps = pipeline.num_batches(num_records, config.batch_size, config.num_workers)
  if steps == 0:
    split = (f" split over {config.num_workers} workers, which batch their shares apart"
             if config.num_workers > 1 else "")
    raise DataError(f"{dataset}: {num_records} training examples{split}, fewer than one "
                    f"batch of {config.batch_size}; lower config.batch_size"
                    f"{' or config.num_workers' if split else ''}.")
  return steps


def epoch_loader(config, source, epoch: int):
  # uint8 crops: the train step normalises them on the device.
  return pipeline.make_loader(source, config.batch_size, seed=config.seed, epoch=epoch,
                              shuffle=True, drop_remainder=True,
                              transforms=[pipeline.CenterCrop(config.crop)],
                              num_workers=config.num_workers)


def _chain(first, rest):
  yield from first
  yield from rest


def run_cli(argv, example: str, run: Callable[[ml_collections.ConfigDict], Any]) -> Any:
  """The --config flag's config handed to `run`; a user error is one `error:` line and
  exit status 1 (shared by the training commands)."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Orbax and TFDS log every checkpoint and dataset load at INFO; the run's own
  # output is printed.
  logging.set_verbosity(logging.ERROR)
  config = flags.FLAGS.config
  if config is None:
    raise app.UsageError(f"--config is required, e.g. --config {example}")
  verbose = os.environ.get("FTJAX_VERBOSE") == "1"  # tracebacks for bug reports
  try:
    return run(config)
  except (DataError, FileNotFoundError, ValueError, TrainingDivergedError) as error:
    if verbose:
      raise
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  except OSError as error:
    # Disk full, read-only or vanished workdir in the middle of a run: the last
    # good checkpoint is intact (saves are atomic), so rerunning resumes.
    if verbose or error.errno not in _WORKDIR_FIXES:
      raise
    print(f"error: {error.filename or 'the workdir'}: {os.strerror(error.errno)}; "
          f"{_WORKDIR_FIXES[error.errno]}. The last good checkpoint is kept: rerun the "
          f"same command to resume.", file=sys.stderr)
    sys.exit(1)


def main(argv) -> None:
  def run(config):
    workdir = pathlib.Path(flags.FLAGS.workdir or default_workdir(config))
    # A sweep that starts this command holds the run's lock for it.
    held = os.environ.get(run_lib.LOCK_HELD_ENV) == str(workdir.absolute())
    return train_and_evaluate(config, workdir, overwrite=flags.FLAGS.overwrite,
                              lock_held=held)
  run_cli(argv, "configs/isic_lp.py", run)


if __name__ == "__main__":
  # Flags are defined only for the command line, so that importing this module
  # (from ftjax.evaluate, ftjax.sweep, a notebook) defines none.
  config_flags.DEFINE_config_file("config", None, "ml_collections config file; override "
                                  "fields with --config.FIELD=VALUE.")
  flags.DEFINE_string("workdir", None, "run directory (default: runs/<dataset>/<arch>/"
                      "<strategy>/lr<lr>/seed<seed>)")
  flags.DEFINE_boolean("overwrite", False, "if the workdir holds a run of another identity, "
                       "move it aside to <workdir>.old-<n> (never deleted) and start anew")
  app.run(main, flags_parser=cli_flags.parse)
