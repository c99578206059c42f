"""CheXpert chest radiographs, 5 observations, multi-label.

manual_dir holds ``CheXpert-v1.0-small/`` (or is it; the full-resolution
``CheXpert-v1.0/`` works too) with ``train.csv`` and ``valid.csv`` (columns
Path, Sex, Age, Frontal/Lateral, AP/PA and the 14 observations) and the image
folders the ``Path`` column points to.

Labels: frontal views only; classes [Cardiomegaly, Edema, Consolidation,
Atelectasis, Pleural Effusion]; uncertain (-1) -> 1 for Edema and Atelectasis
(U-Ones) and -> 0 for the others (U-Zeros); blank -> 0.

Splits: CheXpert's ``valid.csv`` (200 patients) is the test split, as paper
Table 2's 200 evaluation patients. ``unit='patient'`` (default) keeps one
image per patient, the first frontal image by path of the patient's first
study (Table 2: 64,540 training patients); ``unit='image'`` keeps every
frontal image. Validation is ``val_fraction`` of the training patients
(grouped, seeded); train + validation correspond to Table 2's training count.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path, PurePosixPath

from ftjax.data import splits
from ftjax.data.base import (NOT_SKIPPED, Example, ImageBuilder, ImageConfig, natural_key,
                             read_csv)
from ftjax.data.errors import DataError

WHERE = ("Download CheXpert-v1.0-small from https://stanfordmlgroup.github.io/competitions/"
         "chexpert/ and extract it into manual_dir.")
CLASSES = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")
U_ONES = ("Edema", "Atelectasis")
_FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
_PATIENT = re.compile(r"patient\d+")


@dataclasses.dataclass(eq=True)
class ChexpertConfig(ImageConfig):
  """Attributes:
    unit: 'patient' (one frontal image per patient, Table 2) or 'image'.
  """

  unit: str = "patient"


def map_label(value: str, column: str, where: str) -> float:
  """CheXpert's value -> 0/1 under the U-Ones/U-Zeros policy above."""
  if value == "":
    return 0.0
  try:
    v = float(value)
  except ValueError:
    v = None
  if v == 1.0:
    return 1.0
  if v == 0.0:
    return 0.0
  if v == -1.0:
    return 1.0 if column in U_ONES else 0.0
  raise DataError(f"{where}: unknown label {value!r} in column {column!r}; "
                  f"expected 1.0, 0.0, -1.0 or blank. Use the original CSV. {NOT_SKIPPED}")


class Chexpert(ImageBuilder):
  __doc__ = __doc__
  CONFIG_CLASS = ChexpertConfig
  NAME_FIELDS = ("unit",)
  CLASS_NAMES = CLASSES
  MULTILABEL = True
  MAIN_METRICS = ("map", "auroc")
  REGISTRY_NAMES = {"chexpert": {}}
  HOMEPAGE = "https://stanfordmlgroup.github.io/competitions/chexpert/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = WHERE
  BUILDER_CONFIGS = [ChexpertConfig(name=f"{u}_r{r}", unit=u, resize=r)
                     for u in ("patient", "image") for r in (232, 256)]

  def _root(self, manual_dir: Path) -> Path:
    for name in _FOLDERS:
      if (manual_dir / name / "train.csv").exists():
        return manual_dir / name
    if (manual_dir / "train.csv").exists():
      return manual_dir
    raise DataError(f"{manual_dir / _FOLDERS[0]}: folder with train.csv not found. {WHERE}")

  def _csv(self, root: Path, name: str) -> list[Example]:
    cfg = self.builder_config
    if cfg.unit not in ("patient", "image"):
      raise ValueError(f"unit must be 'patient' or 'image', got {cfg.unit!r}")
    path = root / name
    rows = read_csv(path, ["Path", "Frontal/Lateral", *CLASSES], WHERE)
    examples = []
    for i, row in enumerate(rows):
      rel = PurePosixPath(row["Path"])
      # CSV paths start with the dataset folder's own name.
      image = (root.parent / rel) if rel.parts and rel.parts[0] == root.name else root / rel
      self._listed.append(image)
      view = row["Frontal/Lateral"]
      if view == "Lateral":
        continue
      if view != "Frontal":  # anything else would silently drop the image
        raise DataError(f"{path} row {i + 2}: unknown view {view!r} in column "
                        f"'Frontal/Lateral'; expected Frontal or Lateral. {WHERE} {NOT_SKIPPED}")
      match = _PATIENT.search(row["Path"])
      if match is None:
        raise DataError(f"{path} row {i + 2}: no patientNNNNN in Path {row['Path']!r}. {WHERE}")
      where = f"{path} row {i + 2}"
      label = [map_label(row[c], c, where) for c in CLASSES]
      examples.append(Example(key=row["Path"], source=str(image), label=label,
                              patient_id=match.group(0), origin=where))
    examples.sort(key=lambda e: natural_key(e.key))
    if cfg.unit == "patient":
      first: dict[str, Example] = {}
      for e in examples:
        first.setdefault(e.patient_id, e)
      examples = list(first.values())
    return examples

  def _list_examples(self, root: Path) -> dict[str, list[Example]]:
    cfg = self.builder_config
    root = self._root(root)
    self._listed: list[Path] = []  # every row's image, lateral ones included
    train_all = self._csv(root, "train.csv")
    test = self._csv(root, "valid.csv")
    for folder in ("train", "valid"):
      if (root / folder).is_dir():
        self.ignore_unused(root / folder, self._listed, "not listed in train.csv or valid.csv",
                           (".jpg", ".png"))
    train, val = splits.grouped_split([e.patient_id for e in train_all], cfg.val_fraction,
                                      cfg.seed)
    self._notes["split"] = (f"test = CheXpert valid.csv; validation = {cfg.val_fraction:.0%} "
                            f"of the training patients (seed {cfg.seed}); unit = {cfg.unit}; "
                            "frontal views only")
    return {"train": [train_all[i] for i in train],
            "validation": [train_all[i] for i in val], "test": test}
