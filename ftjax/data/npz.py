"""Any MedMNIST-format ``.npz`` under any file name: the MedMNIST builder generalised.

manual_dir holds the file (``npz_file``; default: its one ``.npz``) with
``train_images``, ``train_labels``, ``val_*`` and ``test_*`` (the MedMNIST
layout; images (N, H, W) or (N, H, W, 3), any numeric type). Labels (N,) or (N, 1)
are class indices (one class per image); labels (N, C), C > 1, are C 0/1 columns:
one-hot (exactly one 1 in every row) is one class per image, anything else
multi-label (``--option multilabel=true|false`` says which instead). Class names
are the indices unless declared with ``--option classes=a,b,c`` (then in index
order, as many as there are classes); an index between 0 and the largest that no
image has is an error unless the classes are declared.
The file passes the MedMNIST reader's checks (no pickles, sizes, checksums).

Splits: the file's own train / val / test.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ftjax.data import labels, medmnist, validate
from ftjax.data.base import Example
from ftjax.data.errors import DataError
from ftjax.data.user_base import UserBuilder, UserConfig

FIX = "Write the .npz in the MedMNIST layout (see python -m ftjax.data prepare --help)."


@dataclasses.dataclass(eq=True)
class NpzConfig(UserConfig):
  """Attributes:
    npz_file: the file, relative to manual_dir ('' : its one .npz).
  """

  npz_file: str = ""


def find_npz(root: Path, name: str) -> Path:
  if name:
    return root / name
  found = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() == ".npz")
  if len(found) != 1:
    listed = ", ".join(p.name for p in found) or "none"
    raise DataError(f"{validate.shown(root)}: {len(found)} .npz files ({listed}); name the "
                    "file with --option npz_file=<file in manual_dir>.")
  return found[0]


def label_layout(path: Path, arrays: dict[str, np.ndarray],
                 multilabel: bool | None) -> tuple[dict[str, np.ndarray], int, bool]:
  """(the arrays with every split's labels as (N, 1) class indices or (N, C) 0/1
  columns, number of classes, multi-label). Labels (N,) are class indices; (N, C)
  columns with exactly one 1 per row are one-hot (one class per image) unless
  ``multilabel`` says otherwise."""
  names = [f"{prefix}_labels" for _, prefix in medmnist.SPLIT_PREFIXES]
  missing = [n for n in names if n not in arrays]
  if missing:
    raise DataError(f"{path}: missing array(s) {missing}. {FIX}")
  found = {n: arrays[n].reshape(-1, 1) if arrays[n].ndim == 1 else arrays[n] for n in names}
  widths = {a.shape[1] if a.ndim == 2 else None for a in found.values()}
  if len(widths) != 1 or None in widths:
    raise DataError(f"{path}: label arrays of shapes {[arrays[n].shape for n in names]}; "
                    "expected (N,) or (N, 1) class indices, or (N, C) 0/1 columns, in every "
                    f"split. {FIX}")
  width = widths.pop()
  one_hot = width > 1 and all(np.isin(a, (0, 1)).all() and (a.sum(axis=1) == 1).all()
                              for a in found.values())
  if multilabel is None:
    multilabel = width > 1 and not one_hot
  if multilabel and width == 1:
    raise DataError(f"{path}: --option multilabel=true, but the labels are one class index "
                    f"per image (shape {found[names[0]].shape}). Leave multilabel out.")
  if not multilabel and width > 1:
    if not one_hot:
      raise DataError(f"{path}: --option multilabel=false, but {_not_one_hot(found)} of the "
                      f"(N, {width}) labels do not hold exactly one 1. Give each image one "
                      "class, or leave multilabel out (0/1 columns: several labels per image).")
    found = {n: a.argmax(axis=1).reshape(-1, 1) for n, a in found.items()}
  _check_indices(path, found, multilabel)
  top = max(int(a.max()) if a.size else 0 for a in found.values())
  return {**arrays, **found}, width if multilabel or width > 1 else top + 1, multilabel


def _not_one_hot(found: dict[str, np.ndarray]) -> str:
  """'train_labels rows 3, 9' (the first such rows)."""
  for name, a in found.items():
    rows = np.flatnonzero(~(np.isin(a, (0, 1)).all(axis=1) & (a.sum(axis=1) == 1)))
    if rows.size:
      return f"{name} rows {labels.listed([str(r) for r in rows.tolist()])}"
  return "none"


def _check_indices(path: Path, found: dict[str, np.ndarray], multilabel: bool) -> None:
  """Whole, non-negative values (0/1 for multi-label columns), before they are counted."""
  for name, a in found.items():
    whole = np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.bool_) or (
        np.issubdtype(a.dtype, np.floating) and np.all(a == np.round(a)))
    if not whole or (a < 0).any() or (multilabel and (a > 1).any()):
      expected = "0 or 1" if multilabel else "whole class indices 0, 1, ..."
      raise DataError(f"{path}: {name} holds values that are not {expected} (e.g. "
                      f"{np.unique(a)[:5].tolist()}). {FIX}")


class Npz(UserBuilder):
  __doc__ = __doc__
  CONFIG_CLASS = NpzConfig
  BASE_NAME = "npz"
  LAYOUT_OPTIONS = ("npz_file",)

  @classmethod
  def read_labels(cls, root: Path, config: NpzConfig) -> tuple[dict[str, str], bool]:
    path = find_npz(root, config.npz_file)
    arrays, num_classes, multilabel = label_layout(path, medmnist.read_arrays(path),
                                                   config.multilabel)
    if config.classes and len(config.classes) != num_classes:
      raise DataError(f"{path}: the labels have {num_classes} classes but --option classes "
                      f"names {len(config.classes)}. Name one class per index.")
    if not multilabel and not config.classes:
      present = set().union(*(np.unique(arrays[f"{p}_labels"]).tolist()
                              for _, p in medmnist.SPLIT_PREFIXES))
      absent = sorted(set(range(num_classes)) - present)
      if absent:
        raise DataError(f"{path}: class index(es) {labels.listed([str(i) for i in absent])} "
                        f"appear in no split's labels (indices 0..{num_classes - 1}), so their "
                        "classes would be empty and their metrics undefined. Renumber the "
                        "labels without gaps, or declare the classes, one name per index: "
                        "--option classes=a,b,c.")
    return {str(i): validate.shown(path) for i in range(num_classes)}, multilabel

  def _list_examples(self, root: Path) -> dict[str, list[Example]]:
    path = find_npz(root, self.builder_config.npz_file)
    arrays, _, _ = label_layout(path, medmnist.read_arrays(path), self.MULTILABEL)
    self._notes["split"] = f"{path.name}'s own train / val / test"
    return medmnist.examples_of(path, arrays, len(self.class_names()), self.MULTILABEL,
                                path.name, FIX)

  @staticmethod
  def load_image(source: np.ndarray) -> np.ndarray:
    return source
