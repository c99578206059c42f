"""Bad input: one DataError naming the file and the fix; skip_bad counts."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from ftjax.data import DataError, get_dataset
from ftjax.data.__main__ import main as data_cli
from ftjax.data.base import read_csv
from ftjax.data.cholect50 import read_labels
from tests.helpers.data_trees import (CHEX_COLUMNS, bach_tree, chexpert_tree, cholect_tree,
                                     isic_tree, medmnist_file, mri_tree, mura_tree, prepare,
                                     records, write_csv)

REPO = pathlib.Path(__file__).resolve().parents[1]


def _truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])


def _jpeg(root, name):
  return root / "ISIC_2020_Training_JPEG" / "train" / f"{name}.jpg"


@pytest.mark.parametrize("damage", ["truncated", "zero_bytes"])
def test_bad_image_raises_naming_the_file(tmp_path, damage):
  root = isic_tree(tmp_path / "m")
  bad = _jpeg(root, "ISIC_0000005")
  _truncate(bad) if damage == "truncated" else bad.write_bytes(b"")
  with pytest.raises(DataError, match="ISIC_0000005.jpg") as err:
    prepare("isic2020", root, tmp_path / "d")
  assert "skip_bad" in str(err.value)
  if damage == "zero_bytes":
    assert "empty" in str(err.value)


def test_skip_bad_skips_and_counts(tmp_path):
  root = isic_tree(tmp_path / "m")
  _truncate(_jpeg(root, "ISIC_0000005"))
  _jpeg(root, "ISIC_0000006").write_bytes(b"")
  b = prepare("isic2020", root, tmp_path / "d", skip_bad=True)
  meta = b.info.metadata
  assert sum(meta["skipped_bad"].values()) == 2
  assert any("ISIC_0000005.jpg" in m for m in meta["bad_files"])
  assert any("ISIC_0000006.jpg" in m for m in meta["bad_files"])
  n = sum(len(records(b, s)) for s in ("train", "validation", "test"))
  assert n == 28 - 2
  # the count survives reloading the prepared dataset
  again = get_dataset("isic2020").create(tmp_path / "d", resize=32)
  assert sum(again.info.metadata["skipped_bad"].values()) == 2


def test_truncated_tif_in_bach(tmp_path):
  root = bach_tree(tmp_path / "m")
  _truncate(root / "ICIAR2018_BACH_Challenge/Photos/Benign/be003.tif")
  with pytest.raises(DataError, match="be003.tif"):
    prepare("bach", root, tmp_path / "d")


def test_csv_missing_column_names_column_and_file(tmp_path):
  root = chexpert_tree(tmp_path / "m")
  csv_path = root / "CheXpert-v1.0-small" / "valid.csv"
  lines = csv_path.read_text().splitlines()
  csv_path.write_text("\n".join([lines[0].replace("Edema", "Oedema")] + lines[1:]))
  with pytest.raises(DataError, match=r"valid\.csv.*'Edema'"):
    prepare("chexpert", root, tmp_path / "d")


def test_isic_missing_duplicates_list(tmp_path):
  root = isic_tree(tmp_path / "m")
  (root / "ISIC_2020_Training_Duplicates.csv").unlink()
  with pytest.raises(DataError, match="ISIC_2020_Training_Duplicates.csv"):
    prepare("isic2020", root, tmp_path / "d")


@pytest.mark.parametrize("case", ["chexpert", "isic", "mura", "bach"])
def test_unknown_label(tmp_path, case):
  if case == "chexpert":
    root = chexpert_tree(tmp_path / "m")
    path = root / "CheXpert-v1.0-small" / "train.csv"
    path.write_text(path.read_text().replace("-1.0", "maybe", 1))
    name, match = "chexpert", r"train\.csv row 2.*'maybe'"
  elif case == "isic":
    root = isic_tree(tmp_path / "m")
    path = root / "ISIC_2020_Training_GroundTruth.csv"
    lines = path.read_text().splitlines()
    lines[3] = lines[3][:-1] + "2"
    path.write_text("\n".join(lines) + "\n")
    name, match = "isic2020", r"GroundTruth\.csv.*target='2'"
  elif case == "mura":
    root = mura_tree(tmp_path / "m")
    (root / "MURA-v1.1/train/XR_SHOULDER/patient00002/study1_negative").rename(
        root / "MURA-v1.1/train/XR_SHOULDER/patient00002/study1_unsure")
    name, match = "mura_shoulder", "study1_unsure"
  else:
    root = bach_tree(tmp_path / "m")
    (root / "ICIAR2018_BACH_Challenge/Photos/InSitu").rename(
        root / "ICIAR2018_BACH_Challenge/Photos/Carcinoma")
    name, match = "bach", "Carcinoma"
  with pytest.raises(DataError, match=match):
    prepare(name, root, tmp_path / "d")


@pytest.mark.parametrize("name,folder", [("mura_shoulder", "MURA-v1.1"),
                                         ("chexpert", "CheXpert-v1.0-small"),
                                         ("bach", "Photos"), ("cholect50", "CholecT50")])
def test_missing_folder_names_folder_and_source(tmp_path, name, folder):
  (tmp_path / "m").mkdir()
  (tmp_path / "m" / "unrelated.txt").write_text("x")
  with pytest.raises(DataError, match=folder) as err:
    prepare(name, tmp_path / "m", tmp_path / "d")
  assert "Download" in str(err.value) or "download" in str(err.value)


def test_missing_manual_dir(tmp_path):
  with pytest.raises(DataError, match="does_not_exist"):
    prepare("isic2020", tmp_path / "does_not_exist", tmp_path / "d")


def test_missing_split_folder_in_mura(tmp_path):
  root = mura_tree(tmp_path / "m")
  import shutil
  shutil.rmtree(root / "MURA-v1.1" / "valid")
  with pytest.raises(DataError, match=r"valid/XR_SHOULDER"):
    prepare("mura_shoulder", root, tmp_path / "d")


def test_unknown_dataset_lists_names():
  with pytest.raises(ValueError, match="chexpert.*isic2020"):
    get_dataset("imagenet")


# --- Malformed label files: CSV (CheXpert, ISIC 2020) ------------------------------------
# MURA and BACH take their labels from folder names and read no CSV (see test_unknown_label).


def _chexpert_csv(tmp_path):
  root = chexpert_tree(tmp_path / "m")
  return root, root / "CheXpert-v1.0-small" / "train.csv"


def _cut_mid_row(path):
  """A download that stopped inside the third data row."""
  lines = path.read_bytes().splitlines(keepends=True)
  path.write_bytes(b"".join(lines[:3]) + lines[3][:lines[3].index(b",AP,") + 4])


def _edit_line(path, index, edit):
  lines = path.read_text().splitlines()
  lines[index] = edit(lines[index])
  path.write_text("\n".join(lines) + "\n")


# damage -> (what is written over the CSV, expected message)
CSV_DAMAGE = {
    "truncated": (_cut_mid_row, r"train\.csv row 4: 6 fields where the header has 19 \(a "
                                r"truncated or damaged line\)"),
    "unclosed_quote": (lambda p: p.write_text(p.read_text().replace(',1.0,', ',"1.0,', 1)),
                       r"train\.csv row 14: not valid CSV \(unexpected end of data; an "
                       r"unclosed quote or a truncated file\)"),
    "extra_field": (lambda p: _edit_line(p, 2, lambda line: line + ",1.0"),
                    r"train\.csv row 3: 20 fields where the header has 19"),
    "not_utf8": (lambda p: p.write_bytes(p.read_bytes().replace(b"Female", b"F\xe9male", 2)),
                 r"train\.csv row 2: not UTF-8 text \(byte 0xe9 at offset \d+\)"),
    "zero_bytes": (lambda p: p.write_bytes(b""), r"train\.csv: file is empty \(0 bytes\)"),
    "blank": (lambda p: p.write_text("\n\n"), r"train\.csv: file is empty\. "),
    "header_only": (lambda p: p.write_text(",".join(CHEX_COLUMNS) + "\n"),
                    r"train\.csv: has a header but no rows"),
    "missing_column": (lambda p: p.write_text(p.read_text().replace("Cardiomegaly,", "", 1)),
                       r"train\.csv: missing column\(s\) \['Cardiomegaly'\]"),
}


@pytest.mark.parametrize("damage", CSV_DAMAGE)
def test_malformed_csv_is_one_error_naming_file_and_row(tmp_path, damage):
  _, path = _chexpert_csv(tmp_path)
  write, expected = CSV_DAMAGE[damage]
  write(path)
  with pytest.raises(DataError, match=expected) as err:
    read_csv(path, ["Path", "Frontal/Lateral", "Cardiomegaly"], "Download it again.")
  assert str(err.value).startswith(str(path)) and "Download it again." in str(err.value)


@pytest.mark.parametrize("value,column,expected", [
    ("2.0", "Edema", r"row 2: unknown label '2\.0' in column 'Edema'; expected 1\.0, 0\.0, "
                     r"-1\.0 or blank"),
    ("yes", "Cardiomegaly", r"row 2: unknown label 'yes' in column 'Cardiomegaly'"),
    ("nan", "Atelectasis", r"row 2: unknown label 'nan'"),
    ("Oblique", "Frontal/Lateral", r"row 2: unknown view 'Oblique' in column "
                                   r"'Frontal/Lateral'; expected Frontal or Lateral"),
])
def test_chexpert_wrong_label_values_name_row_and_column(tmp_path, value, column, expected):
  root, path = _chexpert_csv(tmp_path)

  def edit(line):
    fields = line.split(",")
    fields[CHEX_COLUMNS.index(column)] = value
    return ",".join(fields)
  _edit_line(path, 1, edit)
  # Label files are refused as a whole, also with --skip_bad: nothing silently dropped.
  with pytest.raises(DataError, match=expected) as err:
    prepare("chexpert", root, tmp_path / "d", skip_bad=True)
  assert "--skip_bad skips unreadable images, not bad labels" in str(err.value)


@pytest.mark.parametrize("target", ["1.0", "malignant", "-1", ""])
def test_isic_wrong_target_values(tmp_path, target):
  root = isic_tree(tmp_path / "m")
  path = root / "ISIC_2020_Training_GroundTruth.csv"
  _edit_line(path, 5, lambda line: line.rsplit(",", 1)[0] + "," + target)
  with pytest.raises(DataError, match=rf"GroundTruth\.csv: unknown label "
                                      rf"target='{target}' for ISIC_0000004 \(row 6\)"):
    prepare("isic2020", root, tmp_path / "d", skip_bad=True)


def test_isic_truncated_duplicates_list(tmp_path):
  root = isic_tree(tmp_path / "m")
  path = root / "ISIC_2020_Training_Duplicates.csv"
  path.write_bytes(path.read_bytes()[:-20])  # the last row loses its second column
  with pytest.raises(DataError, match=r"Duplicates\.csv row 3: 1 fields where the header "
                                      r"has 2"):
    prepare("isic2020", root, tmp_path / "d")


# --- Malformed label files: CholecT50 JSON ------------------------------------------------


def _record(instrument=2):
  return [5, instrument, 1, 0.1, 0.2, 0.3, 0.4, 3, 7, 1, 0.5, 0.5, 0.1, 0.1, 2]


def _doc(annotations):
  return json.dumps({"video": 1, "fps": 1, "num_frames": 2, "annotations": annotations})


JSON_DAMAGE = {
    "truncated": (_doc({"0": [_record()], "1": [_record()]})[:70],
                  r"not valid JSON \(Expecting ',' delimiter at line 1 column \d+; a truncated "
                  r"or foreign file\?\)"),
    "not_json": ("<html>403 Forbidden</html>", r"not valid JSON \(Expecting value at line 1 "
                                                r"column 1"),
    "empty": ("", r"file is empty"),
    "not_utf8": (b'{"annotations": {"0": []}, "info": "\xff"}',
                 r"not UTF-8 text \(byte 0xff at offset 36\)"),
    "top_level_list": (json.dumps([[_record()]]), r"the top level is an array, not an object"),
    "no_annotations": (json.dumps({"fps": 1, "labels": {}}),
                       r"no 'annotations' key \(found \['fps', 'labels'\]\)"),
    "annotations_list": (json.dumps({"annotations": [[_record()]]}),
                         r"'annotations' is an array, not an object"),
    "frame_id_not_number": (_doc({"0": [_record()], "first": [_record()]}),
                            r"frame id 'first' in 'annotations' is not a number"),
    "frame_id_twice": (_doc({"10": [], "010": []}), r"frame 10 appears twice"),
    "frame_not_list": (_doc({"0": {"instrument": 2}}),
                       r"frame 0 holds an object, not an array of records"),
    "record_too_short": (_doc({"0": [_record()], "1": [_record()[:14]]}),
                         r"frame 1 record 0 is 14 values, not an array of 15 numbers"),
    "record_not_list": (_doc({"0": [_record(), 2]}),
                        r"frame 0 record 1 is a number, not an array of 15 numbers"),
    "record_string": (_doc({"0": [_record()[:1] + ["hook"] + _record()[2:]]}),
                      r'frame 0 record 0 holds "hook", not a number'),
    "record_null": (_doc({"0": [_record()[:7] + [None] + _record()[8:]]}),
                    r"frame 0 record 0 holds null, not a number"),
    "record_nan": (_doc({"0": [_record()]}).replace("0.4", "NaN"),
                   r"frame 0 record 0 holds NaN, not a number"),
    "record_bool": (_doc({"0": [_record()[:1] + [True] + _record()[2:]]}),
                    r"frame 0 record 0 holds true, not a number"),
    "instrument_fraction": (_doc({"0": [_record(1.5)]}),
                            r"unknown instrument id 1\.5 in frame 0 record 0; expected 0\.\.5 "
                            r"or -1"),
    "instrument_out_of_range": (_doc({"0": [_record(6)]}), r"unknown instrument id 6 in frame 0"),
}


@pytest.mark.parametrize("damage", JSON_DAMAGE)
def test_malformed_cholect50_labels_are_one_error_naming_file_and_frame(tmp_path, damage):
  content, expected = JSON_DAMAGE[damage]
  path = tmp_path / "VID01.json"
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  with pytest.raises(DataError, match=expected) as err:
    read_labels(path)
  message = str(err.value)
  assert message.startswith(f"{path}: ") and "official CholecT50 label file" in message
  assert "--skip_bad skips unreadable images, not bad labels" in message


def test_cholect50_labels_read_as_before(tmp_path):
  root = cholect_tree(tmp_path / "m", vids=(1,), frames=8)
  labels = read_labels(root / "CholecT50" / "labels" / "VID01.json")
  assert sorted(labels) == list(range(8))
  assert labels[4] == [0, 0, 0, 0, 1, 0] and labels[7] == [0, 1, 0, 0, 0, 0]


def test_cholect50_bad_label_file_stops_prepare_even_with_skip_bad(tmp_path):
  root = cholect_tree(tmp_path / "m")
  bad = root / "CholecT50" / "labels" / "VID08.json"
  bad.write_text(json.dumps({"annotations": [[1, 2]]}))
  with pytest.raises(DataError, match=r"VID08\.json: 'annotations' is an array"):
    prepare("cholect50", root, tmp_path / "d", skip_bad=True)


# --- Wrong label values in array / MATLAB datasets ----------------------------------------


def test_medmnist_fractional_labels_are_refused(tmp_path):
  root = medmnist_file(tmp_path / "m")
  path = root / "pathmnist.npz"
  arrays = dict(np.load(path))
  arrays["val_labels"] = arrays["val_labels"].astype(np.float32) + 0.5
  np.savez(path, **arrays)
  with pytest.raises(DataError, match=r"pathmnist\.npz: val_labels holds float32 values that "
                                      r"are not whole class indices"):
    prepare("medmnist_pathmnist", root, tmp_path / "d")


@pytest.mark.parametrize("label,shown", [(1.5, "1.5"), (float("nan"), "nan"), (4.0, "4")])
def test_brain_tumor_wrong_label_value_is_refused_not_truncated(tmp_path, label, shown):
  import h5py
  root = mri_tree(tmp_path / "m", n_patients=3, per_patient=2)
  path = next(root.rglob("3.mat"))
  with h5py.File(path, "r+") as f:
    f["cjdata"]["label"][...] = label
  with pytest.raises(DataError, match=rf"3\.mat: unknown label {shown} in cjdata/label; "
                                      rf"expected 1, 2 or 3"):
    prepare("brain_tumor_mri", root, tmp_path / "d", skip_bad=True)


# --- Through the command line -----------------------------------------------------------


def test_cli_malformed_csv_is_one_line_on_stderr(tmp_path):
  root, path = _chexpert_csv(tmp_path)
  _cut_mid_row(path)
  out = subprocess.run(
      [sys.executable, "-m", "ftjax.data", "prepare", "--dataset", "chexpert",
       "--manual_dir", str(root), "--data_dir", str(tmp_path / "d"), "--resize", "32",
       "--workers", "1"],
      cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
      timeout=300, check=False)
  err = out.stderr.strip().splitlines()
  assert out.returncode == 2, out.stderr
  assert "Traceback" not in out.stderr
  assert err[-1].startswith(f"error: {path} row 4: 6 fields where the header has 19")
  assert not (tmp_path / "d" / "chexpert").exists() or not any(
      (tmp_path / "d" / "chexpert").rglob("*.array_record*"))


def test_cli_malformed_json_is_one_line_on_stderr(tmp_path, capsys):
  root = cholect_tree(tmp_path / "m")
  bad = root / "CholecT50" / "labels" / "VID02.json"
  bad.write_text(bad.read_text()[:100])
  rc = data_cli(["prepare", "--dataset", "cholect50", "--manual_dir", str(root),
                 "--data_dir", str(tmp_path / "d"), "--resize", "32", "--workers", "1"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1
  assert err[0].startswith(f"error: {bad}: not valid JSON (")
