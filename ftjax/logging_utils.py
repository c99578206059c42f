"""Per-epoch metrics to metrics.jsonl and TensorBoard; per-tensor trees (Auto-RGN's
weights) to <name>.jsonl."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import numpy as np


def _scalar(value: Any) -> Any:
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  return value


class MetricWriter:

  def __init__(self, workdir: str | pathlib.Path):
    self.workdir = pathlib.Path(workdir)
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(str(self.workdir / "tb"))
    except ImportError:  # TensorBoard files are a convenience; jsonl is the record
      self._tb = None

  def _append(self, name: str, record: dict[str, Any]) -> None:
    with open(self.workdir / name, "a") as f:
      f.write(json.dumps({k: _scalar(v) for k, v in record.items()}) + "\n")

  def write_epoch(self, epoch: int, values: dict[str, Any]) -> None:
    self._append("metrics.jsonl", {"epoch": epoch, **values})
    if self._tb is not None:
      for key, value in values.items():
        if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool):
          self._tb.add_scalar(key, float(value), epoch)
      self._tb.flush()

  def write_tree(self, name: str, epoch: int, weights: Any) -> None:
    """A per-tensor tree (Auto-RGN's weights: the per-layer plot) to <name>.jsonl,
    keyed by parameter path."""
    flat = {jax.tree_util.keystr(path): float(value)
            for path, value in jax.tree_util.tree_leaves_with_path(jax.device_get(weights))}
    self._append(f"{name}.jsonl", {"epoch": epoch, "weights": flat})

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
