"""Run checkpoints in a workdir: the latest (for resuming) and the best (for testing).

  <workdir>/checkpoints/latest/<epoch>/  train state + loop state, every epoch
  <workdir>/checkpoints/best/<epoch>/    params + batch_stats of the best epoch

Orbax writes each checkpoint to a temporary directory
(<epoch>.orbax-checkpoint-tmp-<n>) and renames it to <epoch> when complete;
temporary directories are never listed as steps, so a run killed during a
save resumes from the previous checkpoint, and the next manager removes them.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


def _manager(directory: pathlib.Path) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                         enable_async_checkpointing=False,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(directory.absolute(), options=options)


def _abstract(tree: Any) -> Any:
  return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


class RunCheckpoints:
  """The two checkpoint series of one run."""

  def __init__(self, workdir: str | pathlib.Path):
    root = pathlib.Path(workdir) / "checkpoints"
    self.latest = _manager(root / "latest")
    self.best = _manager(root / "best")

  def save_latest(self, epoch: int, state: Any, loop: dict[str, Any]) -> None:
    if epoch in self.latest.all_steps():
      self.latest.delete(epoch)
    self.latest.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop)))
    self.latest.wait_until_finished()

  def restore_latest(self, like_state: Any) -> tuple[Any, dict[str, Any]] | None:
    """(state, loop) of the newest complete checkpoint, or None for a new run."""
    epoch = self.latest.latest_step()
    if epoch is None:
      return None
    restored = self.latest.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(like_state)), loop=ocp.args.JsonRestore()))
    return restored.state, dict(restored.loop)

  def save_best(self, epoch: int, variables: dict[str, Any]) -> None:
    # A run killed after this save but before the epoch's latest checkpoint runs the
    # epoch again and saves the same step: replace it.
    if epoch in self.best.all_steps():
      self.best.delete(epoch)
    self.best.save(epoch, args=ocp.args.StandardSave(variables), force=True)
    self.best.wait_until_finished()

  def restore_best(self, like_variables: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    epoch = self.best.latest_step()
    if epoch is None:
      raise FileNotFoundError(f"{self.best.directory}: no best checkpoint yet; the run "
                              f"has not finished an epoch.")
    return epoch, self.best.restore(
        epoch, args=ocp.args.StandardRestore(_abstract(like_variables)))

  def close(self) -> None:
    self.latest.close()
    self.best.close()
