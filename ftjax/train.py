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

import json
import pathlib
import sys
import time
from typing import Any

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import tqdm

from ftjax import checkpoints, evaluation, step
from ftjax.data import DataError, get_dataset
from ftjax.models import init_variables, load_pretrained, registry
from ftjax.strategies import get_strategy
from ftjax.logging_utils import MetricWriter

_COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def default_workdir(config: ml_collections.ConfigDict) -> str:
  return (f"runs/{config.dataset}/{config.arch}/{config.strategy}/"
          f"lr{config.lr:g}/seed{config.seed}")


def prepared_builder(config: ml_collections.ConfigDict, arch: registry.Arch):
  """The dataset's builder, prepared (synthetic data is generated on first use)."""
  info = get_dataset(config.dataset)
  resize = config.resize or arch.preprocessing.resize
  builder = info.create(config.data_dir, resize=resize, **config.dataset_options.to_dict())
  if not builder.data_path.exists():
    if info.name.startswith("synthetic"):
      builder.download_and_prepare()
    else:
      raise DataError(
          f"{info.name} is not prepared in {pathlib.Path(config.data_dir).absolute()} "
          f"(config {builder.builder_config.name}). {builder.MANUAL_DOWNLOAD_INSTRUCTIONS} "
          f"Then prepare it once: python -m ftjax.data prepare --dataset {info.name} "
          f"--manual_dir <the downloaded folder> --data_dir {config.data_dir} "
          f"--resize {resize}")
  return info, builder


def initial_variables(config, arch: registry.Arch, num_classes: int):
  if config.init == "pretrained":
    _, variables = load_pretrained(arch, config.weights_dir, num_classes,
                                   rng=jax.random.key(config.seed))
    return variables
  if config.init == "random":
    return init_variables(arch, jax.random.key(config.seed), num_classes)
  raise ValueError(f"config.init must be 'pretrained' or 'random', got {config.init!r}.")


def _check_workdir_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """A workdir holds one run: refuse to resume it under another config."""
  path = workdir / "config.json"
  current = json.loads(config.to_json_best_effort())
  if path.exists():
    saved = json.loads(path.read_text())
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k)
                     and k not in ("progress", "num_workers"))
    if changed:
      diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
      raise ValueError(f"{path}: this workdir holds a run with another config ({diffs}). "
                       f"Use another --workdir, or delete this one to start over.")
  else:
    path.write_text(json.dumps(current, indent=2) + "\n")


class _Monitor:
  """Best epoch and early stopping on one validation metric."""

  def __init__(self, metric: str):
    if metric != "loss" and metric not in ("map", "accuracy", "auroc", "kappa", "f1"):
      raise ValueError(f"early_stopping_metric must be 'loss' or a metric name, got "
                       f"{metric!r}.")
    self.metric = metric
    self.sign = -1.0 if metric == "loss" else 1.0  # larger is better after the sign

  def improved(self, value: float, best: float | None) -> bool:
    return not np.isnan(value) and (best is None or self.sign * value > self.sign * best)


def _variables(state: step.TrainState) -> dict[str, Any]:
  return {"params": state.params, "batch_stats": state.batch_stats}


def _stack(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([b[k] for b in batches]) for k in ("image", "label")}


def _train_batch(batch: dict[str, np.ndarray], multilabel: bool) -> dict[str, Any]:
  label = batch["label"].astype(np.float32 if multilabel else np.int32)
  return {"image": batch["image"], "label": label}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       max_epochs_this_call: int | None = None) -> dict[str, Any] | None:
  """Runs (or resumes) one run; returns results.json's content, or None if the
  call stopped after `max_epochs_this_call` epochs with the run unfinished
  (a time slice of a preemptible job: rerun to continue)."""
  workdir = pathlib.Path(workdir)
  results_path = workdir / "results.json"
  if results_path.exists():
    print(f"{workdir}: this run has finished; results in {results_path}.")
    return json.loads(results_path.read_text())
  workdir.mkdir(parents=True, exist_ok=True)
  _check_workdir_config(workdir, config)

  arch = registry.get_arch(config.arch)
  strategy = get_strategy(config.strategy, arch,
                          {**config.strategy_options.to_dict(), "lr": config.lr})
  info, builder = prepared_builder(config, arch)
  loss_name = "sigmoid" if info.multilabel else "softmax"
  compute_dtype = _COMPUTE_DTYPES[config.compute_dtype]
  model = arch.build(info.num_classes)
  monitor = _Monitor(config.early_stopping_metric)
  sources = {split: builder.as_data_source(split) for split in ("train", "validation", "test")}
  eval_kwargs = dict(multilabel=info.multilabel, class_names=info.class_names,
                     batch_size=config.eval_batch_size, crop=config.crop,
                     num_workers=config.num_workers)

  state = step.create_train_state(strategy, initial_variables(config, arch, info.num_classes))
  ckpts = checkpoints.RunCheckpoints(workdir)
  loop = {"epoch": 0, "best_value": None, "best_epoch": None, "bad_epochs": 0,
          "stopped_early": False, "train_seconds": 0.0}
  restored = ckpts.restore_latest(state)
  if restored is not None:
    state, loop = restored
    print(f"{workdir}: resuming after epoch {loop['epoch']}.")
  writer = MetricWriter(workdir)
  # Independent streams: dropout per global step, Auto-RGN probe per epoch.
  step_rng, probe_rng = jax.random.split(jax.random.key(config.seed))
  steps_per_epoch = len(sources["train"]) // config.batch_size
  if steps_per_epoch == 0:
    raise DataError(f"{info.name}: {len(sources['train'])} training examples, fewer than "
                    f"one batch of {config.batch_size}; lower config.batch_size.")
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
    if phase_index not in train_steps:
      train_steps[phase_index] = step.make_train_step(
          model, strategy, trainable, loss=loss_name, compute_dtype=compute_dtype)
    train_step = train_steps[phase_index]
    loader = iter(_epoch_loader(config, sources["train"], epoch))

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
        batches = _stack([_train_batch(b, info.multilabel) for b in first])
        weights = rgn_probe(state, batches, jax.random.fold_in(probe_rng, epoch))
        writer.write_rgn(epoch, weights)
      state = step.start_rgn_epoch(state, strategy, weights)

    global_step = int(state.step)
    losses = []
    bar = tqdm.tqdm(total=steps_per_epoch, disable=not config.progress, leave=False,
                    desc=f"epoch {epoch + 1}/{config.num_epochs} "
                         f"[{len(trainable)} module(s) training]", unit="step")
    for i, batch in enumerate(_chain(first, loader)):
      state, step_metrics = train_step(state, _train_batch(batch, info.multilabel),
                                       jax.random.fold_in(step_rng, global_step + i))
      losses.append(step_metrics["loss"])
      bar.update(1)
      if i % 10 == 0:
        rate = (i + 1) * config.batch_size / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{float(losses[-1]):.4f}", img_s=f"{rate:.0f}")
    bar.close()
    train_loss = float(np.mean(jax.device_get(losses)))
    epoch_seconds = time.perf_counter() - start

    val = evaluation.evaluate(model, _variables(state), sources["validation"], **eval_kwargs)
    value = val[monitor.metric]
    if monitor.improved(value, loop["best_value"]):
      loop["best_value"], loop["best_epoch"] = value, epoch
      if epoch >= strategy.plan.last_phase_start:
        loop["bad_epochs"] = 0
      ckpts.save_best(epoch, _variables(state))
    elif epoch >= strategy.plan.last_phase_start:
      loop["bad_epochs"] += 1
      loop["stopped_early"] = loop["bad_epochs"] >= config.patience
    loop["epoch"] = epoch + 1
    loop["train_seconds"] += epoch_seconds
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

  best_epoch, best = ckpts.restore_best(_variables(state))
  test = evaluation.evaluate(model, best, sources["test"], **eval_kwargs)
  val = evaluation.evaluate(model, best, sources["validation"], **eval_kwargs)
  results = {
      "dataset": info.name, "arch": arch.name, "strategy": strategy.name, "lr": config.lr,
      "seed": config.seed, "init": config.init, "data_config": builder.builder_config.name,
      "unit": config.dataset_options.to_dict().get("unit"),
      "main_metrics": list(info.main_metrics), "best_epoch": best_epoch,
      "epochs_run": loop["epoch"], "stopped_early": loop["stopped_early"],
      "train_seconds": loop["train_seconds"], "validation": val, "test": test,
      "device": jax.devices()[0].device_kind, "jax_version": jax.__version__,
  }
  results_path.write_text(json.dumps(results, indent=2) + "\n")
  writer.close()
  ckpts.close()
  main = ", ".join(f"{m} {test[m]:.4f}" for m in info.main_metrics)
  print(f"{info.name} {arch.name} {strategy.name} lr={config.lr:g} seed={config.seed}: "
        f"best epoch {best_epoch + 1} of {loop['epoch']}"
        f"{' (early stop)' if loop['stopped_early'] else ''}; test {main} -> {results_path}")
  return results


def _epoch_loader(config, source, epoch: int):
  from ftjax.data import pipeline  # pylint: disable=import-outside-toplevel
  return pipeline.make_loader(source, config.batch_size, seed=config.seed, epoch=epoch,
                              shuffle=True, drop_remainder=True, crop=config.crop,
                              num_workers=config.num_workers)


def _chain(first, rest):
  yield from first
  yield from rest


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Orbax and TFDS log every checkpoint and dataset load at INFO; the run's own
  # output is printed.
  logging.set_verbosity(logging.ERROR)
  config = flags.FLAGS.config
  if config is None:
    raise app.UsageError("--config is required, e.g. --config configs/isic_lp.py")
  try:
    train_and_evaluate(config, flags.FLAGS.workdir or default_workdir(config))
  except (DataError, FileNotFoundError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  # Flags are defined only for the command line, so that importing this module
  # (from ftjax.evaluate, ftjax.sweep, a notebook) defines none.
  config_flags.DEFINE_config_file("config", None, "ml_collections config file; override "
                                  "fields with --config.FIELD=VALUE.")
  flags.DEFINE_string("workdir", None, "run directory (default: runs/<dataset>/<arch>/"
                      "<strategy>/lr<lr>/seed<seed>)")
  app.run(main)
