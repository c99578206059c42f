"""The validation layer of `python -m ftjax.data prepare`: every input class, through the CLI.

Each bad input is one `error:` line naming the file (row, array index) with exit 2, or a
counted skip with --skip_bad; pixels that are stored are compared with numpy/PIL.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import signal
import struct
import subprocess
import sys
import time
import zlib

import h5py
import numpy as np
import pytest
from PIL import Image

from ftjax.data import __main__ as data_cli
from tests.test_data_helpers import (CHEX_COLUMNS, bach_tree, chexpert_tree, isic_tree,
                                     medmnist_file, mri_tree, mura_tree, records, write_image)
from tests.test_hostile_inputs import _under_1_gib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _prepare(capsys, dataset, manual, data_dir, *extra, resize=32):
  """(exit code, last stderr line, stdout) of one in-process prepare."""
  argv = ["prepare", "--dataset", dataset, "--data_dir", str(data_dir), "--resize",
          str(resize), "--workers", "1", *extra]
  if manual is not None:
    argv += ["--manual_dir", str(manual)]
  code = data_cli.main(argv)
  captured = capsys.readouterr()
  last = captured.err.rstrip("\n").split("\n")[-1].split("\r")[-1]  # after the progress bar
  assert "Traceback" not in captured.err
  return code, last, captured.out


def _builder(dataset, data_dir, resize=32, **options):
  from ftjax.data import get_dataset
  return get_dataset(dataset).create(data_dir, resize=resize, **options)


def _expected(gray: np.ndarray, size: int = 32) -> np.ndarray:
  """PIL's shorter-side resize of a uint8 gray image, as RGB (what prepare stores)."""
  image = Image.fromarray(gray, "L").convert("RGB")
  w, h = image.size
  new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
  return np.asarray(image.resize(new, Image.BILINEAR, reducing_gap=None))


def _float_npz(root, images_by_split, labels=None):
  """A pathmnist .npz whose images are float32 (N, 28, 28)."""
  root.mkdir(parents=True, exist_ok=True)
  arrays = {}
  for prefix, images in images_by_split.items():
    arrays[f"{prefix}_images"] = np.asarray(images, np.float32)
    arrays[f"{prefix}_labels"] = (labels or {}).get(
        prefix, np.arange(len(images), dtype=np.uint8).reshape(-1, 1) % 9)
  np.savez(root / "pathmnist.npz", **arrays)
  return root / "pathmnist.npz"


def _smooth(seed, shape=(28, 28)):
  return np.random.default_rng(seed).normal(100.0, 30.0, shape).astype(np.float32)


# --- Pixels: non-finite and constant float images ----------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_pixel_in_npz_is_a_bad_image(tmp_path, capsys, value):
  val = [_smooth(i) for i in range(3)]
  val[2][3, 4] = value
  path = _float_npz(tmp_path / "m", {"train": [_smooth(9 + i) for i in range(3)], "val": val,
                                     "test": [_smooth(20), _smooth(21)]})
  code, line, _ = _prepare(capsys, "medmnist_pathmnist", tmp_path / "m", tmp_path / "d")
  assert code == 2
  assert line.startswith(f"error: {path} val_images[2]: image holds 1 non-finite pixel "
                         "value(s) (NaN or Inf, the first at row 3, column 4)"), line
  assert "--skip_bad" in line
  code, _, out = _prepare(capsys, "medmnist_pathmnist", tmp_path / "m", tmp_path / "d",
                          "--skip_bad")
  assert code == 0 and "validation: 2 images" in out
  assert _builder("medmnist_pathmnist", tmp_path / "d").info.metadata["skipped_bad"] == {
      "train": 0, "validation": 1, "test": 0}


def test_non_finite_pixel_in_mri_slice_is_a_bad_image(tmp_path, capsys):
  manual = mri_tree(tmp_path / "m", n_patients=4, per_patient=2)
  bad = sorted(manual.rglob("*.mat"))[3]
  with h5py.File(bad, "r+") as f:
    image = f["cjdata"]["image"][()].astype(np.float64)
    image[5, 7] = np.nan  # HDF5 holds the transpose: row 7, column 5 of the slice
    del f["cjdata"]["image"]
    f["cjdata"]["image"] = image
  _check_one_non_finite_image(capsys, "brain_tumor_mri", manual, tmp_path / "d", bad, 7, 5)


def _check_one_non_finite_image(capsys, dataset, manual, data_dir, bad, row, column):
  """`bad` is one error line naming it, its pixel's row and column; with --skip_bad
  it is one counted skip."""
  code, line, _ = _prepare(capsys, dataset, manual, data_dir)
  assert code == 2
  assert line.startswith(f"error: {bad}: image holds 1 non-finite pixel value(s) (NaN or Inf, "
                         f"the first at row {row}, column {column})"), line
  code, _, out = _prepare(capsys, dataset, manual, data_dir, "--skip_bad")
  assert code == 0 and "skipped bad images" in out
  assert sum(_builder(dataset, data_dir).info.metadata["skipped_bad"].values()) == 1


def test_constant_and_varying_float_images_are_stored_as_numpy_and_pil_compute(tmp_path,
                                                                              capsys):
  # a constant image keeps its value (rounded, clipped to 0..255); others are min-max scaled
  constants = {200.4: 200, 7.6: 8, 300.0: 255, -5.0: 0, 0.0: 0}
  test_images = [np.full((28, 28), v, np.float32) for v in constants]
  varying = _smooth(3, (28, 40))[:, :28] * 0.01 - 0.3  # values around 0.7, not in 0..255
  path = _float_npz(tmp_path / "m", {"train": [_smooth(1), _smooth(2)], "val": [varying],
                                     "test": test_images})
  code, _, _ = _prepare(capsys, "medmnist_pathmnist", path.parent, tmp_path / "d")
  assert code == 0
  builder = _builder("medmnist_pathmnist", tmp_path / "d")
  stored = {r["id"].decode(): r["image"] for r in records(builder, "test")}
  assert len(stored) == len(constants)
  for i, expected_value in enumerate(constants.values()):
    np.testing.assert_array_equal(stored[f"test_{i:06d}"],
                                  np.full((32, 32, 3), expected_value, np.uint8))
  x = varying.astype(np.float64)
  scaled = np.round((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8)
  np.testing.assert_array_equal(records(builder, "validation")[0]["image"], _expected(scaled))


# --- Decoded and resized size ------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
  return struct.pack(">I", len(data)) + kind + data + struct.pack(
      ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width, height, rows: bytes) -> bytes:
  header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
  return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows, 9))
          + _chunk(b"IEND", b""))


PNG_CASES = {
    # a valid 1 x 20000 image: the resize of its shorter side to 232 would be
    # 232 x 4,640,000 RGB (3.2 GB)
    "aspect_1x20000": (lambda: _png(1, 20000, b"\0\x80" * 20000),
                       "image is 1x20000 pixels: resizing its shorter side to 232 gives "
                       "232x4640000, more than the 16,777,216 pixels allowed"),
    # 10^8 pixels declared: over PIL's limit, under twice it (where PIL only warns)
    "header_10000x10000": (lambda: _png(10000, 10000, b"\0" * 10001),
                           "cannot read image (DecompressionBombWarning: Image size "
                           "(100000000 pixels) exceeds limit of 89478485 pixels"),
}


@pytest.mark.parametrize("case", PNG_CASES)
def test_small_png_needing_gigabytes_is_a_bad_image_under_1_gib(tmp_path, case):
  make, expected = PNG_CASES[case]
  manual = isic_tree(tmp_path / "m")
  bad = manual / "ISIC_2020_Training_JPEG" / "train" / "ISIC_0000004.jpg"
  bad.write_bytes(make())
  assert bad.stat().st_size < 200
  for extra, code in (([], 2), (["--skip_bad"], 0)):
    out = _under_1_gib(f"""
        import sys
        from ftjax.data.__main__ import main
        sys.exit(main(["prepare", "--dataset", "isic2020", "--manual_dir", {str(manual)!r},
                       "--data_dir", {str(tmp_path / "d")!r}, "--workers", "1",
                       *{extra!r}]))
        """)
    assert out.returncode == code, out.stderr[-3000:]  # never a signal (negative)
    assert "Traceback" not in out.stderr
    if code == 2:
      line = out.stderr.rstrip("\n").split("\n")[-1].split("\r")[-1]
      assert line.startswith(f"error: {bad} (") and expected in line, line
    else:
      assert "skipped bad images: {'train': 0, 'validation': 0, 'test': 1}" in out.stdout \
          or "skipped 1 bad image(s)" in out.stdout, out.stdout


# --- Label arrays and CSV headers ---------------------------------------------------------


@pytest.mark.parametrize("subset,shape,expected", [
    ("pathmnist", (12, 2), r"train_labels has shape \(12, 2\); expected \(12, 1\). pathmnist "
                           r"has one class index per image"),
    ("pathmnist", (12,), r"train_labels has shape \(12,\); expected \(12, 1\)"),
    ("chestmnist", (12, 13), r"train_labels has shape \(12, 13\); expected \(12, 14\). "
                             r"chestmnist has 14 0/1 columns, one per label"),
])
def test_label_array_of_another_shape_is_refused(tmp_path, capsys, subset, shape, expected):
  import re
  root = medmnist_file(tmp_path / "m", subset, multilabel=subset == "chestmnist")
  path = root / f"{subset}.npz"
  arrays = dict(np.load(path))
  arrays["train_labels"] = np.zeros(shape, np.uint8)
  np.savez(path, **arrays)
  code, line, _ = _prepare(capsys, f"medmnist_{subset}", root, tmp_path / "d", "--skip_bad")
  assert code == 2 and line.startswith(f"error: {path}: "), line
  assert re.search(expected, line), line


@pytest.mark.parametrize("dataset", ["chexpert", "isic2020"])
def test_csv_with_a_column_twice_is_refused(tmp_path, capsys, dataset):
  if dataset == "chexpert":
    manual = chexpert_tree(tmp_path / "m")
    path = manual / "CheXpert-v1.0-small" / "train.csv"
    header = ",".join(CHEX_COLUMNS)
    doubled = header.replace("Pleural Other", "Edema")
    column = "Edema"
  else:
    manual = isic_tree(tmp_path / "m")
    path = manual / "ISIC_2020_Training_GroundTruth.csv"
    header = path.read_text().splitlines()[0]
    doubled = header.replace("benign_malignant", "target")
    column = "target"
  path.write_text(path.read_text().replace(header, doubled, 1))
  code, line, _ = _prepare(capsys, dataset, manual, tmp_path / "d")
  assert code == 2
  assert line.startswith(f"error: {path}: column(s) ['{column}'] appear more than once in "
                         "the header"), line


# --- Paths that leave manual_dir -----------------------------------------------------------


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_csv_image_path_outside_manual_dir_is_refused(tmp_path, capsys, how):
  manual = chexpert_tree(tmp_path / "m")
  outside = write_image(tmp_path / "elsewhere" / "patient00004" / "secret.jpg", mode="L",
                        fmt="JPEG")
  path = manual / "CheXpert-v1.0-small" / "train.csv"
  original = "CheXpert-v1.0-small/train/patient00004/study1/view1_frontal.jpg"
  image = manual / original
  if how == "symlink":
    image.unlink()
    image.symlink_to(outside)
  else:
    rewritten = str(outside) if how == "absolute" else \
        "CheXpert-v1.0-small/../../elsewhere/patient00004/secret.jpg"
    path.write_text(path.read_text().replace(original, rewritten))
    image = manual / rewritten if how == "dotdot" else outside
  code, line, _ = _prepare(capsys, "chexpert", manual, tmp_path / "d", "--skip_bad")
  assert code == 2
  assert line.startswith(f"error: {image} ({path} row 8): leads to {outside}, outside "
                         f"manual_dir {manual}"), line


def test_isic_image_name_with_dotdot_is_refused(tmp_path, capsys):
  manual = isic_tree(tmp_path / "m")
  write_image(tmp_path / "elsewhere.jpg", fmt="JPEG")
  path = manual / "ISIC_2020_Training_GroundTruth.csv"
  path.write_text(path.read_text().replace("ISIC_0000005,", "../../../elsewhere,"))
  code, line, _ = _prepare(capsys, "isic2020", manual, tmp_path / "d")
  assert code == 2 and f"({path} row 7): leads to {tmp_path / 'elsewhere.jpg'}, outside " \
                       "manual_dir" in line, line


# --- Files the layout does not explain ----------------------------------------------------


def test_unused_files_are_listed_as_ignored_with_the_reason(tmp_path, capsys):
  manual = mura_tree(tmp_path / "m")
  study = manual / "MURA-v1.1/train/XR_SHOULDER/patient00002/study1_negative"
  write_image(study / "image4.tif", mode="L", fmt="TIFF")
  (study / "notes.txt").write_text("x")
  code, _, out = _prepare(capsys, "mura_shoulder", manual, tmp_path / "d",
                          "--option", "unit=image")
  assert code == 0
  assert "ignored 3 file(s) of manual_dir that the layout does not use" in out, out
  assert f"{study / 'image4.tif'}: not a PNG or JPEG image" in out
  assert f"{study / 'notes.txt'}: not a PNG or JPEG image" in out
  assert "._image1.png: a macOS resource fork" in out
  meta = _builder("mura_shoulder", tmp_path / "d", unit="image").info.metadata
  assert meta["ignored"] == 3 and len(meta["ignored_files"]) == 3
  stored = sum(len(records(_builder("mura_shoulder", tmp_path / "d", unit="image"), s))
               for s in ("train", "validation", "test"))
  assert stored == 15  # every image of the tree, the .tif not among them


@pytest.mark.parametrize("dataset", ["bach", "isic2020"])
def test_unlisted_files_of_csv_and_folder_layouts_are_listed(tmp_path, capsys, dataset):
  if dataset == "bach":
    manual = bach_tree(tmp_path / "m")
    extra = manual / "ICIAR2018_BACH_Challenge/Photos/microscopy_ground_truth.csv"
    extra.write_text("be001.tif,Benign\n")
    reason = "not a .tif photo in a class folder"
  else:
    manual = isic_tree(tmp_path / "m")
    extra = write_image(manual / "ISIC_2020_Training_JPEG/train/ISIC_9999999.jpg", fmt="JPEG")
    reason = "not listed in ISIC_2020_Training_GroundTruth.csv"
  code, _, out = _prepare(capsys, dataset, manual, tmp_path / "d")
  assert code == 0 and "ignored 1 file(s)" in out and f"{extra}: {reason}" in out, out


def test_folder_named_like_an_image_is_refused(tmp_path, capsys):
  manual = mura_tree(tmp_path / "m")
  folder = manual / "MURA-v1.1/train/XR_SHOULDER/patient00004/study1_positive/image2.png"
  folder.mkdir()
  code, line, _ = _prepare(capsys, "mura_shoulder", manual, tmp_path / "d")
  assert code == 2
  assert line == (f"error: {folder}: a folder with an image's name, where the image belongs. "
                  "Remove or rename the folder, and restore the image."), line


@pytest.mark.parametrize("dataset", ["bach", "mura_shoulder"])
def test_symlinked_class_or_study_folder_is_refused_not_counted_twice(tmp_path, capsys,
                                                                     dataset):
  if dataset == "bach":
    manual = bach_tree(tmp_path / "m")
    photos = manual / "ICIAR2018_BACH_Challenge/Photos"
    link = photos / "Invasive"
    for image in link.iterdir():
      image.unlink()
    link.rmdir()
    link.symlink_to(photos / "Benign")
  else:
    manual = mura_tree(tmp_path / "m")
    patient = manual / "MURA-v1.1/train/XR_SHOULDER/patient00005"
    link = patient / "study2_positive"
    link.symlink_to(patient / "study1_negative")
  code, line, _ = _prepare(capsys, dataset, manual, tmp_path / "d")
  assert code == 2
  assert line.startswith(f"error: {link}: a symbolic link to the folder "), line
  assert "labelled twice" in line


def test_symlinked_image_to_another_image_is_refused(tmp_path, capsys):
  manual = bach_tree(tmp_path / "m")
  photos = manual / "ICIAR2018_BACH_Challenge/Photos"
  link = photos / "Invasive" / "iv006.tif"
  link.symlink_to(photos / "Benign" / "be002.tif")
  code, line, _ = _prepare(capsys, "bach", manual, tmp_path / "d")
  assert code == 2
  assert "the same file as" in line and str(link) in line and "be002.tif" in line, line


# --- Tracebacks before: names, duplicate rows, empty splits, empty images ------------------


def test_non_utf8_file_name_is_one_line(tmp_path, capsys):
  manual = mura_tree(tmp_path / "m")
  study = manual / "MURA-v1.1/train/XR_SHOULDER/patient00002/study1_negative"
  name = os.fsencode(study) + b"/image\xff.png"
  with open(name, "wb") as f:
    f.write((study / "image1.png").read_bytes())
  code, line, _ = _prepare(capsys, "mura_shoulder", manual, tmp_path / "d",
                           "--option", "unit=image")
  assert code == 2
  assert line.startswith(f"error: {study}/image\\xff.png: name "), line
  assert line.endswith("is not UTF-8 text. Rename it (names are stored as UTF-8 text)."), line


def test_non_utf8_patient_id_is_one_line(tmp_path, capsys):
  manual = mri_tree(tmp_path / "m", n_patients=3, per_patient=2)
  bad = sorted(manual.rglob("*.mat"))[2]
  with h5py.File(bad, "r+") as f:
    del f["cjdata"]["PID"]
    f["cjdata"]["PID"] = np.array([[0x31], [0xD800]], np.uint16)  # a lone surrogate
  code, line, _ = _prepare(capsys, "brain_tumor_mri", manual, tmp_path / "d")
  assert code == 2
  assert line.startswith(f"error: {bad}: patient id ") and "is not UTF-8 text" in line, line


def test_duplicate_csv_row_is_one_line_naming_both_rows(tmp_path, capsys):
  manual = isic_tree(tmp_path / "m")
  path = manual / "ISIC_2020_Training_GroundTruth.csv"
  lines = path.read_text().splitlines()
  path.write_text("\n".join(lines + [lines[5]]) + "\n")  # ISIC_0000004 again, row 32
  code, line, _ = _prepare(capsys, "isic2020", manual, tmp_path / "d")
  assert code == 2
  assert (f"({path} row 32): 'ISIC_0000004' is listed twice (also at "
          f"{manual}/ISIC_2020_Training_JPEG/train/ISIC_0000004.jpg ({path} row 6))") in line, line


def test_empty_split_is_one_line(tmp_path, capsys):
  path = _float_npz(tmp_path / "m", {"train": [_smooth(1)], "val": np.zeros((0, 28, 28)),
                                     "test": [_smooth(2)]})
  code, line, _ = _prepare(capsys, "medmnist_pathmnist", path.parent, tmp_path / "d")
  assert code == 2
  assert line.startswith(f"error: {path.parent}: split 'validation' of medmnist "
                         "(pathmnist_r32) is empty (examples per split: {'train': 1, 'validation': 0, 'test': 1})"), line


@pytest.mark.parametrize("shape", [(28, 0), (0, 28)])
def test_zero_width_image_is_a_bad_image(tmp_path, capsys, shape):
  path = _float_npz(tmp_path / "m", {"train": [_smooth(1), _smooth(2)],
                                     "val": np.zeros((1, *shape)), "test": [_smooth(3)]})
  code, line, _ = _prepare(capsys, "medmnist_pathmnist", path.parent, tmp_path / "d")
  assert code == 2
  assert line.startswith(f"error: {path} val_images[0]: image is {shape[1]}x{shape[0]} "
                         "pixels (empty)"), line


# --- A killed prepare's leftovers ---------------------------------------------------------


def test_prepare_removes_what_a_killed_prepare_left(tmp_path):
  argv = [sys.executable, "-m", "ftjax.data", "prepare", "--dataset", "synthetic",
          "--data_dir", str(tmp_path), "--resize", "64", "--workers", "1", "--option",
          "num_train=3000", "--option", "num_test=10"]
  config_dir = tmp_path / "synthetic" / "multiclass_r64_num_train3000_num_test10"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  killed = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 120
  while not list(config_dir.glob("incomplete.*/**/*.array_record*")):
    assert killed.poll() is None and time.monotonic() < deadline, "prepare ended first"
    time.sleep(0.05)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  leftovers = list(config_dir.glob("incomplete.*_1.0.0"))
  assert len(leftovers) == 1 and leftovers[0].is_dir()
  done = subprocess.run(argv[:-4] + ["--option", "num_train=40", "--option", "num_test=10"], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0  # another config: the leftover is not its own
  assert leftovers[0].exists()
  done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                        check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert f"synthetic: removed {leftovers[0]} (" in done.stderr
  assert "left by an interrupted prepare" in done.stderr
  assert not list(config_dir.glob("incomplete.*")) and (config_dir / "1.0.0").is_dir()
  assert json.loads((config_dir / "1.0.0" / "dataset_info.json").read_text())


def test_npz_deflate_bomb_is_refused_before_inflating_under_1_gib(tmp_path):
  """A 1.2 MB .npz whose image member inflates to 1.2 GB of a valid .npy array."""
  import zipfile
  root = medmnist_file(tmp_path / "m", "pathmnist")
  path = root / "pathmnist.npz"
  arrays = dict(np.load(path))
  shape = (1200, 1000, 1000)
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      header, {"descr": "|u1", "fortran_order": False, "shape": shape})
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
    for name, value in arrays.items():
      if name != "train_images":
        with archive.open(f"{name}.npy", "w") as member:
          np.lib.format.write_array(member, value)
    with archive.open("train_images.npy", "w", force_zip64=True) as member:
      member.write(header.getvalue())
      zeros = bytes(1_000_000)
      for _ in range(1200):
        member.write(zeros)
  assert path.stat().st_size < 2_000_000
  out = _under_1_gib(f"""
      import sys
      from ftjax.data.__main__ import main
      sys.exit(main(["prepare", "--dataset", "medmnist_pathmnist", "--manual_dir",
                     {str(root)!r}, "--data_dir", {str(tmp_path / "d")!r}]))
      """)
  assert out.returncode == 2, out.stderr[-2000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith("error: ")]
  assert errors == [f"error: {path}: member 'train_images.npy' inflates "
                    f"{_member(path, 'train_images.npy').compress_size:,} stored bytes to "
                    f"{1_200_000_000 + len(header.getvalue()):,}, more than 200x (image "
                    f"arrays compress far less): a damaged or crafted file. Re-download it. "
                    f"{WHERE}"], out.stderr[-2000:]


WHERE = __import__("ftjax.data.medmnist", fromlist=["WHERE"]).WHERE


def _member(path, name):
  import zipfile
  with zipfile.ZipFile(path) as archive:
    return archive.getinfo(name)


def test_non_finite_pixel_in_float_tiff_is_a_bad_image(tmp_path, capsys):
  manual = bach_tree(tmp_path / "m")
  bad = sorted((manual / "ICIAR2018_BACH_Challenge" / "Photos" / "Benign").glob("*.tif"))[1]
  pixels = np.linspace(0, 1, 30 * 40, dtype=np.float32).reshape(30, 40)
  pixels[2, 9] = np.inf
  Image.fromarray(pixels, mode="F").save(bad)
  assert Image.open(bad).mode == "F"
  _check_one_non_finite_image(capsys, "bach", manual, tmp_path / "d", bad, 2, 9)
