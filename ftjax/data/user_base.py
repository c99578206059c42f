"""The base of the user's own datasets' generic builders (folder, csv, npz): their
config, the checks every one shares, and how a prepared one records its layout.
Which builders there are and the datasets prepared under a name: `ftjax.data.user`.

``python -m ftjax.data prepare --dataset folder --name knee_xr --manual_dir ~/knee
--data_dir data`` stores the images in ``data/knee_xr/<config>/<version>/``; several
named datasets coexist in one data_dir. A named dataset's layout options (class
names, multi-label flag, main metrics, the builder's column or pattern options)
are fixed when it is prepared and recorded in its metadata, so training, the
sweep and the report find it by name alone (``--config.dataset=knee_xr``).

Class names are read from manual_dir (folder names, CSV labels, .npz labels) unless
declared with ``--option classes=a,b,c``; then a label outside them is an error.
Labels that could be read two ways are refused (:mod:`ftjax.data.labels`); one label
per image or several is read from the layout, or declared with ``--option
multilabel=true|false``. Main metrics: multi-label ``map, auroc``; two classes
``auroc, accuracy``; more ``accuracy, auroc`` (``--option main_metrics=f1,accuracy``).

Before anything is stored, the final splits are checked (``check_splits``): byte-
identical images under two labels, or in two splits, are refused (the latter allowed
with ``allow_duplicates=true``), so are given splits that share a patient
(``allow_shared_patients=true``) and a split holding one class of a single-label
dataset, where AUROC is undefined (``allow_one_class_split=true``); the split actually
made (images, share and patients per split) is recorded and printed.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ftjax.data import duplicates, labels, splits, validate
from ftjax.data.base import Example, ImageBuilder, ImageConfig
from ftjax.data.errors import DataError

NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
METRICS = ("accuracy", "auroc", "map", "kappa", "f1")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
DICOM_SUFFIXES = (".dcm", ".dicom")
# Config fields fixed per named dataset (recorded in its metadata): one name is one
# set of images, labels and splits; only the resize varies between its configs.
LAYOUT_FIELDS = ("classes", "multilabel", "main_metrics", "val_fraction", "test_fraction",
                 "seed", "allow_duplicates", "allow_one_class_split", "allow_shared_patients")
BOOL_FIELDS = ("multilabel", "allow_duplicates", "allow_one_class_split",
               "allow_shared_patients")
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


@dataclasses.dataclass(eq=True)
class UserConfig(ImageConfig):
  """Attributes:
    classes: class names (empty: read from manual_dir).
    multilabel: several labels per image (sigmoid/BCE) instead of one class (None:
      read from the layout).
    main_metrics: the two headline metrics (empty: by label type, see above).
    test_fraction: share held out as the test split where manual_dir has none.
    allow_duplicates: prepare although an image is byte-identical to one in another
      split (counted in the metadata).
    allow_one_class_split: prepare although a split holds one class only.
    allow_shared_patients: prepare although given splits share a patient.
  """

  classes: tuple[str, ...] = ()
  multilabel: bool | None = None
  main_metrics: tuple[str, ...] = ()
  test_fraction: float = 0.1
  allow_duplicates: bool = False
  allow_one_class_split: bool = False
  allow_shared_patients: bool = False


def as_names(value: Any) -> tuple[str, ...]:
  """'a,b' / ['a', 'b'] / ('a',) -> ('a', 'b'); an option given on the command line."""
  if isinstance(value, str):
    return tuple(v.strip() for v in value.split(",") if v.strip())
  return tuple(str(v) for v in value)


def as_bool(value: Any, option: str) -> bool:
  """True / 'true' / 'yes' / 1 -> True (and the opposites); an option's value."""
  text = str(value).strip().lower()
  if text in _TRUE or text in _FALSE:
    return text in _TRUE
  raise DataError(f"--option {option}={value}: expected true or false.")


def default_metrics(num_classes: int, multilabel: bool) -> tuple[str, ...]:
  if multilabel:
    return ("map", "auroc")
  return ("auroc", "accuracy") if num_classes == 2 else ("accuracy", "auroc")


def load_image(source: str) -> Any:
  """Opens one image file: DICOM through pydicom, everything else through PIL."""
  if source.lower().endswith(DICOM_SUFFIXES):
    from ftjax.data import dicom
    return dicom.read_dicom(source)
  from ftjax.data.base import open_image
  return open_image(source)


class UserBuilder(ImageBuilder, skip_registration=True):
  """Base of the generic builders; a subclass reads one layout."""

  CONFIG_CLASS: ClassVar[type[UserConfig]] = UserConfig
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Give --manual_dir, the folder that holds your images."
  LAYOUT_OPTIONS: ClassVar[tuple[str, ...]] = ()  # the subclass's own layout fields
  BASE_NAME: ClassVar[str] = ""  # 'folder', 'csv', 'npz' (named subclasses keep it)

  load_image = staticmethod(load_image)

  @property
  def MULTILABEL(self) -> bool:  # noqa: N802
    return bool(self.builder_config.multilabel)

  def class_names(self) -> tuple[str, ...]:
    return tuple(self.builder_config.classes)

  @classmethod
  def layout_fields(cls) -> tuple[str, ...]:
    return LAYOUT_FIELDS + cls.LAYOUT_OPTIONS

  @classmethod
  def make_config(cls, **options) -> UserConfig:
    """Layout fields are fixed by the dataset's name, so they stay out of the config
    name: ``r232``."""
    options = dict(options)
    for key in ("classes", "main_metrics"):
      if key in options:
        options[key] = as_names(options[key])
    for key in BOOL_FIELDS:
      if options.get(key) is not None:
        options[key] = as_bool(options[key], key)
    layout = {k: options.pop(k) for k in cls.layout_fields() if k in options}
    config = super().make_config(**options)
    return dataclasses.replace(config, **layout)

  # ---- what subclasses provide -------------------------------------------

  @classmethod
  def read_labels(cls, root: Path, config: UserConfig) -> tuple[dict[str, str], bool]:
    """({each label seen in manual_dir: where it was first seen}, multi-label?),
    cheaply (no image decoded); ``config.multilabel``, where set, is obeyed."""
    raise NotImplementedError

  # ---- shared ---------------------------------------------------------------

  @classmethod
  def discover(cls, root: Path, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` completed with the classes, multi-label flag and main metrics
    read from manual_dir (declared classes are checked, not replaced)."""
    config = cls.make_config(**options)
    seen, multilabel = cls.read_labels(root, config)
    labels.check_names(seen, config.classes, validate.shown(root))
    classes = config.classes or tuple(sorted(seen, key=_class_order))
    metrics = config.main_metrics or default_metrics(len(classes), multilabel)
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or len(metrics) < 1:
      raise DataError(f"--option main_metrics={','.join(metrics)}: {unknown} are not metrics; "
                      f"choose from {', '.join(METRICS)}.")
    if len(classes) < 2 and not multilabel:
      raise DataError(f"{root}: one class ({', '.join(classes) or 'none'}) found; a classifier "
                      "needs at least two. Add the images of the other class(es).")
    return {**options, "classes": classes, "multilabel": multilabel, "main_metrics": metrics}

  def label_index(self, label: str, where: str) -> int:
    """The index of a class name; a DataError naming ``where`` if it is not declared."""
    classes = self.class_names()
    if label not in classes:
      raise DataError(f"{where}: label {label!r} is not among the declared classes "
                      f"{list(classes)}. Add it to --option classes=... or remove these "
                      "images from manual_dir.")
    return classes.index(label)

  def carve(self, examples: list[Example], fraction: float, seed: int, what: str,
            where: str) -> tuple[list[Example], list[Example]]:
    """(kept, held out): grouped by patient where every example has one, else
    stratified by class; a class too small to appear on both sides is an error."""
    if examples and all(e.patient_id for e in examples):
      kept, held = splits.grouped_split([e.patient_id for e in examples], fraction, seed)
    elif self.MULTILABEL:  # no class to stratify by: a seeded split of the images
      kept, held = splits.grouped_split([e.key for e in examples], fraction, seed)
    else:
      self._check_class_sizes(examples, fraction, what, where)
      kept, held = splits.stratified_split([int(e.label) for e in examples], fraction, seed)
    return [examples[i] for i in kept], [examples[i] for i in held]

  def _check_class_sizes(self, examples: list[Example], fraction: float, what: str,
                         where: str) -> None:
    counts = np.bincount([int(e.label) for e in examples], minlength=len(self.class_names()))
    for index, count in enumerate(counts):
      held = int(round(fraction * count))
      if count and (held < 1 or held >= count):
        raise DataError(
            f"{where}: class {self.class_names()[index]!r} has {count} image(s), too few to "
            f"carve a {what} share of {fraction:g} from (it would leave that class out of "
            f"one side). Add images of this class, change {what}_fraction, or remove the "
            "class.")

  def three_way(self, pool: list[Example], where: str) -> dict[str, list[Example]]:
    """train / validation / test carved from one pool (test first)."""
    cfg = self.builder_config
    rest, test = self.carve(pool, cfg.test_fraction, cfg.seed, "test", where)
    train, val = self.carve(rest, cfg.val_fraction, cfg.seed + 1, "val", where)
    self._notes["split"] = (f"{self._carving(pool)}, asked: test {cfg.test_fraction:.0%} "
                            f"(seed {cfg.seed}), validation {cfg.val_fraction:.0%} of the "
                            f"rest (seed {cfg.seed + 1})")
    return {"train": train, "validation": val, "test": test}

  def with_validation(self, given: dict[str, list[Example]],
                      where: str) -> dict[str, list[Example]]:
    """Given splits; a missing validation split carved from train."""
    if given.get("validation"):
      self._notes["split"] = "the given train / validation / test"
      return given
    cfg = self.builder_config
    train, val = self.carve(given["train"], cfg.val_fraction, cfg.seed, "val", where)
    self._notes["split"] = (f"the given train / test; validation asked: {cfg.val_fraction:.0%}"
                            f" of train, {self._carving(given['train'])} (seed {cfg.seed})")
    return {"train": train, "validation": val, "test": given.get("test", [])}

  def check_splits(self, splits: dict[str, list[Example]], root: Path | None) -> None:
    """Refuses leaks and undefined metrics in the final splits; records the split made."""
    cfg = self.builder_config
    where = validate.shown(root) if root is not None else self.name
    if not cfg.allow_shared_patients:
      _check_patients_apart(splits, where)
    self._notes["duplicates"] = duplicates.check(splits, self.MULTILABEL, self.class_names(),
                                                 cfg.allow_duplicates)
    if not self.MULTILABEL and not cfg.allow_one_class_split:
      for split, examples in splits.items():
        self._check_two_classes(split, examples, where)
    self._notes["split"] = f"{self._notes.get('split', '')}; made: {split_sizes(splits)}"

  def _check_two_classes(self, split: str, examples: list[Example], where: str) -> None:
    names = self.class_names()
    counts = np.bincount([int(e.label) for e in examples], minlength=len(names))
    if np.count_nonzero(counts) < 2 <= len(names):
      shown = "; ".join(f"{n}: {c}" for n, c in zip(names, counts.tolist()))
      raise DataError(f"{where}: the {split} split holds one class only ({shown} images), so "
                      "AUROC and the other metrics comparing classes are undefined on it. Give "
                      "it images of at least two classes (another test_fraction, val_fraction "
                      "or seed, or more images), or prepare with --option "
                      "allow_one_class_split=true.")

  def _carving(self, examples: list[Example]) -> str:
    if examples and all(e.patient_id for e in examples):
      return "grouped by patient"
    return "by image (seeded)" if self.MULTILABEL else "stratified by class"

  def _split_generators(self, dl_manager):
    generators = super()._split_generators(dl_manager)
    cfg = self.builder_config
    self.info.metadata["user_dataset"] = {
        "builder": self.BASE_NAME,
        "layout": {k: jsonable(getattr(cfg, k)) for k in self.layout_fields()},
    }
    return generators


def _check_patients_apart(splits: dict[str, list[Example]], where: str) -> None:
  """Given splits (a split column, split folders) that share a patient leak: the model
  is scored on a patient it was trained on."""
  first: dict[str, Example] = {}
  split_of: dict[str, str] = {}
  shared: dict[str, tuple[Example, str, Example, str]] = {}
  for split, examples in splits.items():
    for example in examples:
      patient = example.patient_id
      if not patient:
        continue
      seen = split_of.setdefault(patient, split)
      first.setdefault(patient, example)
      if seen != split and patient not in shared:
        shared[patient] = (first[patient], seen, example, split)
  if shared:
    patient, (one, one_split, other, other_split) = next(iter(shared.items()))
    raise DataError(f"{where}: patient {patient!r} is in the {one_split} split ({one.where}) "
                    f"and the {other_split} split ({other.where}); {len(shared)} patient(s) "
                    "are in more than one split, so the model would be scored on patients it "
                    "was trained on. Put each patient's images in one split, or prepare with "
                    "--option allow_shared_patients=true.")


def split_sizes(splits: dict[str, list[Example]]) -> str:
  """'train 30 images (75.0%, 6 patients), ...': the split as made."""
  total = sum(len(e) for e in splits.values()) or 1
  parts = []
  for split, examples in splits.items():
    patients = len({e.patient_id for e in examples if e.patient_id})
    who = f", {patients} patient{'s' * (patients != 1)}" if patients else ""
    parts.append(f"{split} {len(examples)} images ({len(examples) / total:.1%}{who})")
  return ", ".join(parts)


def _class_order(name: str):
  """Integer labels sort as numbers ('2' < '10'), names alphabetically."""
  return (0, int(name), "") if re.fullmatch(r"-?\d+", name) else (1, 0, name)


def jsonable(value: Any) -> Any:
  return list(value) if isinstance(value, tuple) else value
