"""Byte-identical images: under two labels (one is wrong) or in two splits (a leak).

Each image's content is hashed before anything is decoded: a file's bytes, or an
array's dtype, shape and bytes (images of an .npz). A missing or unreadable file is
left to the decoding step, which names it. Identical copies in one split are only
counted: they weigh that image twice but leak nothing.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Sequence

import numpy as np

from ftjax.data.base import Example
from ftjax.data.errors import DataError

_DIGEST_BYTES = 16


def digest(source: Any) -> bytes | None:
  """The content hash of one image source; None if it cannot be read here."""
  if isinstance(source, np.ndarray):
    h = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    h.update(f"{source.dtype.str}{source.shape}".encode())
    h.update(np.ascontiguousarray(source).tobytes())
    return h.digest()
  if not isinstance(source, (str, os.PathLike)):
    return None
  try:
    with open(source, "rb") as f:
      return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=_DIGEST_BYTES)).digest()
  except OSError:
    return None


def _label_text(label: Any, multilabel: bool, names: Sequence[str]) -> str:
  if multilabel:
    return "+".join(n for n, v in zip(names, label) if v) or "no label"
  return names[int(label)]


def check(splits: dict[str, list[Example]], multilabel: bool, names: Sequence[str],
          allow_across_splits: bool) -> str:
  """Refuses identical images with different labels, and (unless allowed) identical
  images in different splits; returns what was found, for the metadata."""
  first: dict[bytes, tuple[str, Example]] = {}
  within = across = 0
  for split, examples in splits.items():
    for example in examples:
      key = digest(example.source)
      if key is None:
        continue
      seen = first.setdefault(key, (split, example))
      if seen[1] is example:
        continue
      other_split, other = seen
      if list(np.ravel(other.label)) != list(np.ravel(example.label)):
        raise DataError(
            f"{other.where} and {example.where}: the same image (identical bytes) labelled "
            f"{_label_text(other.label, multilabel, names)!r} and "
            f"{_label_text(example.label, multilabel, names)!r}: one of them is wrong. "
            "Remove the wrong copy or correct its label.")
      if other_split == split:
        within += 1
        continue
      if not allow_across_splits:
        raise DataError(
            f"{other.where} ({other_split}) and {example.where} ({split}): the same image "
            "(identical bytes) in two splits, so the model would be scored on an image it "
            "was trained or selected on. Remove one copy (or give both the same patient id "
            "so that they share a split), or prepare with --option allow_duplicates=true.")
      across += 1
  return (f"{within} identical copies within a split, {across} across splits (allowed)"
          if across else f"{within} identical copies within a split")
