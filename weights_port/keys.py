"""What every state-dict mapping shares: its errors and how it walks and lists keys."""

from __future__ import annotations

from typing import Any


class KeyMismatchError(ValueError):
  pass


class ShapeMismatchError(ValueError):
  pass


def flat(tree: dict[str, Any], prefix: tuple[str, ...] = ()):
  """(path, leaf) of a nested dict, in its order."""
  for name, value in tree.items():
    if isinstance(value, dict):
      yield from flat(value, prefix + (name,))
    else:
      yield prefix + (name,), value


def listing(keys, limit: int = 8) -> str:
  """The first `limit` sorted keys, and how many more there are."""
  keys = sorted(keys)
  more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
  return ", ".join(keys[:limit]) + more
