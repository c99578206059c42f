"""MURA v1.1 musculoskeletal radiographs, one body part per config (normal/abnormal).

manual_dir holds ``MURA-v1.1/`` (or is it): ``train/XR_SHOULDER/patientNNNNN/
studyK_positive|negative/imageN.png`` and the same under ``valid/``. Images
are found by walking these folders; macOS ``._*`` resource files (counted in
the metadata) and files that are not PNG or JPEG are listed as ignored, a
folder named like an image or a symbolic link to a folder is an error. Every
image takes its study's label (the study folder name).

Splits: MURA's ``valid`` folder is the test split. Paper Table 2 counts MURA
patients (shoulder 2,694 / 173, wrist 3,267 / 207, humerus 587 / 132), so
``unit='patient'`` (default) keeps one image per patient: the first image by
path of the patient's first study. ``unit='image'`` keeps every image.
Validation is ``val_fraction`` of the training patients (grouped, seeded);
train + validation correspond to Table 2's training count.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from ftjax.data import splits, validate
from ftjax.data.base import Example, ImageBuilder, ImageConfig, natural_key, require_dir
from ftjax.data.errors import DataError

WHERE = ("Download MURA v1.1 from https://stanfordmlgroup.github.io/competitions/mura/ "
         "and extract it into manual_dir.")
PARTS = ("shoulder", "wrist", "humerus", "elbow", "forearm", "hand", "finger")
PAPER_PARTS = PARTS[:3]  # the parts the paper studies, one registry name each
_STUDY = re.compile(r"^study(\d+)_(positive|negative)$")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass(eq=True)
class MuraConfig(ImageConfig):
  """Attributes:
    part: body part (paper: shoulder, wrist, humerus).
    unit: 'patient' (one image per patient, Table 2 counts) or 'image'.
  """

  part: str = "shoulder"
  unit: str = "patient"


def dataset_root(manual_dir: Path, folder: str, where: str) -> Path:
  """manual_dir/folder, or manual_dir itself when it is that folder."""
  if (manual_dir / folder).is_dir():
    return manual_dir / folder
  if manual_dir.name == folder:
    return manual_dir
  raise DataError(f"{manual_dir / folder}: folder not found. {where}")


class Mura(ImageBuilder):
  __doc__ = __doc__
  CONFIG_CLASS = MuraConfig
  NAME_FIELDS = ("part", "unit")
  CLASS_NAMES = ("normal", "abnormal")
  MAIN_METRICS = ("accuracy", "kappa")
  REGISTRY_NAMES = {f"mura_{part}": {"part": part} for part in PAPER_PARTS}
  HOMEPAGE = "https://stanfordmlgroup.github.io/competitions/mura/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = WHERE
  BUILDER_CONFIGS = [MuraConfig(name=f"{p}_{u}_r{r}", part=p, unit=u, resize=r)
                     for p in PAPER_PARTS
                     for u in ("patient", "image") for r in (232, 256)]

  def _folder(self, root: Path, split: str) -> list[Example]:
    cfg = self.builder_config
    if cfg.part not in PARTS:
      raise ValueError(f"MURA part must be one of {PARTS}, got {cfg.part!r}")
    if cfg.unit not in ("patient", "image"):
      raise ValueError(f"unit must be 'patient' or 'image', got {cfg.unit!r}")
    folder = require_dir(root / split / f"XR_{cfg.part.upper()}", f"MURA {split} images",
                         WHERE)
    by_patient: dict[str, list[Example]] = {}
    skipped = 0
    for path in sorted(validate.walk(folder, _IMAGE_SUFFIXES),
                       key=lambda p: natural_key(str(p))):
      if path.name.startswith("._"):
        skipped += 1
        self.ignore(path, "a macOS resource fork, not an image")
        continue
      if path.suffix.lower() not in _IMAGE_SUFFIXES:
        self.ignore(path, "not a PNG or JPEG image (MURA's images are .png)")
        continue
      rel = path.relative_to(folder).parts
      if len(rel) != 3:
        raise DataError(f"{path}: expected patientNNNNN/studyK_positive|negative/imageN.png "
                        f"under {folder}. {WHERE}")
      patient, study, _ = rel
      match = _STUDY.match(study)
      if match is None:
        raise DataError(f"{path.parent}: unknown label in study folder name {study!r}; "
                        f"expected studyK_positive or studyK_negative. {WHERE}")
      by_patient.setdefault(patient, []).append(Example(
          key=f"{split}/{patient}/{study}/{path.stem}", source=str(path),
          label=int(match.group(2) == "positive"), patient_id=patient))
    self._notes[f"{split}_resource_fork_files_skipped"] = skipped
    if cfg.unit == "patient":
      # Images are in natural path order, so the first is the first study's first image.
      return [images[0] for images in by_patient.values()]
    return [e for images in by_patient.values() for e in images]

  def _list_examples(self, root: Path) -> dict[str, list[Example]]:
    cfg = self.builder_config
    root = dataset_root(root, "MURA-v1.1", WHERE)
    train_all = self._folder(root, "train")
    test = self._folder(root, "valid")
    train, val = splits.grouped_split([e.patient_id for e in train_all], cfg.val_fraction,
                                      cfg.seed)
    self._notes["split"] = (f"test = MURA valid; validation = {cfg.val_fraction:.0%} of the "
                            f"training patients (seed {cfg.seed}); unit = {cfg.unit}")
    return {"train": [train_all[i] for i in train],
            "validation": [train_all[i] for i in val], "test": test}
