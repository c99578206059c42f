"""Any MedMNIST-format ``.npz`` under any file name: the MedMNIST builder generalised.

manual_dir holds the file (``npz_file``; default: its one ``.npz``) with
``train_images``, ``train_labels``, ``val_*`` and ``test_*`` (the MedMNIST
layout; images (N, H, W) or (N, H, W, 3), any numeric type). Labels (N, 1) are
class indices (one class per image); labels (N, C), C > 1, are C 0/1 columns
(multi-label). Class names are the indices unless declared with
``--option classes=a,b,c`` (then in index order, as many as there are classes).
The file passes the MedMNIST reader's checks (no pickles, sizes, checksums).

Splits: the file's own train / val / test.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ftjax.data import medmnist, validate
from ftjax.data.base import Example
from ftjax.data.errors import DataError
from ftjax.data.user import UserBuilder, UserConfig

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


def label_layout(path: Path, arrays: dict[str, np.ndarray]) -> tuple[int, bool]:
  """(number of classes, multi-label) from the label arrays' shapes and values."""
  label_arrays = [arrays.get(f"{prefix}_labels") for _, prefix in medmnist.SPLIT_PREFIXES]
  if any(a is None for a in label_arrays):
    missing = [p for (_, p), a in zip(medmnist.SPLIT_PREFIXES, label_arrays) if a is None]
    raise DataError(f"{path}: missing array(s) {[f'{p}_labels' for p in missing]}. {FIX}")
  widths = {a.shape[1] if a.ndim == 2 else None for a in label_arrays}
  if len(widths) != 1 or None in widths:
    raise DataError(f"{path}: label arrays of shapes {[a.shape for a in label_arrays]}; "
                    f"expected (N, 1) class indices or (N, C) 0/1 columns in every split. {FIX}")
  width = widths.pop()
  if width > 1:
    return width, True
  top = max(int(a.max()) if a.size else 0 for a in label_arrays)
  return top + 1, False


class Npz(UserBuilder):
  __doc__ = __doc__
  CONFIG_CLASS = NpzConfig
  BASE_NAME = "npz"
  LAYOUT_OPTIONS = ("npz_file",)

  @classmethod
  def read_labels(cls, root: Path, config: NpzConfig) -> tuple[list[str], bool]:
    path = find_npz(root, config.npz_file)
    arrays = medmnist.read_arrays(path)
    num_classes, multilabel = label_layout(path, arrays)
    if config.classes and len(config.classes) != num_classes:
      raise DataError(f"{path}: the labels have {num_classes} classes but --option classes "
                      f"names {len(config.classes)}. Name one class per index.")
    return [str(i) for i in range(num_classes)], multilabel

  def _list_examples(self, root: Path) -> dict[str, list[Example]]:
    path = find_npz(root, self.builder_config.npz_file)
    self._notes["split"] = f"{path.name}'s own train / val / test"
    return medmnist.examples_of(path, medmnist.read_arrays(path), len(self.class_names()),
                                self.MULTILABEL, path.name, FIX)

  @staticmethod
  def load_image(source: np.ndarray) -> np.ndarray:
    return source
