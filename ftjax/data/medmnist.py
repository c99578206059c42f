"""Any MedMNIST (v2/v3) subset from its ``.npz`` file.

manual_dir holds ``<subset>.npz`` (e.g. ``pathmnist.npz`` or
``pathmnist_224.npz``) with ``train_images``, ``train_labels``, ``val_*`` and
``test_*``. Object arrays are refused (nothing is unpickled), every
array's declared size is checked against the file, and every member's
checksum verified, before it is read. Labels must have the subset's shape: (N, 1)
for a multi-class subset, (N, C) for multi-label ChestMNIST (C = 14).

Splits: MedMNIST's own train / val / test (val is the validation split). Not
in paper Table 2.
"""

from __future__ import annotations

import dataclasses
import math
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ftjax.data import validate
from ftjax.data.base import Example, ImageBuilder, ImageConfig
from ftjax.data.errors import DataError

WHERE = "Download the MedMNIST .npz files from https://medmnist.com/ into manual_dir."
# subset -> (number of classes, multi-label)
SUBSETS = {"pathmnist": (9, False), "chestmnist": (14, True), "dermamnist": (7, False),
           "octmnist": (4, False), "pneumoniamnist": (2, False), "retinamnist": (5, False),
           "breastmnist": (2, False), "bloodmnist": (8, False), "tissuemnist": (8, False),
           "organamnist": (11, False), "organcmnist": (11, False),
           "organsmnist": (11, False)}


@dataclasses.dataclass(eq=True)
class MedmnistConfig(ImageConfig):
  """Attributes:
    subset: file stem in manual_dir, e.g. 'pathmnist' or 'pathmnist_224'.
  """

  subset: str = "pathmnist"


def index_names(num_classes: int) -> tuple[str, ...]:
  """MedMNIST's classes by index ('0', '1', ...): the .npz files carry no names."""
  return tuple(str(i) for i in range(num_classes))


def _identity(image: np.ndarray) -> np.ndarray:
  return image


# What a damaged zip can raise while it is read (zlib: a damaged compressed member,
# NotImplementedError: an unknown compression method, EOFError: a member cut short).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError,
               ValueError, KeyError)


# Deflate shrinks MedMNIST's image arrays a few times and their label arrays some
# tens of times; a member inflating more than this (and past 1 MiB) is refused.
MAX_INFLATION = 200
MIN_CHECKED_RATIO_BYTES = 1 << 20


def read_arrays(path: Path) -> dict[str, np.ndarray]:
  """Every array of a MedMNIST .npz, checked before it is read (``check_npz_arrays``);
  anything that is not an intact .npz of numeric arrays is one DataError."""
  check_npz_arrays(path)
  try:
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  except _ZIP_ERRORS as exc:
    raise DataError(f"{path}: not a readable .npz ({type(exc).__name__}: {exc}). "
                    f"Re-download it. {WHERE}") from None


def check_npz_arrays(path: Path) -> None:
  """Refuses damaged archives, object arrays, and arrays whose .npy header declares
  more bytes than the file holds, before numpy reads them.

  numpy allocates the declared shape before reading, so a header can ask for
  terabytes in a few bytes; each member's stored size bounds what it may declare.
  Every member's checksum is verified first.
  """
  try:
    with zipfile.ZipFile(path) as archive:
      _check_members(path, archive)
  except DataError:
    raise
  except _ZIP_ERRORS as exc:
    raise DataError(f"{path}: not a readable .npz ({type(exc).__name__}: {exc}). "
                    f"Re-download it. {WHERE}") from None


def _check_members(path: Path, archive: zipfile.ZipFile) -> None:
  names = [info.filename for info in archive.infolist()]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise DataError(f"{path}: the archive holds member(s) {twice} more than once (a "
                    f"tampered or badly rewritten file). Re-download it. {WHERE}")
  encrypted = [info.filename for info in archive.infolist() if info.flag_bits & 0x1]
  if encrypted:  # zipfile would raise a RuntimeError asking for a password
    raise DataError(f"{path}: member(s) {encrypted} are encrypted (a damaged or foreign "
                    f"file). Re-download it. {WHERE}")
  for info in archive.infolist():
    # A deflate bomb: checking its CRC alone would inflate gigabytes.
    if info.file_size > MIN_CHECKED_RATIO_BYTES and \
        info.file_size > MAX_INFLATION * info.compress_size:
      raise DataError(f"{path}: member '{info.filename}' inflates {info.compress_size:,} "
                      f"stored bytes to {info.file_size:,}, more than {MAX_INFLATION}x "
                      f"(image arrays compress far less): a damaged or crafted file. "
                      f"Re-download it. {WHERE}")
  # The CRCs first: a damaged .npy header must be refused as damage, not parsed.
  damaged = archive.testzip()
  if damaged is not None:
    raise DataError(f"{path}: member '{damaged}' does not match its checksum (a damaged "
                    f"file). Re-download it. {WHERE}")
  for info in archive.infolist():
    name = info.filename.removesuffix(".npy")
    with archive.open(info) as member:
      try:
        version = np.lib.format.read_magic(member)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(member, max_header_size=10_000)
      except (ValueError, SyntaxError, tokenize.TokenError) as exc:  # a header that is not a dict
        raise DataError(f"{path}: member '{info.filename}' is not a .npy array ({exc}). "
                        f"Re-download it. {WHERE}") from exc
    if dtype.hasobject:
      raise DataError(f"{path}: cannot load without pickle (array '{name}' holds Python "
                      f"objects); use the official MedMNIST .npz. {WHERE}")
    declared = math.prod(shape) * dtype.itemsize
    if declared > info.file_size:
      raise DataError(f"{path}: array '{name}' declares shape {shape} of {dtype} "
                      f"({declared:,} bytes) but the file holds {info.file_size:,}; a "
                      f"damaged or foreign file. Re-download it. {WHERE}")


class Medmnist(ImageBuilder):
  __doc__ = __doc__
  CONFIG_CLASS = MedmnistConfig
  NAME_FIELDS = ("subset",)
  HOMEPAGE = "https://medmnist.com/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = WHERE
  BUILDER_CONFIGS = [MedmnistConfig(name=f"{s}_r{r}", subset=s, resize=r)
                     for s in SUBSETS for r in (232, 256)]

  load_image = staticmethod(_identity)

  def _spec(self) -> tuple[int, bool]:
    base = self.builder_config.subset.split("_")[0]
    if base not in SUBSETS:
      raise ValueError(f"unknown MedMNIST subset {base!r}; valid: {sorted(SUBSETS)}")
    return SUBSETS[base]

  @property
  def MULTILABEL(self) -> bool:  # noqa: N802
    return self._spec()[1]

  def class_names(self) -> tuple[str, ...]:
    return index_names(self._spec()[0])

  @classmethod
  def dataset_infos(cls):
    """One name per subset, ``medmnist_<subset>``; classes are named by their index."""
    return [cls.declare(f"medmnist_{subset}", {"subset": subset}, index_names(n), multilabel,
                        ("map", "auroc") if multilabel else ("accuracy", "auroc"))
            for subset, (n, multilabel) in SUBSETS.items()]

  def _list_examples(self, root: Path) -> dict[str, list[Example]]:
    path = root / f"{self.builder_config.subset}.npz"
    if not path.is_file():
      raise DataError(f"{path}: file not found. {WHERE}")
    num_classes, multilabel = self._spec()
    self._notes["split"] = "MedMNIST's official train / val / test"
    return examples_of(path, read_arrays(path), num_classes, multilabel,
                       self.builder_config.subset, f"use the official MedMNIST .npz. {WHERE}")


SPLIT_PREFIXES = (("train", "train"), ("validation", "val"), ("test", "test"))


def examples_of(path: Path, arrays: dict[str, np.ndarray], num_classes: int, multilabel: bool,
                what: str, fix: str) -> dict[str, list[Example]]:
  """The examples of each split of a MedMNIST-format .npz (arrays checked first)."""
  out = {}
  for split, prefix in SPLIT_PREFIXES:
    images, labels = split_arrays(path, arrays, prefix, num_classes, multilabel, what, fix)
    out[split] = [Example(key=f"{prefix}_{i:06d}", source=images[i],
                          label=(labels[i].astype(np.float32).tolist() if multilabel
                                 else int(labels[i, 0])),
                          origin=f"{path} {prefix}_images[{i}]")
                  for i in range(len(images))]
  return out


def split_arrays(path: Path, arrays: dict[str, np.ndarray], prefix: str, num_classes: int,
                 multilabel: bool, what: str, fix: str) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of one split, the labels of exactly the expected shape: (N, 1)
  class indices below ``num_classes``, or (N, num_classes) 0/1 values."""
  for kind in ("images", "labels"):
    if f"{prefix}_{kind}" not in arrays:
      raise DataError(f"{path}: missing array '{prefix}_{kind}'. {WHERE}")
  images, labels = arrays[f"{prefix}_images"], arrays[f"{prefix}_labels"]
  if images.ndim not in (3, 4):
    raise DataError(f"{path}: {prefix}_images has shape {images.shape}; expected "
                    f"(N, H, W) or (N, H, W, 3) images. {WHERE}")
  columns = num_classes if multilabel else 1
  meaning = (f"{num_classes} 0/1 columns, one per label" if multilabel
             else "one class index per image")
  validate.check_label_shape(
      labels, (len(images), columns), f"{path}: {prefix}_labels",
      f"{what} has {meaning} for each of the {len(images)} {prefix}_images; {fix}")
  if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.bool_)
          or (np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)))):
    raise DataError(f"{path}: {prefix}_labels holds {labels.dtype} values that are not "
                    f"whole class indices (e.g. {labels.ravel()[:5].tolist()}); {fix}")
  if (labels < 0).any() or (labels >= (2 if multilabel else num_classes)).any():
    expected = "0 or 1" if multilabel else f"0..{num_classes - 1}"
    raise DataError(f"{path}: unknown label in {prefix}_labels (values "
                    f"{np.unique(labels)[:10].tolist()}); expected {expected}.")
  return images, labels
