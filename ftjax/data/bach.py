"""BACH (ICIAR 2018) breast histology photos, 4 classes.

manual_dir holds ``ICIAR2018_BACH_Challenge/Photos/{Normal,Benign,InSitu,
Invasive}/*.tif`` (or ``Photos/`` directly, or is ``Photos``). A sub-folder
of ``Photos`` with another name that holds photos is an unknown label and an
error; every other file (the ground-truth CSV next to the class folders, files
that are not .tif) is listed as ignored. A class folder that is a symbolic link
is an error (its photos would be labelled twice).

Splits: BACH has no public test labels, so the 400 labelled photos are split
stratified and seeded into 360 train+validation / 40 test (``test_fraction``
0.1, paper Table 2: 360 / 40); validation is ``val_fraction`` of the 360,
stratified. BACH has no patient ids in its release, so splits are by image.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ftjax.data import splits, validate
from ftjax.data.base import Example, ImageBuilder, ImageConfig, natural_key
from ftjax.data.errors import DataError

WHERE = ("Download the BACH photos (ICIAR2018_BACH_Challenge.zip) from "
         "https://iciar2018-challenge.grand-challenge.org/ and extract them into manual_dir.")
CLASSES = ("Normal", "Benign", "InSitu", "Invasive")
_EXTS = (".tif", ".tiff")


@dataclasses.dataclass(eq=True)
class BachConfig(ImageConfig):
  """Attributes:
    test_fraction: share of every class held out as the test split.
  """

  test_fraction: float = 0.1


class Bach(ImageBuilder):
  __doc__ = __doc__
  CONFIG_CLASS = BachConfig
  CLASS_NAMES = ("normal", "benign", "in_situ", "invasive")
  MAIN_METRICS = ("accuracy", "kappa")
  REGISTRY_NAMES = {"bach": {}}
  HOMEPAGE = "https://iciar2018-challenge.grand-challenge.org/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = WHERE
  BUILDER_CONFIGS = [BachConfig(name=f"r{r}", resize=r) for r in (232, 256)]

  def _photos(self, manual_dir: Path) -> Path:
    for candidate in (manual_dir / "ICIAR2018_BACH_Challenge" / "Photos",
                      manual_dir / "Photos", manual_dir):
      if candidate.is_dir() and any((candidate / c).is_dir() for c in CLASSES):
        return candidate
    raise DataError(f"{manual_dir / 'ICIAR2018_BACH_Challenge' / 'Photos'}: folder not found "
                    f"(class folders {list(CLASSES)}). {WHERE}")

  def _list_examples(self, root: Path) -> dict[str, list[Example]]:
    cfg = self.builder_config
    photos = self._photos(root)
    examples = []
    for path in validate.walk(photos, _EXTS):
      parts = path.relative_to(photos).parts
      is_photo = path.suffix.lower() in _EXTS and not path.name.startswith("._")
      if len(parts) != 2 or not is_photo:
        self.ignore(path, "not a .tif photo in a class folder")
      elif parts[0] not in CLASSES:
        raise DataError(f"{path.parent}: unknown label folder {parts[0]!r}; expected one "
                        f"of {list(CLASSES)}. {WHERE}")
      else:
        examples.append(Example(key=f"{parts[0]}/{path.stem}", source=str(path),
                                label=CLASSES.index(parts[0])))
    # folder by folder, photos in natural order, as the split's seed expects
    examples.sort(key=lambda e: (Path(e.source).parent.name, natural_key(Path(e.source).name)))
    missing = [c for c in CLASSES if not (photos / c).is_dir()]
    if missing:
      raise DataError(f"{photos}: class folder(s) {missing} not found. {WHERE}")
    rest, test = splits.stratified_split([e.label for e in examples], cfg.test_fraction,
                                         cfg.seed)
    rest_examples = [examples[i] for i in rest]
    train, val = splits.stratified_split([e.label for e in rest_examples], cfg.val_fraction,
                                         cfg.seed + 1)
    self._notes["split"] = (f"stratified by class: test {cfg.test_fraction:.0%} (seed "
                            f"{cfg.seed}), validation {cfg.val_fraction:.0%} of the rest "
                            f"(seed {cfg.seed + 1})")
    return {"train": [rest_examples[i] for i in train],
            "validation": [rest_examples[i] for i in val],
            "test": [examples[i] for i in test]}
