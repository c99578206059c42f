"""Label values of the user's own data: what is normalised, what is refused.

Only what has one reading is normalised: an integer written as a float (``1.0``,
``2.00``) is that integer. Everything with two readings is refused, naming where
it was found: an empty or NaN-like label, two spellings that differ only in case
(``Cat`` / ``cat``), integer classes with a gap (``0, 2``: is class 1 missing?).
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from ftjax.data.errors import DataError

# Values that say "no label": a spreadsheet's or pandas' missing value.
MISSING = frozenset({"", "nan", "na", "n/a", "none", "null", "nil", "?", "-", "missing"})
_WHOLE_FLOAT = re.compile(r"(-?\d+)\.0*")
_INTEGER = re.compile(r"-?\d+")
SHOWN = 3  # rows or files named in a message; the count covers the rest


def normalised(value: str) -> str:
  """``1.0`` -> ``1``, ``-0.0`` -> ``0``; anything else as it is."""
  match = _WHOLE_FLOAT.fullmatch(value)
  return str(int(match.group(1))) if match else value


def is_missing(value: str) -> bool:
  return value.strip().lower() in MISSING


def listed(items: Sequence[str], total: int | None = None) -> str:
  """'a, b, c and 4 more': the first few of ``items`` (``total`` of them in all)."""
  total = len(items) if total is None else total
  shown = ", ".join(items[:SHOWN])
  return f"{shown} and {total - SHOWN} more" if total > SHOWN else shown


def is_integer(name: str) -> bool:
  return bool(_INTEGER.fullmatch(name))


def _spelling_free(name: str) -> str:
  """What is left of a name when case and the writing of a number are ignored."""
  name = normalised(name)
  return str(int(name)) if is_integer(name) else name.casefold()


def check_names(first_seen: Mapping[str, str], declared: Sequence[str], source: str) -> None:
  """Class names read from the data (name -> where it was first seen; ``source``: the
  data): none NaN-like, no two that differ only in case or in how a number is written
  ('1', '1.0' and '01': class folders), and, unless the classes are declared, no gap in
  integer classes."""
  missing = next((n for n in first_seen if is_missing(n)), None)
  if missing is not None:
    raise DataError(f"{first_seen[missing]}: label {missing!r} is empty or NaN-like, not a "
                    "class name. Give these images their class.")
  by_fold: dict[str, list[str]] = {}
  for name in first_seen:
    by_fold.setdefault(_spelling_free(name), []).append(name)
  clash = next((names for names in by_fold.values() if len(names) > 1), None)
  if clash is not None:
    spelled = " and ".join(f"{n!r} ({first_seen[n]})" for n in clash[:SHOWN])
    raise DataError(f"labels {spelled} differ only in case or in how a number is written: "
                    "one class spelled two ways, or two classes? Spell each class one way, or "
                    "declare the classes with --option classes=a,b,c.")
  if declared or not first_seen or not all(is_integer(n) for n in first_seen):
    return
  present = {int(n) for n in first_seen}
  missing = sorted(set(range(min(present), max(present) + 1)) - present)
  if missing:
    raise DataError(f"{source}: the labels are the integers "
                    f"{', '.join(map(str, sorted(present)))}; class(es) "
                    f"{listed([str(m) for m in missing])} have no image (an empty class "
                    "gives undefined metrics). Add their images, renumber the classes "
                    "without gaps, or, if these numbers are names, declare them: "
                    f"--option classes={','.join(map(str, sorted(present)))}.")

