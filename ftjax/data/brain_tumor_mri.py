"""Figshare brain tumour T1w CE-MRI (Cheng et al.), 3 classes.

manual_dir holds the figshare ``.mat`` files ``1.mat`` .. ``3064.mat`` (any
sub-folders, e.g. the four ``brainTumorDataPublic_*`` zips extracted side by
side). Each is MATLAB v7.3 (HDF5) with group ``cjdata``: ``image`` (int16
2-D), ``label`` (1 meningioma, 2 glioma, 3 pituitary) and ``PID`` (uint16
character codes). Images are min-max scaled to uint8 per slice (a constant
slice keeps its value, clipped to 0..255), then replicated to 3 channels.
Files that are not ``.mat`` are listed as ignored.

Splits: no official split; patients (233) are split, seeded, so that
``test_fraction`` = 0.177 of the slices are test (paper Table 2: 2,522 /
542); validation is ``val_fraction`` of the training slices, grouped by
patient. Train + validation correspond to Table 2's training count.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ftjax.data import splits, validate
from ftjax.data.base import NOT_SKIPPED, Example, ImageBuilder, ImageConfig, natural_key
from ftjax.data.errors import DataError

WHERE = ("Download the brain tumour dataset from https://doi.org/10.6084/m9.figshare.1512427 "
         "and extract the .mat files into manual_dir.")
CLASSES = ("meningioma", "glioma", "pituitary")


@dataclasses.dataclass(eq=True)
class BrainTumorMriConfig(ImageConfig):
  """Attributes:
    test_fraction: share of slices (whole patients) held out as the test split.
  """

  test_fraction: float = 0.177


# Sizes read from a file are checked before anything is allocated: a hostile
# HDF5 file can declare a (10^6, 10^6) array in a few hundred bytes.
MAX_SLICE_PIXELS = 4096 * 4096  # the dataset's slices are 512 x 512 (a few 256 x 256)
MAX_PID_CHARS = 64              # patient ids are 6 or 7 characters


def _read_array(group, name: str, max_size: int) -> np.ndarray:
  """cjdata/<name> as a numeric array, its declared size checked before it is read."""
  import h5py
  item = group[name]  # a KeyError names a missing field
  if not isinstance(item, h5py.Dataset):
    raise ValueError(f"cjdata/{name} is a {type(item).__name__}, not an array")
  if item.dtype.kind not in "biuf":
    raise ValueError(f"cjdata/{name} holds {item.dtype} values, not numbers")
  if item.size > max_size:
    raise ValueError(f"cjdata/{name} declares shape {item.shape} ({item.size:,} values, "
                     f"more than the {max_size:,} this dataset's files hold)")
  return np.asarray(item[()])


def read_header(path: str) -> tuple[float, str]:
  """(label, 1..3 in a valid file, and patient id) of one .mat file."""
  import h5py
  with h5py.File(path, "r") as f:
    data = f["cjdata"]
    values = _read_array(data, "label", max_size=1).ravel()
    if values.size != 1:
      raise ValueError(f"cjdata/label holds {values.size} values, not one")
    # Kept as read: a fraction or NaN must not be truncated into some class.
    label = float(values[0])
    pid = "".join(chr(int(c)) for c in _read_array(data, "PID", MAX_PID_CHARS).ravel()
                  if int(c))
  return label, pid


def load_mat(path: str) -> np.ndarray:
  """The slice as a 2-D array in MATLAB orientation (h5py reads it transposed)."""
  import h5py
  with h5py.File(path, "r") as f:
    image = _read_array(f["cjdata"], "image", MAX_SLICE_PIXELS)
  if image.ndim != 2 or image.size == 0:
    raise ValueError(f"cjdata/image has shape {image.shape}, expected a 2-D slice")
  return np.ascontiguousarray(image.T)


class BrainTumorMri(ImageBuilder):
  __doc__ = __doc__
  CONFIG_CLASS = BrainTumorMriConfig
  CLASS_NAMES = CLASSES
  MAIN_METRICS = ("accuracy", "f1")
  REGISTRY_NAMES = {"brain_tumor_mri": {}}
  HOMEPAGE = "https://doi.org/10.6084/m9.figshare.1512427"
  MANUAL_DOWNLOAD_INSTRUCTIONS = WHERE
  BUILDER_CONFIGS = [BrainTumorMriConfig(name=f"r{r}", resize=r) for r in (232, 256)]

  load_image = staticmethod(load_mat)

  def _list_examples(self, root: Path) -> dict[str, list[Example]]:
    cfg = self.builder_config
    files = []
    for path in validate.walk(root, (".mat",)):
      if path.suffix != ".mat" or path.name.startswith("._"):
        self.ignore(path, "not a MATLAB .mat slice file")
      else:
        files.append(path)
    files.sort(key=lambda p: natural_key(str(p)))
    if not files:
      raise DataError(f"{root}: no .mat files found. {WHERE}")
    examples, bad = [], []
    for path in files:
      try:
        if path.stat().st_size == 0:
          raise OSError("file is empty (0 bytes)")
        label, pid = read_header(str(path))
      except (OSError, KeyError, ValueError, TypeError) as exc:
        message = (f"{path}: cannot read MATLAB v7.3 file ({exc}). Re-download it, or "
                   "prepare with --skip_bad to skip and count bad files.")
        if not self.skip_bad:
          raise DataError(message) from exc
        bad.append(message)
        continue
      if label not in (1, 2, 3):
        raise DataError(f"{path}: unknown label {label:g} in cjdata/label; expected 1, 2 or 3. "
                        f"{WHERE} {NOT_SKIPPED}")
      examples.append(Example(key=path.stem, source=str(path), label=int(label) - 1,
                              patient_id=pid or f"unknown_{path.stem}"))
    self._notes["unreadable_headers_skipped"] = len(bad)
    self._notes["unreadable_header_files"] = bad[:200]
    if bad:
      print(f"brain_tumor_mri: skipped {len(bad)} unreadable .mat file(s)")
    result, self._notes["split"] = splits.grouped_three_way(
        examples, cfg.test_fraction, cfg.val_fraction, cfg.seed)
    return result
