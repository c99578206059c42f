"""Any MedMNIST (v2/v3) subset from its ``.npz`` file.

manual_dir holds ``<subset>.npz`` (e.g. ``pathmnist.npz`` or
``pathmnist_224.npz``) with ``train_images``, ``train_labels``, ``val_*`` and
``test_*``. Object arrays are refused (nothing is unpickled) and every
array's declared size is checked against the file before it is read. Labels of shape (N, 1) are multi-class, (N, C) with C > 1
multi-label (ChestMNIST).

Splits: MedMNIST's own train / val / test (val is the validation split). Not
in paper Table 2.
"""

from __future__ import annotations

import dataclasses
import math
import zipfile
from pathlib import Path

import numpy as np

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


def _identity(image: np.ndarray) -> np.ndarray:
  return image


def check_npz_arrays(path: Path) -> None:
  """Refuses object arrays, and arrays whose .npy header declares more bytes than
  the file holds, before numpy reads them.

  numpy allocates the declared shape before reading, so a header can ask for
  terabytes in a few bytes; each member's stored size bounds what it may declare.
  """
  try:
    archive = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as exc:
    raise DataError(f"{path}: not a readable .npz ({exc}). Re-download it. {WHERE}") from exc
  with archive:
    for info in archive.infolist():
      name = info.filename.removesuffix(".npy")
      with archive.open(info) as member:
        try:
          version = np.lib.format.read_magic(member)
          read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                         else np.lib.format.read_array_header_2_0)
          shape, _, dtype = read_header(member, max_header_size=10_000)
        except ValueError as exc:
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
    return tuple(str(i) for i in range(self._spec()[0]))

  def _list_examples(self, root: Path) -> dict[str, list[Example]]:
    path = root / f"{self.builder_config.subset}.npz"
    if not path.is_file():
      raise DataError(f"{path}: file not found. {WHERE}")
    num_classes, multilabel = self._spec()
    check_npz_arrays(path)
    try:
      data = np.load(path, allow_pickle=False)
      arrays = {k: data[k] for k in data.files}
    except ValueError as exc:
      raise DataError(f"{path}: cannot load without pickle ({exc}); use the official "
                      f"MedMNIST .npz. {WHERE}") from exc
    except (OSError, EOFError) as exc:
      raise DataError(f"{path}: not a readable .npz ({exc}). Re-download it. {WHERE}") from exc
    out = {}
    for split, prefix in (("train", "train"), ("validation", "val"), ("test", "test")):
      for kind in ("images", "labels"):
        if f"{prefix}_{kind}" not in arrays:
          raise DataError(f"{path}: missing array '{prefix}_{kind}'. {WHERE}")
      images, labels = arrays[f"{prefix}_images"], arrays[f"{prefix}_labels"]
      if images.ndim not in (3, 4) or labels.ndim not in (1, 2):
        raise DataError(f"{path}: {prefix}_images has shape {images.shape} and "
                        f"{prefix}_labels {labels.shape}; expected (N, H, W[, 3]) images "
                        f"and (N, 1) or (N, C) labels. {WHERE}")
      labels = labels.reshape(len(labels), -1)
      if len(images) != len(labels):
        raise DataError(f"{path}: {prefix}_images has {len(images)} entries but "
                        f"{prefix}_labels has {len(labels)}.")
      if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.bool_)
              or (np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)))):
        raise DataError(f"{path}: {prefix}_labels holds {labels.dtype} values that are not "
                        f"whole class indices (e.g. {labels.ravel()[:5].tolist()}); use the "
                        f"official MedMNIST .npz. {WHERE}")
      if (labels < 0).any() or (labels >= (2 if multilabel else num_classes)).any():
        raise DataError(f"{path}: unknown label in {prefix}_labels (values "
                        f"{np.unique(labels)[:10].tolist()}); expected 0..{num_classes - 1}.")
      out[split] = [Example(key=f"{prefix}_{i:06d}", source=images[i],
                            label=(labels[i].astype(np.float32).tolist() if multilabel
                                   else int(labels[i, 0])))
                    for i in range(len(images))]
    self._notes["split"] = "MedMNIST's official train / val / test"
    return out
