"""The user's own datasets by name: the generic builders (folder, csv, npz) and the
datasets prepared under a name the user picks (``--name knee_xr``), found again by that
name alone. The builders' shared base is `ftjax.data.user_base`.
"""

from __future__ import annotations

import json
import os
import types
from pathlib import Path
from typing import Any, Sequence

from ftjax.data.csv_table import CsvTable
from ftjax.data.errors import DataError
from ftjax.data.folder import Folder
from ftjax.data.npz import Npz
from ftjax.data.registry import DatasetInfo
from ftjax.data.user_base import NAME_RE, UserBuilder, jsonable


# ---- named datasets ---------------------------------------------------------


def generic_builders() -> dict[str, type[UserBuilder]]:
  return {"folder": Folder, "csv": CsvTable, "npz": Npz}


def check_name(name: str, taken: Sequence[str]) -> str:
  if not NAME_RE.fullmatch(name or ""):
    raise DataError(f"--name {name!r}: a dataset name is lower-case letters, digits and "
                    "'_', starting with a letter (e.g. knee_xr).")
  if name in taken:
    raise DataError(f"--name {name}: the name of a built-in dataset; choose another.")
  return name


def named_builder(base: type[UserBuilder], name: str) -> type[UserBuilder]:
  """``base`` under the dataset name ``name`` (its folder in data_dir)."""
  return types.new_class(name, (base,), {"skip_registration": True},
                         lambda ns: ns.update({"name": name, "__module__": base.__module__}))


def prepared_layout(data_dir: str | os.PathLike, name: str) -> dict[str, Any] | None:
  """The recorded builder and layout of the user dataset ``name`` in ``data_dir``,
  from any of its prepared configs; None if there is none."""
  root = Path(data_dir) / name
  if not NAME_RE.fullmatch(name) or not root.is_dir():
    return None
  for meta_path in sorted(root.glob("*/*/metadata.json")):
    try:
      meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
      continue
    if isinstance(meta, dict) and isinstance(meta.get("user_dataset"), dict):
      return meta["user_dataset"]
  return None


def check_same_layout(builder_name: str, recorded: dict[str, Any] | None, name: str,
                      options: dict[str, Any], data_dir) -> None:
  """Preparing ``name`` again (another resize) must describe the same dataset."""
  if recorded is None:
    return
  wanted = {k: jsonable(v) for k, v in options.items() if k in recorded["layout"]}
  if recorded["builder"] != builder_name or wanted != recorded["layout"]:
    raise DataError(
        f"{Path(data_dir) / name}: a dataset named {name} is prepared there from other "
        f"data ({recorded['builder']}: {recorded['layout']}; now {builder_name}: {wanted}). "
        "Choose another --name, or delete that folder to prepare it anew.")


def _layout_options(layout: dict[str, Any]) -> dict[str, Any]:
  return {k: tuple(v) if isinstance(v, list) else v for k, v in layout.items()}


def make_info(name: str, builder_name: str, layout: dict[str, Any]) -> DatasetInfo:
  """The DatasetInfo of a prepared (or being prepared) user dataset: its classes,
  multi-label flag and main metrics are the recorded layout's."""
  builder = named_builder(generic_builders()[builder_name], name)
  options = _layout_options(layout)
  return builder.declare(name, options, options["classes"], options["multilabel"],
                         options["main_metrics"])


def find_prepared(name: str, data_dir) -> DatasetInfo | None:
  layout = prepared_layout(data_dir, name)
  if layout is None or layout.get("builder") not in generic_builders():
    return None
  return make_info(name, layout["builder"], layout["layout"])


def split_option_defaults() -> dict[str, Any]:
  """The options a user dataset takes in ``config.dataset_options``: none (its splits
  are fixed when it is prepared; prepare another name for other splits)."""
  return {}
