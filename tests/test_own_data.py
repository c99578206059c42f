"""The user's own data: folder, csv and npz builders, DICOM pixels, named datasets and
bad input, through `python -m ftjax.data prepare` (its main(), in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftjax.data import __main__ as data_cli
from ftjax.data import get_dataset
from tests.test_data_helpers import records, write_csv, write_image

pydicom = pytest.importorskip("pydicom")
from pydicom import uid  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.pixels import apply_modality_lut, apply_voi_lut  # noqa: E402


def prepare(capsys, *args, data_dir, expect_ok=True, resize=32):
  """Runs the prepare CLI; (exit status, stdout, stderr)."""
  status = data_cli.main(["prepare", "--data_dir", str(data_dir), "--resize", str(resize),
                          "--workers", "1", *map(str, args)])
  out, err = capsys.readouterr()
  if expect_ok:
    assert status == 0, err
  return status, out, err


def error_line(capsys, *args, data_dir) -> str:
  status, _, err = prepare(capsys, *args, data_dir=data_dir, expect_ok=False)
  lines = [line for line in err.splitlines() if line.startswith("error:")]
  assert status == 2 and len(lines) == 1, err
  assert "Traceback" not in err
  return lines[0]


def builder_of(name, data_dir, resize=32):
  return get_dataset(name, data_dir).create(data_dir, resize=resize)


def pooled_tree(root: Path, classes=("benign", "malignant", "normal"), patients=6,
                per_patient=2) -> dict[str, str]:
  """root/<class>/P<k>_<i>.png; returns image key -> class."""
  truth, seed = {}, 0
  for name in classes:
    for p in range(patients):
      for i in range(per_patient):
        key = f"{name}/P{name[0]}{p}_{i}.png"
        write_image(root / key, size=(40, 30), seed=seed)
        truth[key] = name
        seed += 1
  return truth


def by_split(builder):
  return {s: records(builder, s) for s in ("train", "validation", "test")}


def test_folder_pooled_grouped_by_patient(tmp_path, capsys):
  truth = pooled_tree(tmp_path / "m")
  _, out, _ = prepare(capsys, "--dataset", "folder", "--name", "lesions", "--manual_dir",
                      tmp_path / "m", "--option", r"patient_pattern=/(P\w\d+)_",
                      "--option", "test_fraction=0.25", "--option", "val_fraction=0.25",
                      data_dir=tmp_path / "d")
  assert "classes: benign, malignant, normal" in out
  assert "--config.dataset=lesions" in out
  builder = builder_of("lesions", tmp_path / "d")
  assert builder.info.features["label"].names == ["benign", "malignant", "normal"]
  splits = by_split(builder)
  ids = {s: [r["id"].decode() for r in rs] for s, rs in splits.items()}
  assert sorted(sum(ids.values(), [])) == sorted(truth)  # every image once
  assert all(len(v) > 0 for v in ids.values())
  for split, rows in splits.items():
    for row in rows:
      key = row["id"].decode()
      assert builder.info.features["label"].names[row["label"]] == truth[key]
      assert row["patient_id"].decode() == key.split("/")[1].split("_")[0]
  patients = {s: {r["patient_id"].decode() for r in rs} for s, rs in splits.items()}
  assert not patients["train"] & patients["test"]
  assert not patients["train"] & patients["validation"]
  assert not patients["validation"] & patients["test"]
  info = get_dataset("lesions", tmp_path / "d")
  assert (info.num_classes, info.multilabel, info.main_metrics) == (3, False,
                                                                    ("accuracy", "auroc"))


def test_folder_pre_split_stores_pixels_and_carves_validation(tmp_path, capsys):
  m = tmp_path / "m"
  seeds = iter(range(100))  # no two images alike
  for split, n in (("train", 10), ("test", 3)):
    for label in ("no", "yes"):
      for i in range(n):
        write_image(m / split / label / f"{i}.png", size=(32, 40), seed=next(seeds))
  gray16 = np.random.default_rng(0).integers(0, 65536, (36, 32)).astype(np.uint16)
  Image.fromarray(gray16).save(m / "train" / "yes" / "gray16.png")  # 16-bit grayscale
  (m / "README.txt").write_text("notes")
  _, out, _ = prepare(capsys, "--dataset", "folder", "--name", "xr", "--manual_dir", m,
                      data_dir=tmp_path / "d")
  assert "README.txt" in out  # listed as ignored
  splits = by_split(builder_of("xr", tmp_path / "d"))
  ids = {s: sorted(r["id"].decode() for r in rs) for s, rs in splits.items()}
  assert ids["test"] == sorted(f"test/{c}/{i}.png" for c in ("no", "yes") for i in range(3))
  assert sorted(ids["train"] + ids["validation"]) == sorted(
      [f"train/{c}/{i}.png" for c in ("no", "yes") for i in range(10)] + ["train/yes/gray16.png"])
  assert len(ids["validation"]) == 2  # 10% of each class, stratified
  row = next(r for r in splits["test"] if r["id"] == b"test/yes/2.png")
  expected = np.asarray(Image.open(m / "test" / "yes" / "2.png").convert("RGB"))
  np.testing.assert_array_equal(row["image"], expected)  # shorter side 32: stored as is
  assert row["label"] == 1


def test_two_named_datasets_coexist_and_a_name_cannot_change_data(tmp_path, capsys):
  pooled_tree(tmp_path / "a", classes=("x", "y"), patients=5)
  pooled_tree(tmp_path / "b", classes=("p", "q", "r"), patients=5)
  for name, folder in (("first", "a"), ("second", "b")):
    prepare(capsys, "--dataset", "folder", "--name", name, "--manual_dir", tmp_path / folder,
            "--option", "test_fraction=0.2", "--option", "val_fraction=0.2",
            data_dir=tmp_path / "d")
  assert get_dataset("first", tmp_path / "d").class_names == ("x", "y")
  assert get_dataset("second", tmp_path / "d").class_names == ("p", "q", "r")
  line = error_line(capsys, "--dataset", "folder", "--name", "first", "--manual_dir",
                    tmp_path / "b", "--resize", "36", data_dir=tmp_path / "d")
  assert "first" in line and "another --name" in line
  with pytest.raises(ValueError, match="prepared in .*first, second"):
    get_dataset("third", tmp_path / "d")


def test_csv_multiclass_integer_labels_patients_and_split_column(tmp_path, capsys):
  m, rows, truth = tmp_path / "m", [], {}
  for k in range(24):
    path = f"img/{k}.jpg"
    write_image(m / path, seed=k)
    split = "test" if k >= 20 else "train"
    rows.append([path, str([0, 2, 10][k % 3]), f"pt{k // 2}", split])
    truth[path] = [0, 2, 10][k % 3]
  write_csv(m / "labels.csv", ["Image", "Target", "patient_id", "split"], rows)
  # integers with gaps are names only when declared (else classes 1, 3.. would be empty)
  _, out, _ = prepare(capsys, "--dataset", "csv", "--name", "tab", "--manual_dir", m,
                      "--option", "val_fraction=0.25", "--option", "classes=0,2,10",
                      data_dir=tmp_path / "d")
  builder = builder_of("tab", tmp_path / "d")
  names = builder.info.features["label"].names
  assert names == ["0", "2", "10"]  # integers in numeric order
  splits = by_split(builder)
  assert sorted(r["id"].decode() for r in splits["test"]) == [f"img/{k}.jpg" for k in range(20, 24)]
  for rs in splits.values():
    for r in rs:
      assert int(names[r["label"]]) == truth[r["id"].decode()]
  patients = {s: {r["patient_id"].decode() for r in rs} for s, rs in splits.items()}
  assert not patients["train"] & patients["validation"]
  assert len(splits["train"]) + len(splits["validation"]) == 20


@pytest.mark.parametrize("layout", ["columns", "delimited"])
def test_csv_multilabel(tmp_path, capsys, layout):
  m, rows = tmp_path / "m", []
  findings = ("edema", "effusion", "mass")
  truth = {}
  for k in range(30):
    write_image(m / f"{k}.png", seed=k)
    present = [f for j, f in enumerate(findings) if (k >> j) & 1]
    truth[f"{k}.png"] = present
    if layout == "columns":
      rows.append([f"{k}.png"] + [int(f in present) for f in findings])
    else:
      rows.append([f"{k}.png", "|".join(present)])
  header = ["file"] + list(findings) if layout == "columns" else ["file", "findings"]
  write_csv(m / "t.csv", header, rows)
  declared = ["--option", "multilabel=true"] if layout == "delimited" else []
  _, out, _ = prepare(capsys, "--dataset", "csv", "--name", "chest", "--manual_dir", m,
                      *declared, data_dir=tmp_path / "d")
  assert "multi-label" in out
  info = get_dataset("chest", tmp_path / "d")
  assert info.multilabel and info.main_metrics == ("map", "auroc")
  assert info.class_names == findings
  splits = by_split(info.create(tmp_path / "d", resize=32))
  assert sum(len(v) for v in splits.values()) == 30
  for rs in splits.values():
    for r in rs:
      expected = [float(f in truth[r["id"].decode()]) for f in findings]
      assert r["label"].tolist() == expected


def test_npz_under_any_name(tmp_path, capsys):
  rng = np.random.default_rng(0)
  arrays = {}
  for prefix, n in (("train", 12), ("val", 4), ("test", 5)):
    arrays[f"{prefix}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    arrays[f"{prefix}_labels"] = rng.integers(0, 3, (n, 1))
  (tmp_path / "m").mkdir()
  np.savez(tmp_path / "m" / "my_scans.npz", **arrays)
  prepare(capsys, "--dataset", "npz", "--name", "scans", "--manual_dir", tmp_path / "m",
          "--option", "classes=a,b,c", data_dir=tmp_path / "d", resize=28)
  builder = builder_of("scans", tmp_path / "d", resize=28)
  assert builder.info.features["label"].names == ["a", "b", "c"]
  for split, prefix in (("train", "train"), ("validation", "val"), ("test", "test")):
    rows = sorted(records(builder, split), key=lambda r: r["id"])
    assert [r["label"] for r in rows] == arrays[f"{prefix}_labels"][:, 0].tolist()
    np.testing.assert_array_equal(rows[0]["image"][..., 0], arrays[f"{prefix}_images"][0])


# ---- DICOM --------------------------------------------------------------------


def write_dicom(path: Path, stored: np.ndarray, syntax=uid.ExplicitVRLittleEndian, **tags):
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = uid.SecondaryCaptureImageStorage
  meta.MediaStorageSOPInstanceUID = uid.generate_uid()
  meta.TransferSyntaxUID = syntax
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
  ds.Rows, ds.Columns = stored.shape
  ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
  for key, value in tags.items():
    setattr(ds, key, value)
  if syntax.is_compressed:
    from pydicom.encaps import encapsulate
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(64)])
    ds["PixelData"].VR = "OB"
  else:
    ds.PixelData = stored.astype("<u2").tobytes()
  path.parent.mkdir(parents=True, exist_ok=True)
  ds.save_as(path, enforce_file_format=True)
  return path


def reference_uint8(path: Path) -> np.ndarray:
  """pydicom's own modality + VOI LUT, scaled by the window's output range, inverted
  for MONOCHROME1, rounded: independent of ftjax.data.dicom."""
  ds = pydicom.dcmread(path)
  values = apply_modality_lut(ds.pixel_array, ds)
  if "WindowCenter" in ds:
    shown = apply_voi_lut(values, ds)
    low, high = 0.0, 2.0 ** ds.BitsStored - 1  # unsigned output range of the window
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    low, high = low * slope + intercept, high * slope + intercept
    unit = (shown - low) / (high - low)
  else:
    unit = (values - values.min()) / (values.max() - values.min())
  if ds.PhotometricInterpretation == "MONOCHROME1":
    unit = 1 - unit
  return np.rint(np.clip(unit, 0, 1) * 255).astype(np.uint8)


DICOM_CASES = {
    "window_rescale": dict(RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=1500,
                           WindowWidth=2000),
    "monochrome1_window": dict(PhotometricInterpretation="MONOCHROME1", WindowCenter=2048,
                               WindowWidth=3000),
    "rescale_no_window": dict(RescaleSlope=0.5, RescaleIntercept=100),
    "multi_window_sigmoid": dict(WindowCenter=[1000, 3000], WindowWidth=[1500, 500],
                                 VOILUTFunction="SIGMOID"),
}


@pytest.mark.parametrize("case", sorted(DICOM_CASES))
def test_dicom_pixels_equal_pydicoms_lut_pipeline(tmp_path, case):
  from ftjax.data import dicom
  stored = np.random.default_rng(1).integers(0, 4096, (24, 20)).astype(np.uint16)
  stored[0, :3] = (0, 4095, 2048)  # the range ends and the middle
  path = write_dicom(tmp_path / "a.dcm", stored, **DICOM_CASES[case])
  got = dicom.read_dicom(str(path))
  expected = reference_uint8(path)
  assert got.dtype == np.uint8 and got.shape == stored.shape
  assert np.abs(got.astype(int) - expected).max() <= 1  # rounding at .5 only
  assert (got == expected).mean() > 0.95
  assert len(np.unique(got)) > 20  # the test image is not flat


def test_dicom_folder_prepares_pixels_at_native_size(tmp_path, capsys):
  stored = np.random.default_rng(2).integers(0, 4096, (32, 40)).astype(np.uint16)
  for label in ("a", "b"):
    for i in range(10):
      write_dicom(tmp_path / "m" / label / f"{i}.dcm", stored,
                  PhotometricInterpretation="MONOCHROME1", RescaleSlope=2,
                  RescaleIntercept=-1024, WindowCenter=2000, WindowWidth=4000)
  prepare(capsys, "--dataset", "folder", "--name", "ct", "--manual_dir", tmp_path / "m",
          "--option", "test_fraction=0.2", data_dir=tmp_path / "d")
  row = records(builder_of("ct", tmp_path / "d"), "train")[0]
  expected = reference_uint8(tmp_path / "m" / row["id"].decode())
  assert np.abs(row["image"][..., 0].astype(int) - expected).max() <= 1
  assert (row["image"][..., 0] == row["image"][..., 2]).all()


def test_compressed_dicom_without_handler_names_the_extra(tmp_path, capsys):
  two_class_folder(tmp_path / "m")
  bad = write_dicom(tmp_path / "m" / "a" / "ls.dcm", np.zeros((8, 8), np.uint16),
                    syntax=uid.JPEGLSLossless)
  line = error_line(capsys, "--dataset", "folder", "--name", "mixed", "--manual_dir",
                    tmp_path / "m", data_dir=tmp_path / "d")
  assert str(bad) in line and "JPEG-LS" in line and "ftjax[dicom_compressed]" in line


# ---- bad input ------------------------------------------------------------------


def two_class_folder(root: Path, n=10) -> Path:
  for k, label in enumerate(("a", "b")):
    for i in range(n):
      write_image(root / label / f"{i}.png", seed=100 * k + i)  # no two images alike
  return root


def test_undecodable_image_is_an_error_or_a_counted_skip(tmp_path, capsys):
  m = two_class_folder(tmp_path / "m")
  (m / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
  args = ("--dataset", "folder", "--name", "broken", "--manual_dir", m)
  line = error_line(capsys, *args, data_dir=tmp_path / "d")
  assert str(m / "b" / "broken.png") in line and "--skip_bad" in line
  _, out, _ = prepare(capsys, *args, "--skip_bad", data_dir=tmp_path / "d")
  meta = json.loads(next((tmp_path / "d" / "broken").glob("*/*/metadata.json")).read_text())
  assert sum(meta["skipped_bad"].values()) == 1
  assert sum(builder_of("broken", tmp_path / "d").info.splits[s].num_examples
             for s in ("train", "validation", "test")) == 20


def test_class_too_small_to_split(tmp_path, capsys):
  m = two_class_folder(tmp_path / "m")
  write_image(m / "rare" / "0.png")
  write_image(m / "rare" / "1.png")
  line = error_line(capsys, "--dataset", "folder", "--name", "s", "--manual_dir", m,
                    data_dir=tmp_path / "d")
  assert "'rare' has 2 image(s)" in line and "test_fraction" in line


def test_label_not_in_declared_classes(tmp_path, capsys):
  m = two_class_folder(tmp_path / "m")
  two_class_folder(m / "c", n=0)
  write_image(m / "c" / "0.png")
  line = error_line(capsys, "--dataset", "folder", "--name", "s", "--manual_dir", m,
                    "--option", "classes=a,b", data_dir=tmp_path / "d")
  assert str(m / "c") in line and "'c' is not among the declared classes" in line


def test_csv_path_outside_manual_dir(tmp_path, capsys):
  m = tmp_path / "m"
  rows = [[f"{k}.png", k % 2] for k in range(20)] + [["../outside.png", 1]]
  for k in range(20):
    write_image(m / f"{k}.png", seed=k)
  write_image(tmp_path / "outside.png")
  write_csv(m / "t.csv", ["path", "label"], rows)
  line = error_line(capsys, "--dataset", "csv", "--name", "s", "--manual_dir", m,
                    data_dir=tmp_path / "d")
  assert "row 22" in line and "outside manual_dir" in line


def test_empty_folder(tmp_path, capsys):
  (tmp_path / "m").mkdir()
  line = error_line(capsys, "--dataset", "folder", "--name", "s", "--manual_dir",
                    tmp_path / "m", data_dir=tmp_path / "d")
  assert str(tmp_path / "m") in line and "no class folders" in line
  (tmp_path / "m" / "a").mkdir()
  (tmp_path / "m" / "b").mkdir()
  write_image(tmp_path / "m" / "a" / "0.png")
  line = error_line(capsys, "--dataset", "folder", "--name", "s", "--manual_dir",
                    tmp_path / "m", data_dir=tmp_path / "d")
  assert str(tmp_path / "m" / "b") in line and "holds no images" in line


@pytest.mark.parametrize("header, rows, expected", [
    (["name", "label"], [["a", "0"], ["b", "1"]], "no usable image-path column"),
    (["path", "image", "label"], [["a.png", "b.png", "0"]], "could each be the image-path"),
    (["path", "label", "class"], [["a.png", "0", "1"]], "could each be the label"),
])
def test_csv_columns_not_usable_or_ambiguous(tmp_path, capsys, header, rows, expected):
  write_csv(tmp_path / "m" / "t.csv", header, rows)
  line = error_line(capsys, "--dataset", "csv", "--name", "s", "--manual_dir", tmp_path / "m",
                    data_dir=tmp_path / "d")
  assert str(tmp_path / "m" / "t.csv") in line and expected in line and "--option" in line
