"""Typed options: a dataclass field with its default, one line of doc and its check
(choices, minimum). The strategies' options (`ftjax.strategies.base`) and the run's
(`ftjax.run_options`) are such dataclasses, so configs, checks and --help read one table.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


def option(default: Any, doc: str, *, choices: tuple[Any, ...] | None = None,
           minimum: float | None = None) -> Any:
  """A field of an options dataclass: its default, one line of doc and its check."""
  return dataclasses.field(default=default, metadata={"doc": doc, "choices": choices,
                                                      "minimum": minimum})


def check_options(options: Any) -> None:
  """ValueError naming the first field outside its choices or below its minimum."""
  for field in dataclasses.fields(options):
    value, meta = getattr(options, field.name), field.metadata
    if meta.get("choices") and value not in meta["choices"]:
      raise ValueError(f"{field.name} must be one of {meta['choices']}, got {value!r}.")
    minimum = meta.get("minimum")
    if minimum is not None:
      try:
        ok = float(value) >= minimum and not math.isnan(float(value))
      except (TypeError, ValueError):
        ok = False
      if not ok:  # a negative SP weight would reward moving away from w0
        raise ValueError(f"{field.name} must be >= {minimum:g}, got {value!r}.")


def docs(options_class: type) -> dict[str, str]:
  """field -> "doc (default X; one of ...; >= m)" of an options dataclass."""
  out = {}
  for field in dataclasses.fields(options_class):
    meta, notes = field.metadata, [f"default {field.default!r}"]
    if meta.get("choices"):
      notes.append("one of " + ", ".join(map(repr, meta["choices"])))
    if meta.get("minimum") is not None:
      notes.append(f">= {meta['minimum']:g}")
    out[field.name] = f"{meta.get('doc', '')} ({'; '.join(notes)})"
  return out
