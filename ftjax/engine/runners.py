"""Epoch runners of one run (`loop.EpochRunner`): ordinary steps, or LP on cached features.

`StepRunner` trains one epoch with the phase's compiled train step over the
shuffled loader, data-parallel over the devices, after the strategy's
epoch-start hook (Auto-RGN's probe and fresh Adam) when it has one.
`CachedFeatureRunner` trains an LP epoch as one compiled scan over the
backbone's cached features and validates on them. The vmapped group runner is
`ftjax.engine.group.GroupRunner`.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftjax import distributed, step
from ftjax.engine import experiment, features, loop
from ftjax.engine.experiment import Experiment, model_variables


class StepRunner:
  """One run's epoch of compiled train steps (one compile per phase)."""

  extra_metrics: dict[str, Any] = {}

  def __init__(self, exp: Experiment, parallel: distributed.DataParallel):
    self.exp, self.parallel = exp, parallel
    # Independent streams: dropout per global step, the epoch-start hook per epoch.
    self.step_rng, self.probe_rng = jax.random.split(jax.random.key(exp.config.seed))
    self._steps: dict[int, Any] = {}
    self._epoch_start = None

  def _train_step(self, phase: int):
    if phase not in self._steps:
      exp = self.exp
      self._steps[phase] = step.make_train_step(
          exp.model, exp.strategy, exp.strategy.plan.phases[phase].trainable,
          loss=exp.loss_name, compute_dtype=exp.compute_dtype,
          shardings=self.parallel.shardings())
    return self._steps[phase]

  def _start_epoch(self, state, first: list, epoch: int):
    """The strategy's epoch-start hook on the epoch's first minibatches (Auto-RGN:
    weights from them, then a fresh Adam); returns the state and the hook's log."""
    exp, hook = self.exp, self.exp.strategy.epoch_start
    if self._epoch_start is None:
      self._epoch_start = hook.jitted(step.grad_fn_factory(
          exp.model, loss=exp.loss_name, bn_mode=exp.strategy.bn_mode,
          compute_dtype=exp.compute_dtype), exp.strategy)
    batches = self.parallel.shard_stacked(experiment.stack_batches(first)) if first else None
    state, log = self._epoch_start(state, batches, jax.random.fold_in(self.probe_rng, epoch))
    # On the host now: the train steps donate the state the log may be part of.
    return self.parallel.replicate(state), (None if log is None else [jax.device_get(log)])

  def train_epoch(self, state, epoch: int) -> loop.EpochResult:
    exp, config = self.exp, self.exp.config
    phase = exp.strategy.plan.phase_index(epoch)
    train_step = self._train_step(phase)
    loader = (experiment.train_batch(b, exp.info.multilabel)
              for b in experiment.epoch_loader(config, exp.sources["train"], epoch))
    start = time.perf_counter()
    first, epoch_log = [], None
    hook = exp.strategy.epoch_start
    if hook is not None:
      first = list(itertools.islice(loader, min(hook.batches, exp.steps_per_epoch)))
      state, epoch_log = self._start_epoch(state, first, epoch)
    global_step = int(state.step)
    bar = loop.progress_bar(config, epoch, exp.steps_per_epoch,
                            f"{len(exp.strategy.plan.phases[phase].trainable)} module(s) "
                            f"training")
    state, losses = loop.run_steps(
        lambda s, batch, i: train_step(s, batch,
                                       jax.random.fold_in(self.step_rng, global_step + i)),
        state, self.parallel.prefetch(itertools.chain(first, loader), config.prefetch),
        bar, config.batch_size)
    # One host transfer per epoch.
    step_losses = np.asarray(jax.device_get(losses), np.float32)[:, None]
    return loop.EpochResult(state, step_losses, global_step, time.perf_counter() - start,
                            epoch_log)

  def variables(self, state, index: int) -> dict[str, Any]:
    del index  # one member
    return self.parallel.replicate(model_variables(state))

  def validate(self, variables) -> dict[str, float]:
    return self.exp.evaluate(variables, "validation", self.parallel)

  def predict(self, variables, split: str):
    return self.exp.predict(variables, split, self.parallel)


class CachedFeatureRunner(StepRunner):
  """LP on cached backbone features: each epoch is one compiled scan (the strategy
  passed `features.check_supported`)."""

  def __init__(self, exp: Experiment, parallel: distributed.DataParallel, state,
               features_dir):
    super().__init__(exp, parallel)
    config = exp.config
    self._train = features.make_train_epoch(exp.model, exp.strategy, loss=exp.loss_name,
                                            crop=config.crop)
    self._cached = {}
    for split in ("train", "validation"):
      x, y = features.load_or_extract(
          features_dir,
          {"dataset": exp.info.name, "data_config": exp.builder.builder_config.name,
           "split": split, "arch": exp.arch.name,
           "resize": config.resize or exp.arch.preprocessing.resize},
          exp.model, model_variables(state), exp.sources[split],
          batch_size=config.eval_batch_size, crop=config.crop,
          num_workers=config.num_workers, progress=config.progress)
      self._cached[split] = parallel.replicate((jnp.asarray(x), jnp.asarray(y)))

  def train_epoch(self, state, epoch: int) -> loop.EpochResult:
    config = self.exp.config
    start = time.perf_counter()
    global_step = int(state.step)
    order = features.batch_order(len(self.exp.sources["train"]), config.batch_size,
                                 seed=config.seed, epoch=epoch,
                                 num_workers=config.num_workers)
    state, losses = self._train(state, *self._cached["train"], order, self.step_rng)
    step_losses = np.asarray(jax.device_get(losses), np.float32)[:, None]
    return loop.EpochResult(state, step_losses, global_step, time.perf_counter() - start)

  def validate(self, variables) -> dict[str, float]:
    exp = self.exp
    return features.evaluate(exp.model, variables, *self._cached["validation"],
                             multilabel=exp.info.multilabel,
                             class_names=exp.info.class_names,
                             batch_size=exp.config.eval_batch_size, crop=exp.config.crop)
