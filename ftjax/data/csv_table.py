"""Images listed in a CSV or TSV table: an image-path column and the labels.

manual_dir holds the table (``csv_file``; default: its one ``.csv`` / ``.tsv``)
and the images; paths are relative to the table's folder and must stay inside
manual_dir. The labels are one of:

* a label column (class names or integers): one class per image;
* several 0/1 columns (``label_columns=a,b,c``): multi-label, named by the columns;
* one label column whose values hold ``label_delimiter`` (``|``), e.g.
  ``effusion|edema``: multi-label, an empty value meaning no label.

Optional: a patient (group) column, so that carving keeps each patient in one
split, and a split column (``train``, ``val`` / ``validation`` / ``valid``,
``test``). Without a split column, test and validation are carved as the
``folder`` builder does. Each column is an option (``path_column``,
``label_column``, ``label_columns``, ``patient_column``, ``split_column``); left
unset, the obvious names are recognised (path/image/file..., label/class/target...,
patient/patient_id/subject..., split/fold/set) and, for the path, a column whose
every value names an image file. Two candidates for one role is an error that
says which option to set.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from ftjax.data import validate
from ftjax.data.base import NOT_SKIPPED, Example, read_csv
from ftjax.data.errors import DataError
from ftjax.data.user import IMAGE_SUFFIXES, UserBuilder, UserConfig, as_names

PATH_NAMES = ("path", "image", "image_path", "imagepath", "file", "filename", "file_name",
              "filepath", "file_path", "image_name", "image_file", "img", "image_id")
LABEL_NAMES = ("label", "labels", "class", "class_name", "target", "diagnosis", "finding",
               "findings", "category")
PATIENT_NAMES = ("patient", "patient_id", "patientid", "subject", "subject_id", "group",
                 "case", "case_id")
SPLIT_NAMES = ("split", "fold", "set", "subset", "partition")
SPLIT_VALUES = {"train": "train", "training": "train", "val": "validation",
                "valid": "validation", "validation": "validation", "test": "test",
                "testing": "test"}
FIX = "Correct the table (see python -m ftjax.data prepare --help and the README)."


@dataclasses.dataclass(eq=True)
class CsvConfig(UserConfig):
  """Attributes:
    csv_file: the table, relative to manual_dir ('' : its one .csv / .tsv file).
    path_column, label_column, patient_column, split_column: column names ('' :
      recognised by name).
    label_columns: comma-separated 0/1 columns of a multi-label table.
    label_delimiter: separates the labels of one image in a label column.
  """

  csv_file: str = ""
  path_column: str = ""
  label_column: str = ""
  label_columns: str = ""
  label_delimiter: str = "|"
  patient_column: str = ""
  split_column: str = ""


@dataclasses.dataclass
class Table:
  """The table read and its columns resolved to roles."""

  path: Path
  rows: list[dict[str, str]]
  path_column: str
  label_column: str  # '' when label_columns are used
  label_columns: tuple[str, ...]
  patient_column: str
  split_column: str
  delimiter: str  # within a label column; '' : one class per image

  @property
  def multilabel(self) -> bool:
    return bool(self.label_columns) or self.delimited

  @property
  def delimited(self) -> bool:
    return bool(self.delimiter) and any(self.delimiter in r[self.label_column]
                                        for r in self.rows)

  def row_where(self, index: int) -> str:
    return f"{validate.shown(self.path)} row {index + 2}"  # the header is row 1

  def labels_of(self, index: int) -> list[str]:
    row = self.rows[index]
    if self.label_columns:
      return [c for c in self.label_columns if self._flag(index, c)]
    value = row[self.label_column]
    if self.delimited:
      return [v.strip() for v in value.split(self.delimiter) if v.strip()]
    if not value:
      raise DataError(f"{self.row_where(index)}: empty {self.label_column!r}. Give every "
                      f"image its class. {FIX} {NOT_SKIPPED}")
    return [value]

  def _flag(self, index: int, column: str) -> bool:
    value = self.rows[index][column]
    if value not in ("0", "1", "0.0", "1.0"):
      raise DataError(f"{self.row_where(index)}: column {column!r} holds {value!r}; the label "
                      f"columns {list(self.label_columns)} hold 0 or 1. {FIX} {NOT_SKIPPED}")
    return value.startswith("1")


def find_table(root: Path, name: str) -> Path:
  if name:
    return root / name
  found = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".tsv"))
  if len(found) != 1:
    listed = ", ".join(p.name for p in found) or "none"
    raise DataError(f"{validate.shown(root)}: {len(found)} .csv/.tsv files ({listed}); name "
                    "the table with --option csv_file=<file in manual_dir>.")
  return found[0]


def delimiter_of(path: Path) -> str:
  """Tab for .tsv; else whichever of , ; tab the header line holds most."""
  if path.suffix.lower() == ".tsv":
    return "\t"
  try:
    with open(path, "rb") as f:
      header = f.readline(1 << 16).decode("utf-8-sig", "replace")
  except OSError:
    return ","  # read_csv names the problem
  return max((",", "\t", ";"), key=header.count)


def choose(path: Path, columns: Sequence[str], given: str, names: Sequence[str], role: str,
           option: str, required: bool) -> str:
  """The column playing ``role``: the option's, else the one with an obvious name."""
  if given:
    if given not in columns:
      raise DataError(f"{validate.shown(path)}: --option {option}={given}: no such column "
                      f"(found {list(columns)}).")
    return given
  found = [c for c in columns if c.lower() in names]
  if len(found) > 1:
    raise DataError(f"{validate.shown(path)}: columns {found} could each be the {role} "
                    f"column; name it with --option {option}=<column>.")
  if not found and required:
    raise DataError(f"{validate.shown(path)}: no {role} column (looked for "
                    f"{', '.join(names[:6])}, ...; found {list(columns)}); name it with "
                    f"--option {option}=<column>.")
  return found[0] if found else ""


def image_path_column(path: Path, rows: list[dict[str, str]], columns: Sequence[str],
                      given: str) -> str:
  """The path column: by option or name, else the one column naming image files."""
  named = choose(path, columns, given, PATH_NAMES, "image-path", "path_column", False)
  if named:
    return named
  by_content = [c for c in columns if all(r[c].lower().endswith(IMAGE_SUFFIXES) for r in rows)]
  if len(by_content) == 1:
    return by_content[0]
  what = (f"columns {by_content} all name image files" if by_content
          else "no column names image files (" + ", ".join(IMAGE_SUFFIXES) + ")")
  raise DataError(f"{validate.shown(path)}: no usable image-path column: none is named like "
                  f"one (path, image, file, ...) and {what}; found {list(columns)}. Name it "
                  "with --option path_column=<column>.")


def read_table(root: Path, config: CsvConfig) -> Table:
  path = find_table(root, config.csv_file)
  rows = read_csv(path, (), delimiter=delimiter_of(path), fix=FIX)
  columns = list(rows[0])
  path_column = image_path_column(path, rows, columns, config.path_column)
  patient = choose(path, columns, config.patient_column, PATIENT_NAMES, "patient", "patient_column",
                   False)
  split = choose(path, columns, config.split_column, SPLIT_NAMES, "split", "split_column", False)
  label_columns = as_names(config.label_columns)
  for column in label_columns:
    choose(path, columns, column, (), "label", "label_columns", True)
  label = ""
  if not label_columns:
    label, label_columns = _labels(path, rows, columns, config.label_column,
                                   {path_column, patient, split})
  return Table(path, rows, path_column, label, label_columns, patient, split,
               "" if label_columns else config.label_delimiter)


def _labels(path: Path, rows, columns, given: str, used: set[str]) -> tuple[str, tuple]:
  """(label column, ()) or ('', 0/1 columns), by option, name or content."""
  named = choose(path, columns, given, LABEL_NAMES, "label", "label_column", False)
  if named:
    return named, ()
  rest = [c for c in columns if c not in used]
  flags = [c for c in rest if all(r[c] in ("0", "1", "0.0", "1.0") for r in rows)]
  if len(rest) > 1 and flags == rest:
    return "", tuple(rest)
  if len(rest) == 1:
    return rest[0], ()
  raise DataError(f"{validate.shown(path)}: which columns hold the labels is ambiguous (no "
                  f"column named label/class/target..., and {rest} are not all 0/1); name "
                  "them with --option label_column=<column> or --option label_columns=a,b,c.")


class CsvTable(UserBuilder):
  __doc__ = __doc__
  name = "csv"
  CONFIG_CLASS = CsvConfig
  BASE_NAME = "csv"
  LAYOUT_OPTIONS = ("csv_file", "path_column", "label_column", "label_columns",
                    "label_delimiter", "patient_column", "split_column")

  @classmethod
  def read_labels(cls, root: Path, config: CsvConfig) -> tuple[list[str], bool]:
    table = read_table(root, config)
    if table.label_columns:
      return list(table.label_columns), True
    return [label for i in range(len(table.rows)) for label in table.labels_of(i)], \
        table.multilabel

  def _list_examples(self, root: Path) -> dict[str, list[Example]]:
    table = read_table(root, self.builder_config)
    self._check_label_type(table)
    examples = [self._example(root, table, i) for i in range(len(table.rows))]
    self.ignore_unused(table.path.parent, [table.path] + [e.source for e in examples],
                       "not listed in " + table.path.name, IMAGE_SUFFIXES)
    if not table.split_column:
      return self.three_way(examples, validate.shown(table.path))
    given: dict[str, list[Example]] = {"train": [], "validation": [], "test": []}
    for index, example in enumerate(examples):
      given[self._split_of(table, index)].append(example)
    return self.with_validation(given, validate.shown(table.path))

  def _check_label_type(self, table: Table) -> None:
    if table.multilabel != self.MULTILABEL:
      kind = "several labels per image" if table.multilabel else "one class per image"
      raise DataError(f"{validate.shown(table.path)}: the table now has {kind}, unlike when "
                      "this dataset was named. Prepare it under another --name.")

  def _example(self, root: Path, table: Table, index: int) -> Example:
    row, where = table.rows[index], table.row_where(index)
    relative = row[table.path_column]
    if not relative:
      raise DataError(f"{where}: empty {table.path_column!r}. Give every row its image's "
                      f"path. {FIX} {NOT_SKIPPED}")
    labels = [self.label_index(label, where) for label in table.labels_of(index)]
    if self.MULTILABEL:
      label = [float(c in labels) for c in range(len(self.class_names()))]
    else:
      label = labels[0]
    patient = row[table.patient_column] if table.patient_column else ""
    if table.patient_column and not patient:
      raise DataError(f"{where}: empty {table.patient_column!r}. Give every row its patient "
                      f"(or group) id, or leave the patient column out. {FIX} {NOT_SKIPPED}")
    return Example(key=relative, source=str(table.path.parent / relative), label=label,
                   patient_id=patient, origin=f"row {index + 2}")

  @staticmethod
  def _split_of(table: Table, index: int) -> str:
    value = table.rows[index][table.split_column]
    if value.lower() not in SPLIT_VALUES:
      raise DataError(f"{table.row_where(index)}: split {value!r} in column "
                      f"{table.split_column!r}; expected train, val (validation, valid) or "
                      f"test. {FIX} {NOT_SKIPPED}")
    return SPLIT_VALUES[value.lower()]
