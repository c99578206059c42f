"""Run checkpoints in a workdir: the latest (for resuming) and the best (for testing).

  <workdir>/checkpoints/latest/<epoch>/  train state + loop state, every epoch
  <workdir>/checkpoints/best/<epoch>/    params + batch_stats of the best epoch

Orbax writes each checkpoint to a temporary directory
(<epoch>.orbax-checkpoint-tmp-<n>) and renames it to <epoch> when complete;
temporary directories are never listed as steps, so a run killed during a
save resumes from the previous checkpoint, and the next manager removes them.

Integrity: after each save the sha256 of every file of the checkpoint goes to
<workdir>/checkpoints/checksums/<series>-<epoch>.json. A checkpoint that fails
that check, has no checksums, or cannot be read is reported in one line and
moved to <workdir>/checkpoints/damaged/ (kept, not deleted); resuming then
uses the previous latest checkpoint (two are kept), or starts from scratch.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

from ftjax import run as run_lib


def _manager(directory: pathlib.Path, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=False,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(directory.absolute(), options=options)


def _abstract(tree: Any) -> Any:
  return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


def file_digests(directory: pathlib.Path) -> dict[str, str]:
  """Relative path -> sha256 of every file below `directory`."""
  return {path.relative_to(directory).as_posix(): run_lib.file_fingerprint(path)
          for path in sorted(p for p in directory.rglob("*") if p.is_file())}


class DamagedCheckpointError(ValueError):
  """The best checkpoint failed its integrity check (it was moved aside)."""


class RunCheckpoints:
  """The two checkpoint series of one run, each checkpoint verified on restore."""

  def __init__(self, workdir: str | pathlib.Path):
    self.root = pathlib.Path(workdir) / "checkpoints"
    self.latest = _manager(self.root / "latest", keep=2)  # one to fall back on
    self.best = _manager(self.root / "best", keep=1)

  # --- integrity

  def _sums_path(self, series: str, epoch: int) -> pathlib.Path:
    return self.root / "checksums" / f"{series}-{epoch}.json"

  def _record(self, series: str, manager: ocp.CheckpointManager, epoch: int) -> None:
    if jax.process_index() != 0:
      return
    path = self._sums_path(series, epoch)
    run_lib.write_atomic(path, json.dumps(file_digests(self._step_dir(manager, epoch)),
                                          indent=1))
    for old in path.parent.glob(f"{series}-*.json"):  # the manager deleted their steps
      step = old.stem.split("-", 1)[1]
      if step.isdigit() and int(step) not in manager.all_steps():
        old.unlink(missing_ok=True)

  @staticmethod
  def _step_dir(manager: ocp.CheckpointManager, epoch: int) -> pathlib.Path:
    return pathlib.Path(manager.directory) / str(epoch)

  def _problem(self, series: str, manager: ocp.CheckpointManager, epoch: int) -> str | None:
    """Why checkpoint `epoch` of `series` cannot be trusted, or None."""
    try:
      expected = json.loads(self._sums_path(series, epoch).read_text())
    except FileNotFoundError:
      return "it has no checksums (the save was interrupted)"
    except (OSError, ValueError):
      return "its checksums file is unreadable"
    actual = file_digests(self._step_dir(manager, epoch))
    changed = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
    if changed:
      return (f"{len(changed)} file(s) differ from their checksums, e.g. {changed[0]}")
    return None

  def _set_aside(self, series: str, manager: ocp.CheckpointManager, epoch: int,
                 why: str) -> pathlib.Path:
    damaged = self.root / "damaged"
    damaged.mkdir(parents=True, exist_ok=True)
    n = 0
    while (target := damaged / f"{series}-{epoch}{f'.{n}' if n else ''}").exists():
      n += 1
    os.replace(self._step_dir(manager, epoch), target)
    self._sums_path(series, epoch).unlink(missing_ok=True)
    manager.reload()
    print(f"warning: checkpoint {self._step_dir(manager, epoch)} is damaged ({why}); "
          f"kept as {target}.", file=sys.stderr, flush=True)
    return target

  def _restore_verified(self, series: str, manager: ocp.CheckpointManager, epoch: int,
                        args: Any) -> Any | None:
    """The restored checkpoint, or None after setting a damaged one aside."""
    why = self._problem(series, manager, epoch)
    if why is None:
      try:
        return manager.restore(epoch, args=args)
      except Exception as error:  # pylint: disable=broad-except
        # Whatever a damaged file makes the reader raise, the checkpoint is unusable.
        why = f"unreadable: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
    self._set_aside(series, manager, epoch, why)
    return None

  # --- latest

  def save_latest(self, epoch: int, state: Any, loop: dict[str, Any]) -> None:
    if epoch in self.latest.all_steps():
      self.latest.delete(epoch)
    self.latest.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop)))
    self.latest.wait_until_finished()
    self._record("latest", self.latest, epoch)

  def restore_latest(self, like_state: Any) -> tuple[Any, dict[str, Any]] | None:
    """(state, loop) of the newest intact checkpoint, or None for a new run."""
    had_any = False
    for epoch in sorted(self.latest.all_steps(), reverse=True):
      had_any = True
      restored = self._restore_verified("latest", self.latest, epoch, ocp.args.Composite(
          state=ocp.args.StandardRestore(_abstract(like_state)), loop=ocp.args.JsonRestore()))
      if restored is not None:
        return restored.state, dict(restored.loop)
    if had_any:
      print(f"warning: no intact checkpoint in {self.latest.directory}: the run starts "
            f"from scratch.", file=sys.stderr, flush=True)
    return None

  # --- best

  def save_best(self, epoch: int, variables: dict[str, Any]) -> None:
    # A run killed after this save but before the epoch's latest checkpoint runs the
    # epoch again and saves the same step: replace it.
    if epoch in self.best.all_steps():
      self.best.delete(epoch)
    self.best.save(epoch, args=ocp.args.StandardSave(variables), force=True)
    self.best.wait_until_finished()
    self._record("best", self.best, epoch)

  def restore_best(self, like_variables: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    epoch = self.best.latest_step()
    if epoch is None:
      raise FileNotFoundError(f"{self.best.directory}: no best checkpoint yet; the run "
                              f"has not finished an epoch.")
    restored = self._restore_verified("best", self.best, epoch,
                                      ocp.args.StandardRestore(_abstract(like_variables)))
    if restored is None:
      raise DamagedCheckpointError(
          f"{self.best.directory}: the best checkpoint (epoch {epoch + 1}) is damaged and "
          f"was moved to {self.root / 'damaged'}; its weights cannot be recovered: "
          f"train the run again (--overwrite moves this run aside).")
    return epoch, restored

  def close(self) -> None:
    self.latest.close()
    self.best.close()
