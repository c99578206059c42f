"""A sweep's axes from its config and command line, checked before anything is planned.

`check_config` refuses a sweep config whose datasets, archs, strategies, learning
rates, seeds or runs_per_gpu cannot run (after the command line's --config.*
overrides); `choose` reads --datasets, --archs, --strategies, --lrs and --seeds:
--archs sets the architectures (any of the registry's), the others pick a subset
of the config's. Each refusal is one line (names.UnknownName, a ValueError).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import ml_collections

from ftjax import names

SUBSET_AXES = ("datasets", "strategies", "lrs", "seeds")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Every axis of the sweep config valid, none empty, no value twice."""
  datasets = names.check_dataset_names("config.datasets", _tuple(config.datasets))
  names.check_prepared("config.datasets", datasets, config.base.data_dir)
  names.check_names("config.archs", "archs", _tuple(config.archs), names.archs())
  names.check_names("config.strategies", "strategies", _tuple(config.strategies),
                    names.strategies())
  _numbers("config.lrs", "lrs", _tuple(config.lrs))
  _numbers("config.seeds", "seeds", _tuple(config.seeds))
  runs_per_gpu = config.get("runs_per_gpu", 1)
  if not _whole(runs_per_gpu) or runs_per_gpu < 1:
    raise names.UnknownName(f"config.runs_per_gpu={runs_per_gpu!r}: must be a whole number "
                            f">= 1 (runs sharing one GPU).")


def choose(config: ml_collections.ConfigDict, given: Mapping[str, str | None]
           ) -> dict[str, list[Any]]:
  """The subsets the command line picks (axis -> values, for sweep.grid); --archs
  replaces config.archs. A flag given an empty value is refused, not read as all."""
  subsets: dict[str, list[Any]] = {}
  for axis, value in given.items():
    if value is None:
      continue
    where = f"--{axis}"
    items = [v.strip() for v in value.split(",")]
    if not value.strip() or not all(items):
      raise names.UnknownName(f"{where}={value!r}: an empty name; write a comma-separated "
                              f"list, or leave the flag out for the config's {axis}.")
    if axis == "archs":
      config.archs = names.check_names(where, "archs", items, names.archs())
      continue
    subsets[axis] = _subset(where, axis, items, _tuple(config[axis]))
  return subsets


def _subset(where: str, axis: str, items: list[str], full: tuple) -> list[Any]:
  if axis in ("lrs", "seeds"):
    values = _numbers(where, axis, [_number(where, axis, item) for item in items])
    full = tuple(float(v) for v in full) if axis == "lrs" else full
  else:
    values = list(names.check_names(where, axis, items, items))  # none empty, none twice
  for item, value in zip(items, values):
    if value not in full:
      raise names.UnknownName(f"{where}: {item!r} is not in the sweep's {axis}; valid: "
                              f"{', '.join(f'{v:g}' if axis == 'lrs' else str(v) for v in full)}."
                              f"{names.closest(item, map(str, full))}")
  return list(values)


def _number(where: str, axis: str, item: str) -> float | int:
  try:
    return float(item) if axis == "lrs" else int(item)
  except ValueError:
    raise names.UnknownName(f"{where}: {item!r} is not a "
                            f"{'number' if axis == 'lrs' else 'whole number'}.") from None


def _numbers(where: str, axis: str, values) -> list:
  """Learning rates finite and > 0, seeds whole and >= 0; none twice, at least one."""
  values = list(values)
  if not values:
    raise names.UnknownName(f"{where}: empty; name at least one.")
  for value in values:
    ok = (_whole(value) and value >= 0) if axis == "seeds" else (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(value) and value > 0)
    if not ok:
      raise names.UnknownName(f"{where}: {value!r} is not a "
                              f"{'whole number >= 0' if axis == 'seeds' else 'finite number > 0'}.")
  twice = sorted({v for v in values if values.count(v) > 1})
  if twice:
    raise names.UnknownName(f"{where}: {twice[0]!r} named twice; name each once.")
  return values


def _whole(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _tuple(value) -> tuple:
  """A config axis as a tuple (a lone string is one name, not its letters)."""
  return (value,) if isinstance(value, (str, int, float)) else tuple(value)
