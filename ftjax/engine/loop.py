"""The epoch loop shared by every trainer: train, validate, keep the best, checkpoint.

A trainer hands `run_epochs` an `EpochRunner` (how one epoch of training is
computed: ordinary steps, cached features, or vmapped runs) and the `Member`s it
trains (one run, or a group). The loop owns what every run does the same way:
the divergence check, validation, early stopping, the best checkpoint, the
metrics files and the per-epoch checkpoint; `finish` tests each member's best
epoch and writes its results.json.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import threading
import time
from typing import Any, Callable, Iterable, Protocol

import jax
import ml_collections
import numpy as np
import tqdm

from ftjax.engine import checkpoints, evaluation
from ftjax import run as run_lib
from ftjax.data.prepared import dataset_options
from ftjax.engine.experiment import Experiment, check_metric
from ftjax.logging_utils import MetricWriter


class TrainingDivergedError(FloatingPointError):
  """The training loss became NaN or infinite; the last good checkpoint is kept."""


class Preempted(BaseException):
  """A stop was requested (`request_stop`) and the run stopped after an epoch with
  its latest checkpoint written; running it again resumes there.

  A BaseException, like KeyboardInterrupt: a request from outside, not a failure of
  the run (a sweep must not record it as failed).
  """


# Set by `request_stop` (a cluster job's signal handler, ftjax.sweep.slurm); read by
# run_epochs after each epoch's checkpoint.
stop_requested = threading.Event()


def request_stop() -> None:
  """Asks the runs of this process to stop at the next safe point: after the
  current epoch and its checkpoint. Safe to call from a signal handler."""
  stop_requested.set()


@dataclasses.dataclass
class LoopState:
  """Where a run's loop stands; checkpointed (as JSON) with the train state."""

  epoch: int = 0  # epochs finished
  best_value: float | None = None
  best_epoch: int | None = None
  bad_epochs: int = 0  # epochs without improvement, counted in the plan's last phase
  stopped_early: bool = False
  train_seconds: float = 0.0

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, saved: dict[str, Any]) -> "LoopState":
    return cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls)})


class Monitor:
  """Best epoch and early stopping on one validation metric."""

  def __init__(self, metric: str):
    check_metric(metric)
    self.metric = metric
    self.sign = -1.0 if metric == "loss" else 1.0  # larger is better after the sign

  def improved(self, value: float, best: float | None) -> bool:
    return not np.isnan(value) and (best is None or self.sign * value > self.sign * best)

  def record(self, loop: LoopState, epoch: int, val: dict[str, float], *,
             last_phase_start: int, patience: int, seconds: float) -> bool:
    """Updates the loop state after `epoch`; True if it is the new best epoch.

    Early stopping counts only from the plan's last phase on.
    """
    value = val[self.metric]
    best = self.improved(value, loop.best_value)
    if best:
      loop.best_value, loop.best_epoch = value, epoch
      if epoch >= last_phase_start:
        loop.bad_epochs = 0
    elif epoch >= last_phase_start:
      loop.bad_epochs += 1
      loop.stopped_early = loop.bad_epochs >= patience
    loop.epoch = epoch + 1
    loop.train_seconds += seconds
    return best


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


@dataclasses.dataclass
class Member:
  """One run being trained: its config, directory, loop state, checkpoints, metrics."""

  config: ml_collections.ConfigDict
  run: run_lib.RunDir
  loop: LoopState = dataclasses.field(default_factory=LoopState)
  diverged: str | None = None

  def __post_init__(self):
    self.ckpts = checkpoints.RunCheckpoints(self.run.path)
    self._writer: MetricWriter | None = None

  @property
  def workdir(self) -> pathlib.Path:
    return self.run.path

  def start(self, saved_loop: dict[str, Any] | None = None,
            diverged: str | None = None) -> None:
    """Takes the loop state of the checkpoint resumed from (None: a new run) and
    trims the logs to it (process 0)."""
    self.loop = LoopState() if saved_loop is None else LoopState.from_json(saved_loop)
    self.diverged = diverged
    if jax.process_index() == 0:
      self.run.trim_logs(self.loop.epoch)

  @property
  def writer(self) -> MetricWriter:
    if self._writer is None:
      self._writer = MetricWriter(self.run.path)
    return self._writer

  @property
  def active(self) -> bool:
    return not (self.loop.stopped_early or self.diverged
                or self.loop.epoch >= self.config.num_epochs)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
    self.ckpts.close()


@dataclasses.dataclass
class EpochResult:
  state: Any
  losses: np.ndarray  # [steps, members] training losses
  first_step: int  # the global step the epoch started at
  seconds: float
  epoch_log: list[Any] | None = None  # per member: the epoch-start hook's log (RGN)


class EpochRunner(Protocol):
  """How one epoch of training is computed for the members of a state."""

  extra_metrics: dict[str, Any]  # added to every metrics.jsonl line

  def train_epoch(self, state: Any, epoch: int) -> EpochResult: ...

  def variables(self, state: Any, index: int) -> dict[str, Any]:
    """Member `index`'s model variables (what the best checkpoint keeps)."""

  def validate(self, variables: dict[str, Any]) -> dict[str, float]: ...

  def predict(self, variables: dict[str, Any], split: str) -> Any:
    """The split's per-example predictions (`evaluation.Predictions`)."""


def progress_bar(config: ml_collections.ConfigDict, epoch: int, total: int, what: str):
  # disable=None: no bar when output is not a terminal (sweep logs, CI).
  return tqdm.tqdm(total=total, disable=None if config.progress else True, leave=False,
                   desc=f"epoch {epoch + 1}/{config.num_epochs} [{what}]", unit="step")


def run_steps(advance: Callable[[Any, Any, int], tuple[Any, dict[str, Any]]], state: Any,
              device_batches: Iterable[Any], bar, images_per_step: int) -> tuple[Any, list]:
  """Applies `advance(state, batch, i)` to each batch; the losses stay on the device
  (nothing is read back until the epoch ends, except a loss for the bar that is
  already computed)."""
  start = time.perf_counter()
  losses = []
  for i, batch in enumerate(device_batches):
    state, step_metrics = advance(state, batch, i)
    losses.append(step_metrics["loss"])
    bar.update(1)
    if i % 10 == 0 and not bar.disable:
      done = next((x for x in reversed(losses) if x.is_ready()), None)
      bar.set_postfix(img_s=f"{(i + 1) * images_per_step / (time.perf_counter() - start):.0f}",
                      **({} if done is None else {"loss": f"{float(np.mean(done)):.4f}"}))
  bar.close()
  return state, losses


def run_epochs(exp: Experiment, runner: EpochRunner, state: Any, members: list[Member], *,
               epoch: int, checkpoint: Callable[[int, Any], None],
               max_epochs_this_call: int | None = None,
               raise_divergence: bool = True) -> Any:
  """Trains until every member has stopped (or `max_epochs_this_call` epochs ran);
  returns the state. A diverged member raises TrainingDivergedError before anything
  of its epoch is saved (raise_divergence), or stops training while the others go on."""
  monitor = Monitor(exp.config.early_stopping_metric)
  plan, main = exp.strategy.plan, jax.process_index() == 0
  epochs_this_call = 0
  while any(m.active for m in members):
    if max_epochs_this_call is not None and epochs_this_call >= max_epochs_this_call:
      break
    phase = plan.phase_index(epoch)
    out = runner.train_epoch(state, epoch)
    state = out.state
    _check_present(members)  # before anything of the epoch is written
    vals = {}
    for index, member in enumerate(members):
      if not member.active:
        continue
      if out.epoch_log is not None and main:
        member.writer.write_tree(exp.strategy.epoch_start.log_name, epoch,
                                 out.epoch_log[index])
      losses = out.losses[:, index]
      try:
        check_finite(losses, epoch=epoch, first_step=out.first_step, config=member.config,
                     workdir=member.workdir, epochs_done=member.loop.epoch)
      except TrainingDivergedError as error:
        if raise_divergence:
          for m in members:
            m.close()
          raise
        member.diverged = str(error)
        print(f"{member.workdir}: {error}", file=sys.stderr)
        continue
      variables = runner.variables(state, index)
      val = vals[index] = runner.validate(variables)
      if monitor.record(member.loop, epoch, val, last_phase_start=plan.last_phase_start,
                        patience=member.config.patience,
                        seconds=out.seconds / len(members)):
        member.ckpts.save_best(epoch, variables)
      if main:
        member.writer.write_epoch(epoch, {
            "phase": phase, "trainable": sorted(plan.phases[phase].trainable),
            "train_loss": float(np.mean(losses)),
            "images_per_second": (exp.steps_per_epoch * exp.config.batch_size
                                  * len(members) / out.seconds),
            "epoch_seconds": out.seconds, **runner.extra_metrics,
            **{f"val_{k}": v for k, v in val.items()}})
    epoch += 1
    epochs_this_call += 1
    checkpoint(epoch, state)
    if exp.config.progress:
      print(_progress_line(epoch, members, out.losses, vals, monitor.metric), flush=True)
    if stop_requested.is_set() and any(m.active for m in members):
      for member in members:
        member.close()
      raise Preempted(f"stop requested: stopped after epoch {epoch}, checkpoint written")
  return state


def _check_present(members: list[Member]) -> None:
  if jax.process_index() == 0:  # the process that wrote identity.json
    for member in members:
      member.run.check_present()


def _progress_line(epoch: int, members: list[Member], losses: np.ndarray,
                   vals: dict[int, dict[str, float]], metric: str) -> str:
  if len(members) == 1:
    member, val = members[0], vals.get(0, {})
    watched = "" if metric == "loss" else f", val {metric} {val[metric]:.4f}"
    best = " (best)" if member.loop.best_epoch == epoch - 1 else ""
    return (f"epoch {epoch}: train loss {np.mean(losses):.4f}, val loss {val['loss']:.4f}"
            f"{watched}{best}")
  return f"epoch {epoch}: " + ", ".join(
      f"lr={m.config.lr:g} seed={m.config.seed} "
      + ("diverged" if m.diverged else f"loss {np.mean(losses[:, i]):.4f}")
      for i, m in enumerate(members))


def finish(exp: Experiment, runner: EpochRunner, state: Any, members: list[Member], *,
           devices: int) -> list[dict[str, Any] | None]:
  """Tests each finished member's best epoch and writes its results.json; None for
  a member that diverged or is unfinished (a time slice ended)."""
  results = []
  for index, member in enumerate(members):
    if member.diverged or member.active:
      member.close()
      results.append(None)
      continue
    best_epoch, best = member.ckpts.restore_best(runner.variables(state, index))
    best, finalized = _finalize(exp, runner, state, index, best)
    predictions = {split: runner.predict(best, split) for split in ("test", "validation")}
    results.append(write_results(
        exp, member, best_epoch=best_epoch, test=exp.metrics(predictions["test"]),
        val=exp.metrics(predictions["validation"]), devices=devices,
        extra={**runner.extra_metrics, **finalized}, predictions=predictions))
    member.close()
  return results


def _finalize(exp: Experiment, runner: EpochRunner, state: Any, index: int,
              best: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """The strategy's finalize hook (WiSE-FT's mixing) on member `index`: the variables
  to test instead of the best epoch's, and what results.json records of the choice.

  The hook is called as `finalize(state, best, variables_of=, validate=, monitor=)`:
  `variables_of(state)` is the member's variables of a (possibly stacked) state,
  `validate(variables)` their validation metrics, `monitor` the early-stopping
  metric's Monitor (which score is better).
  """
  if exp.strategy.finalize is None:
    return best, {}
  return exp.strategy.finalize(
      state, best, variables_of=lambda s: runner.variables(s, index),
      validate=runner.validate, monitor=Monitor(exp.config.early_stopping_metric))


def write_results(exp: Experiment, member: Member, *, best_epoch: int,
                  test: dict[str, float], val: dict[str, float], devices: int,
                  extra: dict[str, Any], predictions: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
  """Writes <run>/predictions/<split>.npz, then results.json (process 0), and prints
  the run's one-line summary. The predictions come first: a run counts as finished
  only once results.json exists, so a finished run always has them."""
  config, info, loop = member.config, exp.info, member.loop
  if jax.process_index() == 0:
    for split, split_predictions in (predictions or {}).items():
      evaluation.save_predictions(member.run.path / run_lib.RunDir.PREDICTIONS
                                  / f"{split}.npz", split_predictions, info.multilabel)
  results = {
      "dataset": info.name, "arch": exp.arch.name, "strategy": exp.strategy.name,
      "lr": config.lr, "seed": config.seed, "init": config.init,
      "data_config": exp.builder.builder_config.name,
      "unit": dataset_options(config).get("unit"),
      "main_metrics": list(info.main_metrics), "class_names": list(info.class_names),
      "best_epoch": best_epoch,
      "epochs_run": loop.epoch, "stopped_early": loop.stopped_early,
      "train_seconds": loop.train_seconds, "validation": val, "test": test,
      "device": jax.devices()[0].device_kind, "devices": devices,
      "jax_version": jax.__version__, **extra,
  }
  path = member.run / member.run.RESULTS
  if jax.process_index() == 0:
    run_lib.write_atomic(path, json.dumps(results, indent=2) + "\n")
  main = ", ".join(f"{m} {test[m]:.4f}" for m in info.main_metrics)
  trained = (f"best epoch {best_epoch + 1} of {loop.epoch}"
             f"{' (early stop)' if loop.stopped_early else ''}" if loop.epoch
             else "no training (fitted on the features)")
  print(f"{info.name} {exp.arch.name} {exp.strategy.name} lr={config.lr:g} "
        f"seed={config.seed}: {trained}; test {main} -> {path}")
  return results
