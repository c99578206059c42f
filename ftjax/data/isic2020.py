"""ISIC 2020 melanoma classification (dermoscopy, benign vs malignant).

manual_dir holds the ISIC 2020 training download: the ground-truth CSV
(``ISIC_2020_Training_GroundTruth.csv``, ``..._v2.csv`` or Kaggle's
``train.csv``; columns image_name, patient_id, target), the JPEG folder
(``ISIC_2020_Training_JPEG/train``, ``train`` or ``jpeg/train``) and
``ISIC_2020_Training_Duplicates.csv`` (image_name_1, image_name_2).

Splits: the listed duplicates are removed (every ``image_name_2``: 33,126 ->
32,701 images, paper 3.3). The remaining images are split by patient, seeded,
``test_fraction`` = 0.2 into test (paper Table 2: 26,160 / 6,541, an 80/20
split), and ``val_fraction`` of the rest, grouped by patient, becomes
validation; train + validation correspond to Table 2's training count.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ftjax.data import splits
from ftjax.data.base import NOT_SKIPPED, Example, ImageBuilder, ImageConfig, read_csv
from ftjax.data.errors import DataError

WHERE = ("Download the ISIC 2020 training JPEGs, ground truth CSV and duplicates list "
         "from https://challenge2020.isic-archive.com/ into manual_dir.")
_CSV_NAMES = ("ISIC_2020_Training_GroundTruth_v2.csv", "ISIC_2020_Training_GroundTruth.csv",
              "train.csv")
_IMAGE_DIRS = ("ISIC_2020_Training_JPEG/train", "ISIC_2020_Training_JPEG", "train",
               "jpeg/train")
DUPLICATES = "ISIC_2020_Training_Duplicates.csv"


@dataclasses.dataclass(eq=True)
class Isic2020Config(ImageConfig):
  """Attributes:
    test_fraction: share of patients' images held out as the test split.
  """

  test_fraction: float = 0.2


def _first(root: Path, names, what: str) -> Path:
  for name in names:
    if (root / name).exists():
      return root / name
  raise DataError(f"{root}: none of {list(names)} found ({what}). {WHERE}")


class Isic2020(ImageBuilder):
  __doc__ = __doc__
  CONFIG_CLASS = Isic2020Config
  CLASS_NAMES = ("benign", "malignant")
  MAIN_METRICS = ("auroc", "accuracy")
  REGISTRY_NAMES = {"isic2020": {}}
  HOMEPAGE = "https://challenge2020.isic-archive.com/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = WHERE
  BUILDER_CONFIGS = [Isic2020Config(name=f"r{r}", resize=r) for r in (232, 256)]

  def _list_examples(self, root: Path) -> dict[str, list[Example]]:
    cfg = self.builder_config
    csv_path = _first(root, _CSV_NAMES, "ground truth CSV")
    image_dir = _first(root, _IMAGE_DIRS, "JPEG folder")
    rows = read_csv(csv_path, ["image_name", "patient_id", "target"], WHERE)
    dup_rows = read_csv(root / DUPLICATES, ["image_name_1", "image_name_2"], WHERE)
    duplicates = {r["image_name_2"] for r in dup_rows}
    examples = []
    for i, row in enumerate(rows):
      if not row["image_name"]:
        raise DataError(f"{csv_path} row {i + 2}: empty image_name. {WHERE} {NOT_SKIPPED}")
      if row["image_name"] in duplicates:
        continue
      if row["target"] not in ("0", "1"):
        raise DataError(f"{csv_path}: unknown label target={row['target']!r} for "
                        f"{row['image_name']} (row {i + 2}); expected 0 or 1. {WHERE} "
                        f"{NOT_SKIPPED}")
      patient = row["patient_id"] or f"unknown_{row['image_name']}"
      examples.append(Example(key=row["image_name"],
                              source=str(image_dir / f"{row['image_name']}.jpg"),
                              label=int(row["target"]), patient_id=patient,
                              origin=f"{csv_path} row {i + 2}"))
    self._notes["duplicates_removed"] = len(rows) - len(examples)
    listed = [image_dir / f"{r['image_name']}.jpg" for r in rows]
    self.ignore_unused(image_dir, listed, f"not listed in {csv_path.name}", (".jpg",))
    result, self._notes["split"] = splits.grouped_three_way(
        examples, cfg.test_fraction, cfg.val_fraction, cfg.seed)
    return result
