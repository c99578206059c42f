"""Labels never invented, splits never leaking, tables read in one pass: the user's own
data through `python -m ftjax.data prepare` (a subprocess), then the corrected rerun."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ftjax.data import csv_table, get_dataset, labels, user
from tests.test_data_helpers import records, write_csv

REPO = pathlib.Path(__file__).resolve().parents[1]
SPLITS = ("train", "validation", "test")


def png(path: pathlib.Path, seed: int) -> str:
  """An 8x8 PNG whose pixels no other seed gives; its path."""
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path)
  return str(path)


def prepare(tmp: pathlib.Path, *args) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  return subprocess.run([sys.executable, "-m", "ftjax.data", "prepare", "--data_dir",
                         str(tmp / "d"), "--resize", "8", "--workers", "1", *map(str, args)],
                        cwd=tmp, env=env, capture_output=True, text=True, timeout=300,
                        check=False)


def refused(proc: subprocess.CompletedProcess) -> str:
  """The one error line of a refused prepare (exit 2, no traceback)."""
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
  errors = [line for line in lines if line.startswith("error: ")]
  assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
  return errors[0]


def ok(proc: subprocess.CompletedProcess) -> str:
  assert proc.returncode == 0, proc.stderr
  return proc.stdout


def nothing_stored(tmp: pathlib.Path, name: str) -> bool:
  return (user.prepared_layout(tmp / "d", name) is None
          and not list((tmp / "d").glob(f"{name}/*/*/dataset_info.json")))


def stored(tmp: pathlib.Path, name: str) -> dict[str, dict[str, object]]:
  """split -> {image id: class name (or sorted label names)} as stored."""
  info = get_dataset(name, tmp / "d")
  builder = info.create(tmp / "d", resize=8)
  out = {}
  for split in SPLITS:
    rows = records(builder, split)
    if info.multilabel:
      out[split] = {r["id"].decode(): sorted(n for n, v in zip(info.class_names, r["label"]) if v)
                    for r in rows}
    else:
      out[split] = {r["id"].decode(): info.class_names[r["label"]] for r in rows}
  return out


def csv_set(root: pathlib.Path, labels_by_split: dict[str, list[str]],
            header=("path", "label", "split")) -> pathlib.Path:
  """root/t.csv listing one new image per label, with its split."""
  rows, seed = [], 0
  for split, values in labels_by_split.items():
    for value in values:
      png(root / f"{seed}.png", seed)
      rows.append([f"{seed}.png", value, split])
      seed += 1
  return write_csv(root / "t.csv", header, rows)


def rewrite(table: pathlib.Path, old: str, new: str) -> None:
  table.write_text(table.read_text().replace(old, new))


BALANCED = {"train": ["cat", "dog"] * 3, "val": ["cat", "dog"], "test": ["cat", "dog"]}


# ---- labels ---------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("1.0", "1"), ("2.00", "2"), ("-0.0", "0"), ("7", "7"), ("1.5", "1.5"), ("1e0", "1e0"),
    ("007", "007"), ("cat", "cat"), ("1.0.0", "1.0.0")])
def test_only_whole_floats_are_normalised(value, expected):
  assert labels.normalised(value) == expected


def test_integers_written_as_floats_are_one_class(tmp_path):
  table = csv_set(tmp_path / "m", {"train": ["0", "1.0", "1", "0.0", "0", "1"],
                                   "val": ["0", "1.0"], "test": ["0.0", "1"]})
  out = ok(prepare(tmp_path, "--dataset", "csv", "--name", "nums", "--manual_dir", table.parent))
  assert "classes: 0, 1 (one class per image)" in out
  got = stored(tmp_path, "nums")
  assert got["test"] == {"8.png": "0", "9.png": "1"}
  assert got["train"]["1.png"] == got["train"]["2.png"] == "1"


def test_labels_differing_in_case_are_refused_naming_rows(tmp_path):
  bad, rows = "Cat", "'Cat' (<t> row 2) and 'cat' (<t> row 4)"
  labels_by_split = {s: list(v) for s, v in BALANCED.items()}
  labels_by_split["train"][0] = "CASE"
  table = csv_set(tmp_path / "m", labels_by_split)
  rewrite(table, "CASE", bad)
  line = refused(prepare(tmp_path, "--dataset", "csv", "--name", "pets", "--manual_dir",
                         table.parent))
  assert line.startswith(f"error: labels {rows.replace('<t>', str(table))} differ only in "
                         "case"), line
  assert "classes=" in line and nothing_stored(tmp_path, "pets")
  rewrite(table, bad, "cat")
  ok(prepare(tmp_path, "--dataset", "csv", "--name", "pets", "--manual_dir", table.parent))
  assert stored(tmp_path, "pets")["train"]["0.png"] == "cat"


@pytest.mark.parametrize("value, missing", [
    ("", True), ("NaN", True), ("nan", True), ("N/A", True), ("null", True), ("None", True),
    (" ", True), ("0", False), ("nano", False), ("Na+", False)])
def test_what_counts_as_no_label(value, missing):
  assert labels.is_missing(value) == missing


@pytest.mark.parametrize("missing", ["", "NaN"])
def test_empty_or_nan_labels_are_refused_naming_every_row(tmp_path, missing):
  labels_by_split = {s: list(v) for s, v in BALANCED.items()}
  labels_by_split["train"][1] = labels_by_split["train"][4] = "GONE"
  table = csv_set(tmp_path / "m", labels_by_split)
  rewrite(table, "GONE", missing)
  line = refused(prepare(tmp_path, "--dataset", "csv", "--name", "pets", "--manual_dir",
                         table.parent))
  assert line.startswith(f"error: {table} rows 3, 6: no label in column 'label' "
                         f"({missing!r}: empty or NaN-like, 2 of 10 rows)"), line
  assert nothing_stored(tmp_path, "pets")
  table.write_text(table.read_text().replace(f"1.png,{missing},", "1.png,dog,")
                   .replace(f"4.png,{missing},", "4.png,cat,"))
  ok(prepare(tmp_path, "--dataset", "csv", "--name", "pets", "--manual_dir", table.parent))
  assert stored(tmp_path, "pets")["train"]["4.png"] == "cat"


def test_one_stray_delimiter_does_not_make_the_table_multilabel(tmp_path):
  labels_by_split = {s: list(v) for s, v in BALANCED.items()}
  labels_by_split["train"][2] = "cat|dog"
  table = csv_set(tmp_path / "m", labels_by_split)
  line = refused(prepare(tmp_path, "--dataset", "csv", "--name", "pets", "--manual_dir",
                         table.parent))
  assert line.startswith(f"error: {table} row 4: 1 of 10 values in column 'label' hold '|' "
                         "(e.g. 'cat|dog')"), line
  assert "--option multilabel=true" in line and "multilabel=false" in line
  assert nothing_stored(tmp_path, "pets")
  # declared multi-label: the same table is read as several labels per image
  out = ok(prepare(tmp_path, "--dataset", "csv", "--name", "pets_multi", "--manual_dir",
                   table.parent, "--option", "multilabel=true"))
  assert "(multi-label)" in out
  assert stored(tmp_path, "pets_multi")["train"]["2.png"] == ["cat", "dog"]
  rewrite(table, "cat|dog", "cat")  # or the row corrected: one class per image
  out = ok(prepare(tmp_path, "--dataset", "csv", "--name", "pets", "--manual_dir", table.parent))
  assert "(one class per image)" in out
  assert stored(tmp_path, "pets")["train"]["2.png"] == "cat"


def test_integer_labels_with_a_gap_are_refused_unless_declared(tmp_path):
  table = csv_set(tmp_path / "m", {s: [v.replace("cat", "0").replace("dog", "2") for v in vs]
                                   for s, vs in BALANCED.items()})
  line = refused(prepare(tmp_path, "--dataset", "csv", "--name", "grades", "--manual_dir",
                         table.parent))
  assert "the labels are the integers 0, 2; class(es) 1 have no image" in line, line
  assert "--option classes=0,2" in line and nothing_stored(tmp_path, "grades")
  ok(prepare(tmp_path, "--dataset", "csv", "--name", "grades", "--manual_dir", table.parent,
             "--option", "classes=0,2"))
  assert stored(tmp_path, "grades")["test"] == {"8.png": "0", "9.png": "2"}


# ---- .npz labels ------------------------------------------------------------------


def npz_set(root: pathlib.Path, labels_of: dict[str, np.ndarray]) -> pathlib.Path:
  arrays, seed = {}, 0
  for prefix, value in labels_of.items():
    arrays[f"{prefix}_images"] = np.stack([np.full((8, 8), seed + i, np.uint8)
                                           for i in range(len(value))])
    arrays[f"{prefix}_labels"] = value
    seed += len(value)
  root.mkdir(parents=True, exist_ok=True)
  np.savez(root / "scans.npz", **arrays)
  return root


def test_one_hot_npz_is_one_class_per_image(tmp_path):
  classes = {"train": [0, 1, 2, 0, 1, 2], "val": [0, 1, 2], "test": [2, 1, 0]}
  one_hot = {p: np.eye(3, dtype=np.uint8)[c] for p, c in classes.items()}
  m = npz_set(tmp_path / "m", one_hot)
  out = ok(prepare(tmp_path, "--dataset", "npz", "--name", "onehot", "--manual_dir", m))
  assert "classes: 0, 1, 2 (one class per image)" in out
  got = stored(tmp_path, "onehot")
  assert [got["test"][f"test_{i:06d}"] for i in range(3)] == ["2", "1", "0"]
  # the same columns declared multi-label stay multi-label
  out = ok(prepare(tmp_path, "--dataset", "npz", "--name", "onehot_multi", "--manual_dir", m,
                   "--option", "multilabel=true"))
  assert "(multi-label)" in out


def test_medmnist_npz_with_flat_integer_labels(tmp_path):
  m = npz_set(tmp_path / "m", {"train": np.array([0, 1, 0, 1]), "val": np.array([1, 0]),
                               "test": np.array([0, 1])})
  out = ok(prepare(tmp_path, "--dataset", "npz", "--name", "flat", "--manual_dir", m))
  assert "classes: 0, 1 (one class per image)" in out
  assert stored(tmp_path, "flat")["validation"] == {"val_000000": "1", "val_000001": "0"}


def test_npz_class_index_with_no_image_is_refused(tmp_path):
  m = npz_set(tmp_path / "m", {"train": np.array([[0], [2], [0], [2]]),
                               "val": np.array([[0], [2]]), "test": np.array([[2], [0]])})
  line = refused(prepare(tmp_path, "--dataset", "npz", "--name", "gap", "--manual_dir", m))
  assert line.startswith(f"error: {m / 'scans.npz'}: class index(es) 1 appear in no split's "
                         "labels (indices 0..2)"), line
  assert "--option classes=" in line and nothing_stored(tmp_path, "gap")
  ok(prepare(tmp_path, "--dataset", "npz", "--name", "gap", "--manual_dir", m,
             "--option", "classes=benign,unused,malignant"))
  assert stored(tmp_path, "gap")["test"] == {"test_000000": "malignant",
                                             "test_000001": "benign"}


def test_npz_one_hot_declared_single_label_must_be_one_hot(tmp_path):
  m = npz_set(tmp_path / "m", {"train": np.array([[1, 0], [0, 1], [1, 1]]),
                               "val": np.array([[1, 0], [0, 1]]),
                               "test": np.array([[1, 0], [0, 1]])})
  line = refused(prepare(tmp_path, "--dataset", "npz", "--name", "two", "--manual_dir", m,
                         "--option", "multilabel=false"))
  assert "train_labels rows 2 of the (N, 2) labels do not hold exactly one 1" in line, line
  assert nothing_stored(tmp_path, "two")


# ---- splits -------------------------------------------------------------------------


def test_split_with_one_class_is_refused_unless_allowed(tmp_path):
  table = csv_set(tmp_path / "m", {"train": ["cat", "dog"] * 3, "val": ["cat", "dog"],
                                   "test": ["cat", "cat", "cat"]})
  line = refused(prepare(tmp_path, "--dataset", "csv", "--name", "pets", "--manual_dir",
                         table.parent))
  assert line == (f"error: {table.parent}: the test split holds one class only (cat: 3; dog: "
                  "0 images), so AUROC and the other metrics comparing classes are undefined "
                  "on it. Give it images of at least two classes (another test_fraction, "
                  "val_fraction or seed, or more images), or prepare with --option "
                  "allow_one_class_split=true."), line
  assert nothing_stored(tmp_path, "pets")
  ok(prepare(tmp_path, "--dataset", "csv", "--name", "pets", "--manual_dir", table.parent,
             "--option", "allow_one_class_split=true"))
  assert sorted(stored(tmp_path, "pets")["test"].values()) == ["cat"] * 3


def patient_tree(root: pathlib.Path) -> None:
  """root/<class>/P<k>_<i>.png: 4 patients per class, 2 images each."""
  for c, name in enumerate(("a", "b")):
    for p in range(4):
      for i in range(2):
        png(root / name / f"P{c}{p}_{i}.png", 100 * c + 10 * p + i)


def test_patient_pattern_missing_for_some_images_is_refused(tmp_path):
  m = tmp_path / "m"
  patient_tree(m)
  png(m / "a" / "scan_x.png", 900)  # no patient in its name
  png(m / "b" / "scan_y.png", 901)
  args = ("--dataset", "folder", "--name", "xr", "--manual_dir", m, "--option",
          "test_fraction=0.25", "--option", "val_fraction=0.34")
  for pattern in (r"patient_pattern=(P\d+)_", r"patient_pattern=(?P<patient>P\d+)?_"):
    line = refused(prepare(tmp_path, *args, "--option", pattern))
    assert line.startswith(f"error: {m}: patient_pattern ") and \
        "gives no patient id for 2 of 18 images (a/scan_x.png, b/scan_y.png)" in line, line
    assert nothing_stored(tmp_path, "xr")
  (m / "a" / "scan_x.png").rename(m / "a" / "P00_9.png")
  (m / "b" / "scan_y.png").rename(m / "b" / "P10_9.png")
  out = ok(prepare(tmp_path, *args, "--option", r"patient_pattern=(P\d+)_"))
  got = stored(tmp_path, "xr")
  patients = {s: {k.split("/")[1].split("_")[0] for k in ids} for s, ids in got.items()}
  assert not patients["train"] & patients["test"] and not patients["train"] & patients["validation"]
  # what the summary says is what was stored
  total = sum(len(v) for v in got.values())
  for split in SPLITS:
    n, p = len(got[split]), len(patients[split])
    assert f"{split} {n} images ({n / total:.1%}, {p} patient{'s' * (p != 1)})" in out, out
  from ftjax.data import inspection  # and what inspect says
  stats = inspection.summary(get_dataset("xr", tmp_path / "d").create(tmp_path / "d", resize=8))
  assert {s: (v["count"], v["patients"], v["share"]) for s, v in stats.items()} == {
      s: (len(got[s]), len(patients[s]), round(len(got[s]) / total, 4)) for s in SPLITS}


def test_same_pixels_under_two_classes_are_refused(tmp_path):
  m = tmp_path / "m"
  for c, name in enumerate(("a", "b")):
    for i in range(4):
      png(m / name / f"{i}.png", 10 * c + i)
  copy = m / "b" / "copy_of_a1.png"
  copy.write_bytes((m / "a" / "1.png").read_bytes())
  args = ("--dataset", "folder", "--name", "xr", "--manual_dir", m, "--option",
          "test_fraction=0.25", "--option", "val_fraction=0.34")
  line = refused(prepare(tmp_path, *args))
  # named in the order the splits list them: either may come first
  first, second = sorted([str(m / "a" / "1.png"), str(copy)], key=line.index)
  labelled = "'a' and 'b'" if first.endswith("1.png") else "'b' and 'a'"
  assert line == (f"error: {first} and {second}: the same image (identical bytes) labelled "
                  f"{labelled}: one of them is wrong. Remove the wrong copy or correct its "
                  "label."), line
  assert nothing_stored(tmp_path, "xr")
  copy.unlink()
  ok(prepare(tmp_path, *args))
  assert sum(len(v) for v in stored(tmp_path, "xr").values()) == 8


def test_same_image_in_train_and_test_is_refused_unless_allowed(tmp_path):
  m = tmp_path / "m"
  seed = 0
  for split, n in (("train", 4), ("test", 2)):
    for name in ("a", "b"):
      for i in range(n):
        png(m / split / name / f"{i}.png", seed)
        seed += 1
  leak = m / "test" / "a" / "leak.png"
  leak.write_bytes((m / "train" / "a" / "0.png").read_bytes())
  args = ("--dataset", "folder", "--name", "xr", "--manual_dir", m, "--option",
          "val_fraction=0.25")
  line = refused(prepare(tmp_path, *args))
  # train/a/0.png is in train or in the validation split carved from it
  assert line.startswith(f"error: {m / 'train' / 'a' / '0.png'} (") and \
      f" and {leak} (test): the same image (identical bytes) in two splits" in line, line
  assert "--option allow_duplicates=true" in line and nothing_stored(tmp_path, "xr")
  out = ok(prepare(tmp_path, *args, "--option", "allow_duplicates=true"))
  assert "duplicates: 0 identical copies within a split, 1 across splits (allowed)" in out
  assert "test/a/leak.png" in stored(tmp_path, "xr")["test"]


def test_hidden_files_and_folders_are_skipped_and_counted(tmp_path):
  m = tmp_path / "m"
  for c, name in enumerate(("a", "b")):
    for i in range(4):
      png(m / name / f"{i}.png", 10 * c + i)
  png(m / "a" / ".ipynb_checkpoints" / "0-checkpoint.png", 50)
  png(m / "b" / "deep" / ".cache" / "x.png", 51)
  png(m / ".thumbs" / "a.png", 52)
  (m / "b" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
  out = ok(prepare(tmp_path, "--dataset", "folder", "--name", "xr", "--manual_dir", m,
                   "--option", "test_fraction=0.25", "--option", "val_fraction=0.34"))
  assert "hidden: skipped 4 hidden file(s)" in out, out
  ids = sorted(k for split in stored(tmp_path, "xr").values() for k in split)
  assert ids == [f"{n}/{i}.png" for n in ("a", "b") for i in range(4)]
  meta = json.loads(next((tmp_path / "d" / "xr").glob("*/*/metadata.json")).read_text())
  assert meta["notes"]["hidden"].startswith("skipped 4 hidden file(s)")


# ---- scale ----------------------------------------------------------------------------


class CountingList(list):
  """A list that counts the items read from it (iteration and indexing)."""

  reads = 0

  def __iter__(self):
    for item in super().__iter__():
      CountingList.reads += 1
      yield item

  def __getitem__(self, index):
    CountingList.reads += 1
    return super().__getitem__(index)


@pytest.mark.parametrize("multilabel", [False, True])
def test_reading_a_table_reads_each_value_a_bounded_number_of_times(tmp_path, monkeypatch,
                                                                     multilabel):
  """Listing the examples reads each cell a few times, whatever the number of rows
  (reading every row again for each row was quadratic)."""
  read = csv_table.read_columns
  monkeypatch.setattr(csv_table, "read_columns",
                      lambda *a: {k: CountingList(v) for k, v in read(*a).items()})
  counts = {}
  for n in (200, 800):
    root = tmp_path / str(n)
    values = ["a|b" if multilabel else "ab"[i % 2] for i in range(n)]
    write_csv(root / "t.csv", ["path", "patient", "label"],
              [[f"{i}.png", f"p{i // 3}", v] for i, v in enumerate(values)])
    CountingList.reads = 0
    options = csv_table.CsvTable.discover(root, {"test_fraction": 0.2})
    builder = user.named_builder(csv_table.CsvTable, f"t{n}").create(tmp_path / "d", **options)
    builder.list_splits(root)
    counts[n] = CountingList.reads
  assert counts[800] <= 4.5 * counts[200], counts  # linear: 4x the rows, ~4x the reads
  assert counts[800] < 40 * 800, counts


def test_given_splits_sharing_a_patient_are_refused_unless_allowed(tmp_path):
  table = csv_set(tmp_path / "m", BALANCED)
  patients = [f"p{i // 2}" for i in range(10)]  # 0.png, 1.png: p0 ... 8.png, 9.png: p4
  patients[9] = "p0"  # a train patient's image in the test split
  lines = table.read_text().splitlines()
  table.write_text("\n".join([lines[0] + ",patient"]
                             + [f"{row},{p}" for row, p in zip(lines[1:], patients)]) + "\n")
  args = ("--dataset", "csv", "--name", "pets", "--manual_dir", table.parent)
  line = refused(prepare(tmp_path, *args))
  assert line == (f"error: {table.parent}: patient 'p0' is in the train split "
                  f"({table.parent / '0.png'} (row 2)) and the test split "
                  f"({table.parent / '9.png'} (row 11)); 1 patient(s) are in more than one "
                  "split, so the model would be scored on patients it was trained on. Put "
                  "each patient's images in one split, or prepare with --option "
                  "allow_shared_patients=true."), line
  assert nothing_stored(tmp_path, "pets")
  ok(prepare(tmp_path, *args, "--option", "allow_shared_patients=true"))
  assert stored(tmp_path, "pets")["test"] == {"8.png": "cat", "9.png": "dog"}


def test_the_csv_benchmark_lists_every_row_it_writes(tmp_path):
  from benchmarks import csv_read
  seconds, cpu, peak, sizes = csv_read.measure(340, tmp_path)
  assert sum(sizes.values()) == 340 and min(sizes.values()) > 0
  assert seconds > 0 and cpu > 0 and peak > 0  # measured, never compared: a shared machine


@pytest.mark.parametrize("folders, expected", [
    (("Cat", "cat", "dog"), "labels 'Cat' (<m>/Cat) and 'cat' (<m>/cat) differ only in case"),
    (("1", "1.0", "2"), "labels '1' (<m>/1) and '1.0' (<m>/1.0) differ only in case or in "
                        "how a number is written"),
    (("nan", "cat", "dog"), "<m>/nan: label 'nan' is empty or NaN-like, not a class name")])
def test_class_folders_spelled_two_ways_or_nan_are_refused(tmp_path, capsys, folders, expected):
  from ftjax.data import __main__ as data_cli
  m = tmp_path / "m"
  for c, name in enumerate(folders):
    for i in range(4):
      png(m / name / f"{i}.png", 10 * c + i)
  status = data_cli.main(["prepare", "--dataset", "folder", "--name", "xr", "--manual_dir",
                          str(m), "--data_dir", str(tmp_path / "d")])
  err = capsys.readouterr().err
  assert status == 2 and err.startswith("error: " + expected.replace("<m>", str(m))), err
  assert nothing_stored(tmp_path, "xr")


@pytest.mark.parametrize("link", [False, True])
def test_one_file_listed_twice_is_found_even_when_path_hashes_collide(tmp_path, monkeypatch,
                                                                      link):
  from ftjax.data import validate
  from ftjax.data.base import Example
  paths = [png(tmp_path / "a.png", 1), png(tmp_path / "b.png", 2)]
  if link:
    (tmp_path / "c.png").symlink_to(tmp_path / "b.png")
    paths.append(str(tmp_path / "c.png"))
  examples = [Example(key=pathlib.Path(p).name, source=p, label=0) for p in paths]
  monkeypatch.setattr(validate, "hash", lambda _: 0, raising=False)  # every path collides
  if not link:
    validate.check_examples({"train": examples}, tmp_path)
    return
  with pytest.raises(validate.DataError, match=f"^{tmp_path / 'c.png'}: the same file as "
                                               f"{tmp_path / 'b.png'} "):
    validate.check_examples({"train": examples}, tmp_path)


@pytest.mark.parametrize("names, clash", [
    (("1", "01", "2"), "'1' (at 1) and '01' (at 01)"), (("-0", "0", "1"), "'-0' (at -0) and '0'"),
    (("Edema", "EDEMA"), "'Edema' (at Edema) and 'EDEMA'"), (("1", "10", "2", "3", "4", "5", "6",
                                                               "7", "8", "9"), None)])
def test_class_names_equal_but_for_spelling_are_refused(names, clash):
  first_seen = {n: f"at {n}" for n in names}
  if clash is None:
    labels.check_names(first_seen, (), "src")  # distinct numbers, no gap
    return
  with pytest.raises(labels.DataError, match=f"^labels {re.escape(clash)}"):
    labels.check_names(first_seen, (), "src")
