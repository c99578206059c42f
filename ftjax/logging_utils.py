"""Per-epoch metrics to metrics.jsonl and TensorBoard; per-tensor trees (Auto-RGN's
weights) to <name>.jsonl; how much the libraries log on the console."""

from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Any

from absl import flags, logging
import jax
import numpy as np

VERBOSITY_ENV = "FTJAX_VERBOSITY"  # debug, info, warning, error: library logging level


def quiet_libraries() -> None:
  """Orbax, TFDS and JAX log every checkpoint rename and dataset load at INFO (a
  12-run sweep: two thousand lines); ftjax prints what a user needs. So library
  logging is at ERROR and TFDS's progress bars are off, unless asked for:
  FTJAX_VERBOSITY=info (any command) or absl's --verbosity / -v (the absl commands).
  """
  level = os.environ.get(VERBOSITY_ENV, "").strip().lower()
  if level:
    logging.set_verbosity(level)
    return
  if "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present:
    return
  logging.set_verbosity(logging.ERROR)
  tfds = sys.modules.get("tensorflow_datasets")
  if tfds is not None:
    tfds.disable_progress_bar()


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
