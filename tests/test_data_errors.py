"""Bad input: one DataError naming the file and the fix; skip_bad counts."""

from __future__ import annotations

import pytest

from ftjax.data import DataError, get_dataset
from tests.test_data_helpers import (bach_tree, chexpert_tree, isic_tree, mura_tree, prepare,
                                     records, write_csv)


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
