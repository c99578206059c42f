"""Dataset, architecture and strategy names given as a config file's argument or on a
command line, checked before anything runs.

Every refusal is one line (a ValueError, printed as `error: ...` by the commands)
naming where the name came from, the name, the valid names and the closest one.

Arguments of the sweep configs (configs/sweep_*.py) have one order, the order of
the run directories <dataset>/<arch>/<strategy>:

  configs/sweep_extended.py:knee_xr,bach/resnet18,resnet50/ft,lp_ft

`datasets[/archs[/strategies]]`, each a comma-separated list; a part left out
or empty keeps the config's own.
"""

from __future__ import annotations

import difflib
from typing import Iterable, Sequence

from ftjax import data
from ftjax.data import user
from ftjax.models import registry as arch_registry
from ftjax.strategies import registry as strategy_registry

SWEEP_ARGUMENT = "datasets[/archs[/strategies]]"
SWEEP_PARTS = ("datasets", "archs", "strategies")
KIND = {"datasets": "dataset", "archs": "architecture", "strategies": "strategy"}
EXAMPLE = {SWEEP_ARGUMENT: "knee_xr,bach/resnet18,resnet50/ft,lp_ft",
           "dataset,strategy[,arch]": "bach,lp_ft,densenet121"}


class UnknownName(ValueError):
  """A name that is not one of the valid ones; the message is one line."""


def archs() -> tuple[str, ...]:
  return tuple(arch_registry.ARCHS)


def strategies() -> tuple[str, ...]:
  return strategy_registry.STRATEGIES


def closest(name: str, valid: Iterable[str]) -> str:
  """' Did you mean 'x'?' for the valid name nearest `name`, or ''."""
  match = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.6)
  return f" Did you mean {match[0]!r}?" if match else ""


def unknown(where: str, kind: str, name: str, valid: Sequence[str], note: str = ""
            ) -> UnknownName:
  return UnknownName(f"{where}: unknown {kind} {name!r}; valid: {', '.join(valid)}."
                     f"{note}{closest(name, valid)}")


def what_it_is(name: str) -> str | None:
  """'an architecture' / 'a strategy' / 'a dataset' for a name of another kind."""
  if name in arch_registry.ARCHS:
    return "an architecture"
  if name in strategy_registry.DEFINITION:
    return "a strategy"
  if name in data.list_datasets():
    return "a dataset"
  return None


def _misplaced(where: str, name: str, kind: str, argument: str, valid: str
               ) -> UnknownName | None:
  """The refusal of a name of another kind (an arch where a dataset goes), or None."""
  other = what_it_is(name)
  if other is None or other.endswith(f" {kind}"):
    return None
  order = f"; the argument is {argument!r}" if argument else ""
  example = f", e.g. {EXAMPLE[argument]!r}" if argument in EXAMPLE else ""
  article = "an" if kind[0] in "aeiou" else "a"
  return UnknownName(f"{where}: {name!r} is {other}, not {article} {kind}{order}{example}; "
                     f"valid {kind} names: {valid}.")


def check_names(where: str, axis: str, names: Sequence[str], valid: Sequence[str],
                argument: str = "") -> tuple[str, ...]:
  """`names` (archs or strategies), each valid, none twice, at least one."""
  names = _listed(where, axis, names)
  for name in names:
    if name not in valid:
      raise (_misplaced(where, name, KIND[axis], argument, ", ".join(valid))
             or unknown(where, KIND[axis], name, valid))
  return names


def check_dataset_names(where: str, names: Sequence[str], argument: str = ""
                        ) -> tuple[str, ...]:
  """Dataset names as a config file's argument, before the data directory is known:
  built-in names, or names a dataset of your own can be prepared under, but not an
  architecture's or a strategy's name."""
  names = _listed(where, "datasets", names)
  builtin = data.list_datasets()
  for name in names:
    misplaced = _misplaced(where, name, "dataset", argument,
                           f"{', '.join(builtin)} or your own dataset's")
    if misplaced is not None:
      raise misplaced
    if name not in builtin and not user.NAME_RE.fullmatch(name):
      raise unknown(where, "dataset", name, builtin, " Your own dataset's name (as prepared "
                    "with python -m ftjax.data prepare --name) is lowercase letters, digits "
                    "and '_', starting with a letter.")
  return names


def check_prepared(where: str, names: Sequence[str], data_dir: str) -> None:
  """Each dataset built in, or prepared in `data_dir` (a sweep checks this before it
  plans a run)."""
  for name in names:
    try:
      data.get_dataset(name, data_dir)
    except ValueError as error:
      valid = data.list_datasets() + data.user_datasets(data_dir)
      raise UnknownName(f"{where}: {str(error).rstrip('.')}.{closest(name, valid)}"
                        ) from None


def _listed(where: str, axis: str, names: Sequence[str]) -> tuple[str, ...]:
  names = tuple(names)
  if not names:
    raise UnknownName(f"{where}: no {KIND[axis]} named; name at least one.")
  if any(not isinstance(n, str) or not n.strip() for n in names):
    raise UnknownName(f"{where}: an empty {KIND[axis]} name in {','.join(map(str, names))!r}.")
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise UnknownName(f"{where}: {KIND[axis]} {twice[0]!r} named twice; name each once.")
  return names


def sweep_argument(where: str, arg: str | None) -> dict[str, tuple[str, ...]]:
  """The parts a sweep config's argument names ('datasets[/archs[/strategies]]'),
  each checked; parts left out or empty are absent from the result."""
  if not arg:
    return {}
  parts = arg.split("/")
  if len(parts) > len(SWEEP_PARTS):
    raise UnknownName(f"{where}: {len(parts)} parts; the argument is {SWEEP_ARGUMENT!r} "
                      f"(at most 3 parts separated by '/').")
  out = {}
  for axis, part in zip(SWEEP_PARTS, parts):
    if not part:
      continue
    names = tuple(n.strip() for n in part.split(","))
    out[axis] = (check_dataset_names(where, names, SWEEP_ARGUMENT) if axis == "datasets"
                 else check_names(where, axis, names, archs() if axis == "archs"
                                  else strategies(), SWEEP_ARGUMENT))
  return out
