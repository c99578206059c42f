"""Several runs of one dataset x arch x strategy trained at once, in one compiled step
(the library of `python -m ftjax.multirun`).

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

import itertools
import json
import pathlib
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ftjax import distributed, step
from ftjax.engine import checkpoints, experiment, fit, loop
from ftjax import run as run_lib
from ftjax.engine.experiment import Experiment, model_variables


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
  if config.get("cache_features", False):
    raise ValueError("config.cache_features is for single ftjax.train runs; LP on cached "
                     "features is a few matmuls per epoch already. Set "
                     "--config.cache_features=False, or run each LP with ftjax.train.")
  experiment.fit_crop(config)
  configs = run_configs(config, lrs, seeds)
  for run_config in configs:
    experiment.check_config(run_config)
  exp = experiment.load(config)
  runs = [run_lib.RunDir(pathlib.Path(workdir) / run_lib.relative_path(
      c.dataset, c.arch, c.strategy, c.lr, c.seed)) for c in configs]
  group = run_lib.RunDir(runs[0].path.parents[1] / "multirun" / (
      f"lr{'-'.join(f'{lr:g}' for lr in lrs)}_seed{'-'.join(map(str, seeds))}"))
  # Validated: now claim each run's directory (refusing one of another identity).
  for run, run_config in zip(runs, configs):
    run.check_writable()
    run.claim_and_record(experiment.recorded_config(run_config),
                         run_lib.run_identity(run_config, exp.builder))
  group.check_writable()
  if exp.strategy.fit is not None:
    return _fit_group(exp, configs, runs, group)
  members = [loop.Member(c, run) for c, run in zip(configs, runs)]

  # Each run's optimizer state holds its own learning rate.
  state = _stack([step.create_train_state(exp.strategy_with_lr(m.config.lr),
                                          exp.initial_variables(m.config))
                  for m in members])
  group_ckpts = checkpoints.RunCheckpoints(group.path)
  restored = group_ckpts.restore_latest(state)
  if restored is not None:
    state, saved = restored
    print(f"{group.path}: resuming after epoch {saved['epoch']}.")
  else:
    saved = {"epoch": 0, "loops": [None] * len(members), "diverged": [None] * len(members)}
  for member, saved_loop, diverged in zip(members, saved["loops"], saved["diverged"]):
    member.start(saved_loop, diverged)
  if jax.device_count() > 1:
    print(f"multirun: training on 1 of {jax.device_count()} devices; start one group per "
          f"device (CUDA_VISIBLE_DEVICES=i) to use the others.", file=sys.stderr)

  def checkpoint(epoch, state):
    group_ckpts.save_latest(epoch, state, {
        "epoch": epoch, "loops": [m.loop.to_json() for m in members],
        "diverged": [m.diverged for m in members]})

  runner = GroupRunner(exp, members)
  state = loop.run_epochs(exp, runner, state, members, epoch=saved["epoch"],
                          checkpoint=checkpoint,
                          max_epochs_this_call=max_epochs_this_call,
                          raise_divergence=False)
  results = loop.finish(exp, runner, state, members, devices=1)
  group_ckpts.close()
  return results


def _fit_group(exp: Experiment, configs: list[ml_collections.ConfigDict],
               runs: list[run_lib.RunDir], group: run_lib.RunDir) -> list[dict[str, Any]]:
  """Training-free runs (kNN), each fitted as ftjax.train fits it (a finished one is
  read back); one features directory, so seeds of one backbone share its features."""
  results = []
  for run_config, run in zip(configs, runs):
    if run.is_finished(run_lib.run_identity(run_config, exp.builder)):
      results.append(json.loads((run / run.RESULTS).read_text()))
    else:
      results.append(fit.fit_and_evaluate(exp, run_config, run, group / "features"))
  return results


class GroupRunner:
  """The group's epoch: one compiled, vmapped step advances every run.

  One data stream per distinct seed; runs of the same seed read the same batches.
  """

  def __init__(self, exp: Experiment, members: list[loop.Member]):
    self.exp = exp
    self.extra_metrics = {"multirun": len(members)}
    self.device = distributed.DataParallel(jax.devices()[:1])
    run_seeds = [m.config.seed for m in members]
    self.seeds = sorted(set(run_seeds))
    # Each run's row of the per-seed batches (unused with one shared stream).
    self.seed_row = jnp.asarray([self.seeds.index(s) for s in run_seeds])
    self.shared = len(self.seeds) == 1
    self.count = len(members)  # each run's lr is in its optimizer state
    keys = [jax.random.split(jax.random.key(s)) for s in run_seeds]
    self.step_keys = jnp.stack([k[0] for k in keys])
    self.probe_keys = jnp.stack([k[1] for k in keys])
    self._steps: dict[int, Any] = {}
    self._start = jax.jit(self._start_epoch, donate_argnums=(0,))

  def _per_run(self, batches):
    """The runs' batches and their vmap axis: the one shared stream as it is, or each
    run's row of the per-seed batches."""
    if self.shared:
      return batches, None
    return jax.tree_util.tree_map(lambda x: x[self.seed_row], batches), 0

  def _group_step(self, phase: int):
    if phase in self._steps:
      return self._steps[phase]
    exp = self.exp
    # One transform for every run: each run's learning rate is in its optimizer state.
    fn = step.make_step_fn(exp.model, exp.strategy, exp.strategy.plan.phases[phase].trainable,
                           loss=exp.loss_name, compute_dtype=exp.compute_dtype)

    def one(run_state, batch, key, global_step):
      return fn(run_state, batch, jax.random.fold_in(key, global_step))

    def advance(states, batches, global_step):
      batches, batch_axis = self._per_run(batches)
      return jax.vmap(one, in_axes=(0, batch_axis, 0, None))(
          states, batches, self.step_keys, global_step)

    self._steps[phase] = jax.jit(advance, donate_argnums=(0,))
    return self._steps[phase]

  def _start_epoch(self, states, batches, epoch):
    exp = self.exp
    start = exp.strategy.epoch_start.traceable(step.grad_fn_factory(
        exp.model, loss=exp.loss_name, bn_mode=exp.strategy.bn_mode,
        compute_dtype=exp.compute_dtype), exp.strategy)

    def one(run_state, run_batches, key):
      return start(run_state, run_batches, jax.random.fold_in(key, epoch))

    batches, batch_axis = self._per_run(batches) if batches is not None else (None, None)
    return jax.vmap(one, in_axes=(0, batch_axis, 0))(states, batches, self.probe_keys)

  def _batches(self, epoch: int):
    """Each step's batch: [B, ...] from the one shared stream, else [seeds, B, ...]."""
    exp = self.exp
    loaders = [iter(experiment.epoch_loader(exp.config, exp.sources["train"], epoch, seed))
               for seed in self.seeds]
    for _ in range(exp.steps_per_epoch):
      per_seed = [experiment.train_batch(next(l), exp.info.multilabel) for l in loaders]
      yield per_seed[0] if self.shared else experiment.stack_batches(per_seed)

  def train_epoch(self, state, epoch: int) -> loop.EpochResult:
    exp, config = self.exp, self.exp.config
    advance = self._group_step(exp.strategy.plan.phase_index(epoch))
    batches = self._batches(epoch)
    start = time.perf_counter()
    first, epoch_log = [], None
    hook = exp.strategy.epoch_start
    if hook is not None:
      first = list(itertools.islice(batches, min(hook.batches, exp.steps_per_epoch)))
      # [batches, B, ...] for one shared stream, else [seeds, batches, B, ...].
      hook_batches = (experiment.stack_batches(first, axis=0 if self.shared else 1)
                      if first else None)
      state, log = self._start(state, hook_batches, epoch)
      if log is not None:
        log = jax.device_get(log)  # the steps donate the state it may be part of
        epoch_log = [_unstack(log, i) for i in range(self.count)]
    global_step = int(state.step[0])
    bar = loop.progress_bar(config, epoch, exp.steps_per_epoch, f"{self.count} runs")
    state, losses = loop.run_steps(
        lambda s, batch, i: advance(s, batch, global_step + i), state,
        self.device.prefetch(itertools.chain(first, batches), config.prefetch), bar,
        config.batch_size * self.count)
    step_losses = np.asarray(jax.device_get(losses), np.float32)  # [steps, runs]
    return loop.EpochResult(state, step_losses, global_step, time.perf_counter() - start,
                            epoch_log)

  def variables(self, state, index: int) -> dict[str, Any]:
    return _unstack(model_variables(state), index)

  def validate(self, variables) -> dict[str, float]:
    return self.exp.evaluate(variables, "validation")

  def predict(self, variables, split: str):
    return self.exp.predict(variables, split)
