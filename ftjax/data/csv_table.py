"""Images listed in a CSV or TSV table: an image-path column and the labels.

manual_dir holds the table (``csv_file``; default: its one ``.csv`` / ``.tsv``)
and the images; paths are relative to the table's folder and must stay inside
manual_dir. The labels are one of:

* a label column (class names or integers): one class per image;
* several 0/1 columns (``label_columns=a,b,c``): multi-label, named by the columns;
* one label column whose values hold ``label_delimiter`` (``|``), e.g.
  ``effusion|edema``: multi-label, an empty value meaning no label. Declared with
  ``multilabel=true``, or read so when every row holds the delimiter; some rows
  holding it and others not is an error naming them (``multilabel=false``: each
  value is one class name).

Labels are read as written, except integers written as floats (``1.0`` is ``1``).
An empty or NaN-like label, two labels differing only in case, and integer labels
with a gap are refused (see :mod:`ftjax.data.labels`).

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
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from ftjax.data import labels, validate
from ftjax.data.base import NOT_SKIPPED, Example, read_csv_records
from ftjax.data.errors import DataError
from ftjax.data.user_base import IMAGE_SUFFIXES, UserBuilder, UserConfig, as_names

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
  """The table read, its columns resolved to roles and each row's labels resolved
  (once: every reader below is one pass over the rows)."""

  path: Path
  columns: dict[str, list[str]]  # column -> its values, in row order
  path_column: str
  label_column: str  # '' when label_columns are used
  label_columns: tuple[str, ...]
  patient_column: str
  split_column: str
  labels: list[tuple[str, ...]]  # each row's labels, normalised
  multilabel: bool

  def __len__(self) -> int:
    return len(self.columns[self.path_column])

  def row_where(self, index: int) -> str:
    return f"{validate.shown(self.path)} row {index + 2}"  # the header is row 1

  def rows_where(self, indices: Sequence[int]) -> str:
    """'<table> rows 2, 5, 9 and 4 more'."""
    rows = [str(i + 2) for i in indices]
    return f"{validate.shown(self.path)} row{'s' if len(rows) > 1 else ''} {labels.listed(rows)}"


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


def read_columns(path: Path, fix: str) -> dict[str, list[str]]:
  """Column -> its values, read in one pass, a chunk of rows at a time. A value
  repeated in a column (a label, a split, a patient) is kept as one string object."""
  header, records = read_csv_records(path, (), delimiter=delimiter_of(path), fix=fix)
  values: list[list[str]] = [[] for _ in header]
  kept: list[dict[str, str] | None] = [{} for _ in header]
  chunk: list[list[str]] = []
  for _, fields in records:
    chunk.append(fields)
    if len(chunk) == _CHUNK:
      _add_chunk(values, kept, chunk)
      chunk = []
  _add_chunk(values, kept, chunk)
  return dict(zip(header, values))


def _add_chunk(values: list[list[str]], kept: list[dict[str, str] | None],
               chunk: list[list[str]]) -> None:
  for j, column in enumerate(zip(*chunk)):
    same = kept[j]
    if same is None:
      values[j].extend(column)
      continue
    values[j].extend(map(same.setdefault, column, column))
    if len(same) > _DISTINCT_KEPT:  # a column of distinct values (the paths)
      kept[j] = None


_CHUNK = 8192
_DISTINCT_KEPT = 4096
FLAGS = {"0": False, "0.0": False, "1": True, "1.0": True}


def image_path_column(path: Path, columns: dict[str, list[str]], given: str) -> str:
  """The path column: by option or name, else the one column naming image files."""
  named = choose(path, list(columns), given, PATH_NAMES, "image-path", "path_column", False)
  if named:
    return named
  by_content = [c for c, values in columns.items()
                if all(v.lower().endswith(IMAGE_SUFFIXES) for v in values)]
  if len(by_content) == 1:
    return by_content[0]
  what = (f"columns {by_content} all name image files" if by_content
          else "no column names image files (" + ", ".join(IMAGE_SUFFIXES) + ")")
  raise DataError(f"{validate.shown(path)}: no usable image-path column: none is named like "
                  f"one (path, image, file, ...) and {what}; found {list(columns)}. Name it "
                  "with --option path_column=<column>.")


def read_table(root: Path, config: CsvConfig) -> Table:
  path = find_table(root, config.csv_file)
  columns = read_columns(path, FIX)
  names = list(columns)
  path_column = image_path_column(path, columns, config.path_column)
  patient = choose(path, names, config.patient_column, PATIENT_NAMES, "patient",
                   "patient_column", False)
  split = choose(path, names, config.split_column, SPLIT_NAMES, "split", "split_column", False)
  label_columns = as_names(config.label_columns)
  for column in label_columns:
    choose(path, names, column, (), "label", "label_columns", True)
  label = ""
  if not label_columns:
    label, label_columns = _label_roles(path, columns, config.label_column,
                                        {path_column, patient, split})
  table = Table(path, columns, path_column, label, label_columns, patient, split, [], True)
  if label_columns:
    table.labels = _flag_labels(table, config.multilabel)
  else:
    table.labels, table.multilabel = _column_labels(table, config.label_delimiter,
                                                    config.multilabel)
  return table


def _label_roles(path: Path, columns: dict[str, list[str]], given: str,
                 used: set[str]) -> tuple[str, tuple]:
  """(label column, ()) or ('', 0/1 columns), by option, name or content."""
  named = choose(path, list(columns), given, LABEL_NAMES, "label", "label_column", False)
  if named:
    return named, ()
  rest = [c for c in columns if c not in used]
  flags = [c for c in rest if all(v in FLAGS for v in columns[c])]
  if len(rest) > 1 and flags == rest:
    return "", tuple(rest)
  if len(rest) == 1:
    return rest[0], ()
  raise DataError(f"{validate.shown(path)}: which columns hold the labels is ambiguous (no "
                  f"column named label/class/target..., and {rest} are not all 0/1); name "
                  "them with --option label_column=<column> or --option label_columns=a,b,c.")


def _flag_labels(table: Table, multilabel: bool | None) -> list[tuple[str, ...]]:
  """Each row's labels from 0/1 columns: the columns holding 1."""
  if multilabel is False:
    raise DataError(f"{validate.shown(table.path)}: --option multilabel=false, but the labels "
                    f"are the 0/1 columns {list(table.label_columns)}, one per label. Give one "
                    "label column (--option label_column=<column>) for one class per image, "
                    "or leave multilabel out.")
  for column in table.label_columns:
    bad = [i for i, v in enumerate(table.columns[column]) if v not in FLAGS]
    if bad:
      raise DataError(f"{table.rows_where(bad)}: column {column!r} holds "
                      f"{table.columns[column][bad[0]]!r}; the label columns "
                      f"{list(table.label_columns)} hold 0 or 1. {FIX} {NOT_SKIPPED}")
  kept: dict[tuple[str, ...], tuple[str, ...]] = {}
  rows = zip(*(table.columns[c] for c in table.label_columns))
  return [_kept(kept, tuple(c for c, v in zip(table.label_columns, flags) if FLAGS[v]))
          for flags in rows]


def _kept(kept: dict, value: tuple) -> tuple:
  return kept.setdefault(value, value)


def _column_labels(table: Table, delimiter: str,
                   multilabel: bool | None) -> tuple[list[tuple[str, ...]], bool]:
  """(each row's labels, multi-label?) from one label column: several labels per
  image only if declared, or if every row holds the delimiter."""
  values = table.columns[table.label_column]
  with_delimiter = [i for i, v in enumerate(values) if delimiter and delimiter in v]
  if multilabel is None:
    if with_delimiter and len(with_delimiter) < len(values):
      raise DataError(
          f"{table.rows_where(with_delimiter)}: {len(with_delimiter)} of {len(values)} values "
          f"in column {table.label_column!r} hold {delimiter!r} (e.g. "
          f"{values[with_delimiter[0]]!r}), the others one label: several labels per image, "
          f"or a stray {delimiter!r}? Say which with --option multilabel=true ({delimiter!r} "
          "separates labels, an empty value is no label) or --option multilabel=false (each "
          "value is one class name), or correct these rows.")
    multilabel = bool(with_delimiter)
  # An empty value is 'no label' in a multi-label column; a NaN-like one is never clear.
  missing = [i for i, v in enumerate(values) if labels.is_missing(v) and (v or not multilabel)]
  if missing:
    raise DataError(f"{table.rows_where(missing)}: no label in column {table.label_column!r} "
                    f"({values[missing[0]]!r}: empty or NaN-like, {len(missing)} of "
                    f"{len(values)} rows). Give every image its class, or remove these rows. "
                    f"{FIX} {NOT_SKIPPED}")
  kept: dict[str, tuple[str, ...]] = {}
  if not multilabel:
    return [kept.get(v) or kept.setdefault(v, (labels.normalised(v),)) for v in values], False
  out = [kept.get(v) or kept.setdefault(v, _split(v, delimiter)) for v in values]
  bad = [i for i, row in enumerate(out) if any(labels.is_missing(x) for x in row)]
  if bad:
    raise DataError(f"{table.rows_where(bad)}: a NaN-like label in {values[bad[0]]!r} (column "
                    f"{table.label_column!r}). Write only the labels present. {FIX} "
                    f"{NOT_SKIPPED}")
  return out, True


def _split(value: str, delimiter: str) -> tuple[str, ...]:
  parts = (labels.normalised(v.strip()) for v in value.split(delimiter))
  return tuple(dict.fromkeys(p for p in parts if p))


def label_encoder(classes: Sequence[str], multilabel: bool) -> Callable[[tuple], Any]:
  """A row's labels -> its class index, or its multi-hot tuple (one tuple per set of
  labels, however many rows share it)."""
  index = {name: i for i, name in enumerate(classes)}
  if not multilabel:
    return lambda row: index[row[0]]
  kept: dict[tuple[str, ...], tuple[float, ...]] = {}

  def multi_hot(row: tuple[str, ...]) -> tuple[float, ...]:
    if row not in kept:
      kept[row] = tuple(float(c in row) for c in classes)
    return kept[row]
  return multi_hot


class CsvTable(UserBuilder):
  __doc__ = __doc__
  name = "csv"
  CONFIG_CLASS = CsvConfig
  BASE_NAME = "csv"
  LAYOUT_OPTIONS = ("csv_file", "path_column", "label_column", "label_columns",
                    "label_delimiter", "patient_column", "split_column")

  @classmethod
  def read_labels(cls, root: Path, config: CsvConfig) -> tuple[dict[str, str], bool]:
    table = read_table(root, config)
    first_seen: dict[str, str] = {}
    for index, row in enumerate(table.labels):
      for label in row:
        if label not in first_seen:
          first_seen[label] = table.row_where(index)
    if table.label_columns:
      first_seen = {c: validate.shown(table.path) for c in table.label_columns}
    return first_seen, table.multilabel

  def _list_examples(self, root: Path) -> dict[str, list[Example]]:
    table = read_table(root, self.builder_config)
    examples = self._examples(table)
    self.ignore_unused(table.path.parent, [table.path] + [e.source for e in examples],
                       "not listed in " + table.path.name, IMAGE_SUFFIXES)
    if not table.split_column:
      return self.three_way(examples, validate.shown(table.path))
    given: dict[str, list[Example]] = {"train": [], "validation": [], "test": []}
    for split, example in zip(self._splits_of(table), examples):
      given[split].append(example)
    return self.with_validation(given, validate.shown(table.path))

  def _examples(self, table: Table) -> list[Example]:
    """One example per row (a class index or a multi-hot tuple as its label)."""
    paths = table.columns[table.path_column]
    patients = table.columns[table.patient_column] if table.patient_column else [""] * len(table)
    for column, values, fix in ((table.path_column, paths, "its image's path"),
                                (table.patient_column, patients, "its patient (or group) id, "
                                 "or leave the patient column out")):
      empty = [i for i, v in enumerate(values) if not v] if column else []
      if empty:
        raise DataError(f"{table.rows_where(empty)}: empty {column!r}. Give every row {fix}. "
                        f"{FIX} {NOT_SKIPPED}")
    classes = self.class_names()
    declared, encode = set(classes), label_encoder(classes, self.MULTILABEL)
    folder, examples = os.fspath(table.path.parent), []
    for i, (relative, patient, row) in enumerate(zip(paths, patients, table.labels)):
      unknown = [x for x in row if x not in declared]
      if unknown:
        self.label_index(unknown[0], table.row_where(i))  # raises, naming the row
      examples.append(Example(key=relative, source=os.path.join(folder, relative),
                              label=encode(row), patient_id=patient, origin=f"row {i + 2}"))
    return examples

  @staticmethod
  def _splits_of(table: Table) -> list[str]:
    values = table.columns[table.split_column]
    bad = [i for i, v in enumerate(values) if v.lower() not in SPLIT_VALUES]
    if bad:
      raise DataError(f"{table.rows_where(bad)}: split {values[bad[0]]!r} in column "
                      f"{table.split_column!r}; expected train, val (validation, valid) or "
                      f"test. {FIX} {NOT_SKIPPED}")
    return [SPLIT_VALUES[v.lower()] for v in values]
