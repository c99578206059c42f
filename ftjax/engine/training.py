"""One run, trained or resumed: `train_and_evaluate(config, workdir)`.

The paper's protocol: Adam, up to `num_epochs` epochs, early stopping on the
validation split (patience counted in the last phase of the strategy's plan),
the best epoch by validation tested once. Calling it again resumes after the
last finished epoch; a finished run returns its results. `python -m
ftjax.train` is this function on the command line.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import ml_collections

from ftjax import distributed, step
from ftjax.engine import experiment, features, fit, loop, runners
from ftjax import run as run_lib


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
  exp = experiment.load(config)
  parallel = distributed.DataParallel()
  parallel.check_divisible(config.batch_size, "config.batch_size")
  parallel.check_divisible(config.eval_batch_size, "config.eval_batch_size")
  if config.cache_features and exp.strategy.fit is None:  # a fit always caches
    features.check_supported(exp.arch, exp.strategy, compute_dtype=exp.compute_dtype)
  run = run_lib.RunDir(workdir)
  fields = run_lib.run_identity(config, exp.builder)
  recorded = experiment.recorded_config(config)
  if jax.process_index() == 0:
    run.repair_config(recorded, fields)
  if run.is_finished(fields):
    print(f"{run.path}: this run has finished; results in {run / run.RESULTS}.")
    return json.loads((run / run.RESULTS).read_text())
  run.check_writable()
  lock = None if lock_held or jax.process_count() > 1 else run.lock()
  try:
    if _claim(run, recorded, fields, overwrite) and lock is not None:
      # The old run moved aside with its lock file: lock the new directory.
      lock.release()
      lock = run.lock()
    if exp.strategy.fit is not None:  # training-free (kNN)
      return fit.fit_and_evaluate(exp, config, run, run / "features")
    return _train(exp, run, parallel, max_epochs_this_call)
  finally:
    if lock is not None:
      lock.release()


def _claim(run: run_lib.RunDir, recorded: dict[str, Any], fields: dict[str, Any],
           overwrite: bool) -> bool:
  """`RunDir.claim_and_record` by process 0; True if an old run was moved aside.

  With several processes every one checks the directory before process 0 writes
  to it (a peer's half-written identity must not look like another run), so all
  refuse another identity alike.
  """
  if jax.process_count() == 1:
    return run.claim_and_record(recorded, fields, overwrite=overwrite) is not None
  if not overwrite:
    run.claim(fields)  # read-only unless it moves a run aside, which overwrite asks
  distributed.barrier("run directory checked")
  aside = (run.claim_and_record(recorded, fields, overwrite=overwrite)
           if jax.process_index() == 0 else None)
  distributed.barrier("run directory recorded")
  return aside is not None


def _train(exp: experiment.Experiment, run: run_lib.RunDir,
           parallel: distributed.DataParallel, max_epochs_this_call: int | None):
  member = loop.Member(exp.config, run)
  state = parallel.replicate(step.create_train_state(exp.strategy, exp.initial_variables()))
  restored = member.ckpts.restore_latest(state)
  if restored is not None:
    state, saved = restored
    print(f"{run.path}: resuming after epoch {saved['epoch']}.")
  member.start(None if restored is None else saved)
  runner = (runners.CachedFeatureRunner(exp, parallel, state, run / "features")
            if exp.config.cache_features else runners.StepRunner(exp, parallel))
  state = loop.run_epochs(
      exp, runner, state, [member], epoch=member.loop.epoch,
      checkpoint=lambda epoch, s: member.ckpts.save_latest(epoch, s, member.loop.to_json()),
      max_epochs_this_call=max_epochs_this_call)
  [results] = loop.finish(exp, runner, state, [member], devices=parallel.size)
  return results
