"""Any folder of images, one sub-folder per class.

Two layouts of manual_dir:

* pooled: ``<class>/<images>`` (images may sit in sub-folders of the class
  folder, e.g. ``<class>/<patient>/<image>``). Test (``test_fraction``) and then
  validation (``val_fraction`` of the rest) are carved, seeded; grouped by patient
  when ``patient_pattern`` extracts a patient id from every image's path, else
  stratified by class (every class must then have enough images for both sides).
* pre-split: ``train/<class>/...``, ``test/<class>/...`` and optionally
  ``val/`` (or ``validation/``, ``valid/``): the given splits are used; a missing
  validation split is carved from train as above.

Images: PNG, JPEG, BMP, TIFF (8 or 16 bit, grayscale or colour) and DICOM
(``.dcm``, ``.dicom``; see :mod:`ftjax.data.dicom`). Other files are listed as
ignored; hidden files and folders (a name starting with '.', e.g.
``<class>/.ipynb_checkpoints/``) are skipped and counted in the summary.

``patient_pattern`` is a regular expression searched in the path relative to
manual_dir; its group ``patient`` (or its first group, or the whole match) is the
patient id, e.g. ``--option 'patient_pattern=(P\\d+)_'``; an image it gives no id (no
match, or an empty group) is an error listing such images.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from ftjax.data import labels, validate
from ftjax.data.base import Example, natural_key
from ftjax.data.errors import DataError
from ftjax.data.user_base import IMAGE_SUFFIXES, UserBuilder, UserConfig

SPLIT_FOLDERS = {"train": ("train",), "validation": ("val", "validation", "valid"),
                 "test": ("test",)}
LAYOUT = ("manual_dir must hold <class>/<images> or train/<class>/<images> and "
          "test/<class>/<images> (images: " + ", ".join(IMAGE_SUFFIXES) + ").")


@dataclasses.dataclass(eq=True)
class FolderConfig(UserConfig):
  """Attributes:
    patient_pattern: regular expression extracting a patient id from each image's
      path relative to manual_dir ('' : no patients, carving stratified by class).
  """

  patient_pattern: str = ""


class Folder(UserBuilder):
  __doc__ = __doc__
  CONFIG_CLASS = FolderConfig
  BASE_NAME = "folder"
  LAYOUT_OPTIONS = ("patient_pattern",)

  # ---- the layout -----------------------------------------------------------

  @staticmethod
  def split_folders(root: Path) -> dict[str, Path]:
    """split -> its folder, for a pre-split layout (empty for a pooled one)."""
    found = {}
    for split, names in SPLIT_FOLDERS.items():
      for name in names:
        if (root / name).is_dir():
          found[split] = root / name
          break
    return found if "train" in found and "test" in found else {}

  @classmethod
  def class_folders(cls, folder: Path) -> list[Path]:
    """The class folders of ``folder``; an error if there is none."""
    found = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                   key=lambda p: natural_key(p.name))
    if not found:
      raise DataError(f"{validate.shown(folder)}: no class folders found (an empty folder?). "
                      f"{LAYOUT}")
    return found

  @classmethod
  def read_labels(cls, root: Path, config: FolderConfig) -> tuple[dict[str, str], bool]:
    if config.multilabel:
      raise DataError("--option multilabel=true: class folders give one class per image. "
                      "Use --dataset csv for several labels per image, or leave multilabel out.")
    folders = cls.split_folders(root) or {"train": root}
    seen: dict[str, str] = {}
    for folder in folders.values():
      for class_folder in cls.class_folders(folder):
        seen.setdefault(class_folder.name, validate.shown(class_folder))
    return seen, False

  # ---- examples ---------------------------------------------------------------

  def _list_examples(self, root: Path) -> dict[str, list[Example]]:
    pattern = self._pattern()
    folders = self.split_folders(root)
    hidden: list[Path] = []
    if not folders:
      pool = self._images(root, root, pattern, hidden)
      given = {"train": pool}
    else:
      self._ignore_other_top_level(root, folders, hidden)
      given = {split: self._images(root, folder, pattern, hidden)
               for split, folder in folders.items()}
    if hidden:
      self._notes["hidden"] = (f"skipped {len(hidden)} hidden file(s) (a name or folder "
                               f"starting with '.'), e.g. {validate.shown(hidden[0])}")
    if pattern is not None:
      self._check_patients(root, pattern, [e for split in given.values() for e in split])
    if not folders:
      return self.three_way(pool, validate.shown(root))
    return self.with_validation(given, validate.shown(folders["train"]))

  @staticmethod
  def _check_patients(root: Path, pattern: re.Pattern, examples: list[Example]) -> None:
    """Every image has a patient id, or grouping would silently stop for all of them."""
    without = [e.key for e in examples if not e.patient_id]
    if without:
      raise DataError(f"{validate.shown(root)}: patient_pattern {pattern.pattern!r} gives no "
                      f"patient id for {len(without)} of {len(examples)} images "
                      f"({labels.listed(without)}): no match in the path, or an empty group. "
                      "Fix the pattern so that it extracts an id from every image's path "
                      "relative to manual_dir, or leave patient_pattern out (splits are then "
                      "stratified by class).")

  def _pattern(self) -> re.Pattern | None:
    text = self.builder_config.patient_pattern
    if not text:
      return None
    try:
      return re.compile(text)
    except re.error as exc:
      raise DataError(f"--option patient_pattern={text}: not a regular expression ({exc}). "
                      "Give one whose group extracts the patient id, e.g. (P\\d+)_.") from None

  def _images(self, root: Path, folder: Path, pattern: re.Pattern | None,
              hidden: list[Path]) -> list[Example]:
    """Every image under the class folders of ``folder``, labelled by its class folder
    (hidden files and folders added to ``hidden``)."""
    examples = []
    for class_folder in self.class_folders(folder):
      label = self.label_index(class_folder.name, validate.shown(class_folder))
      found = 0
      for path in validate.walk(class_folder, IMAGE_SUFFIXES, hidden):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
          self.ignore(path, "not an image file (" + ", ".join(IMAGE_SUFFIXES) + ")")
          continue
        relative = path.relative_to(root).as_posix()
        examples.append(Example(key=relative, source=str(path), label=label,
                                patient_id=self._patient(pattern, relative)))
        found += 1
      if not found:
        raise DataError(f"{validate.shown(class_folder)}: class folder holds no images "
                        f"({', '.join(IMAGE_SUFFIXES)}). Add its images or remove the folder.")
    for path in sorted(folder.iterdir()):
      if validate.is_hidden(path.name):
        hidden.extend(validate.hidden_files(path))
      elif path.is_file():
        self.ignore(path, "a file next to the class folders, not inside one")
    return examples

  @staticmethod
  def _patient(pattern: re.Pattern | None, relative: str) -> str:
    """The patient id in ``relative``; '' where the pattern finds none (refused later,
    naming every such image)."""
    match = pattern.search(relative) if pattern is not None else None
    if match is None:
      return ""
    if "patient" in pattern.groupindex:
      return match.group("patient") or ""
    return (match.group(1) if pattern.groups else match.group(0)) or ""

  def _ignore_other_top_level(self, root: Path, folders: dict[str, Path],
                              hidden: list[Path]) -> None:
    used = set(folders.values())
    for path in sorted(root.iterdir()):
      if validate.is_hidden(path.name):
        hidden.extend(validate.hidden_files(path))
      elif path not in used:
        self.ignore(path, "not a train/val/test folder of the pre-split layout")
