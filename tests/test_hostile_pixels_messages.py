"""Pixels are right or refused; messages that promise one line keep it.

DICOM headers that would give a plausible but wrong image, images too small to
resize, disk full, damaged prepared files, Ctrl-C, and option ranges: each is a
counted bad image or one `error:` line, checked through the CLIs in subprocesses.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ftjax.data import dicom
from ftjax.data.validate import BadImage
from tests.test_data_helpers import write_image
from tests.test_own_data import write_dicom

pydicom = pytest.importorskip("pydicom")
from pydicom import uid  # noqa: E402
from pydicom.pixels import apply_color_lut  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
  """`python -m <args>` from the repository, CPU only."""
  full_env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
              **(env or {})}
  return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def one_error_line(proc: subprocess.CompletedProcess, status: int = 2) -> str:
  """The single `error:` line of a failed command (and no traceback)."""
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode == status, proc.stderr[-3000:]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return lines[0]


# ---- DICOM values that would give a wrong image ----------------------------------

STORED = np.random.default_rng(3).integers(0, 4096, (24, 20)).astype(np.uint16)

BAD_HEADERS = {
    "window_center_nan": (dict(WindowCenter=float("nan"), WindowWidth=400),
                          "WindowCenter is nan"),
    "window_width_inf": (dict(WindowCenter=100, WindowWidth=float("inf")),
                         "WindowWidth is inf"),
    "slope_inf": (dict(RescaleSlope=float("inf")), "RescaleSlope is inf"),
    "slope_zero": (dict(RescaleSlope=0), "Rescale Slope is 0"),
    "intercept_nan": (dict(RescaleIntercept=float("nan")), "RescaleIntercept is nan"),
    "overflow": (dict(RescaleSlope=1e308, RescaleIntercept=1e308), "overflow the pixel"),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_dicom_header_giving_a_wrong_image_is_a_bad_image(tmp_path, case):
  tags, reason = BAD_HEADERS[case]
  path = write_dicom(tmp_path / "a.dcm", STORED, **tags)
  with pytest.raises(BadImage, match=reason):
    dicom.read_dicom(str(path))


def test_dicom_empty_window_is_absent_not_wrong(tmp_path):
  """An empty Window Center / Width is no window: the min-max stretch, as without."""
  with_empty = write_dicom(tmp_path / "a.dcm", STORED, WindowCenter="", WindowWidth="")
  without = write_dicom(tmp_path / "b.dcm", STORED)
  expected = np.rint((STORED - STORED.min()) / np.ptp(STORED) * 255).astype(np.uint8)
  np.testing.assert_array_equal(dicom.read_dicom(str(with_empty)), expected)
  np.testing.assert_array_equal(dicom.read_dicom(str(without)), expected)


def _palette_dicom(path, indices, table, bits):
  """A PALETTE COLOR file: 8-bit indices into red/green/blue tables of ``bits``."""
  dtype = "<u2" if bits == 16 else "u1"
  tags = {"PhotometricInterpretation": "PALETTE COLOR", "BitsAllocated": 16,
          "BitsStored": 8, "HighBit": 7}
  for colour, column in zip(("Red", "Green", "Blue"), table.T):
    tags[f"{colour}PaletteColorLookupTableDescriptor"] = [len(table), 0, bits]
    tags[f"{colour}PaletteColorLookupTableData"] = column.astype(dtype).tobytes()
  return write_dicom(path, indices, **tags)


@pytest.mark.parametrize("bits", [8, 16])
def test_palette_colour_dicom_goes_through_its_palette(tmp_path, bits):
  rng = np.random.default_rng(4)
  indices = rng.integers(0, 256, (20, 24)).astype(np.uint16)
  rgb8 = rng.integers(0, 256, (256, 3))
  # 16-bit entries of 257 * v are v exactly at 8 bits: the expected image is rgb8[indices].
  table = rgb8 * 257 if bits == 16 else rgb8
  path = _palette_dicom(tmp_path / "p.dcm", indices, table, bits)
  got = dicom.read_dicom(str(path))
  np.testing.assert_array_equal(got, rgb8[indices].astype(np.uint8))
  ds = pydicom.dcmread(path)  # pydicom's own palette, scaled the same way
  reference = apply_color_lut(ds.pixel_array, ds) / (2 ** bits - 1) * 255
  np.testing.assert_array_equal(got, np.rint(reference).astype(np.uint8))


def test_palette_colour_without_its_palette_is_a_bad_image(tmp_path):
  path = write_dicom(tmp_path / "p.dcm", STORED % 256, PhotometricInterpretation="PALETTE COLOR")
  with pytest.raises(BadImage, match="PALETTE COLOR image whose palette cannot be applied"):
    dicom.read_dicom(str(path))


def test_damaged_jpeg_dicom_blames_the_file_not_a_missing_handler(tmp_path):
  """Pillow decodes JPEG Baseline: a file it cannot decode is damaged, not unsupported."""
  path = write_dicom(tmp_path / "j.dcm", STORED, syntax=uid.JPEGBaseline8Bit)
  with pytest.raises(BadImage, match="JPEG Baseline.*the file is damaged") as caught:
    dicom.read_dicom(str(path))
  assert "not installed" not in str(caught.value)


# ---- through prepare: an error line, or counted skips ----------------------------


def _folder_with_bad_images(root: pathlib.Path) -> dict[str, str]:
  """Two classes of good PNGs plus one bad image of each kind; bad file -> reason."""
  for label in ("a", "b"):
    for i in range(8):
      write_image(root / label / f"{i}.png", size=(40, 30), seed=i)
  bad = {
      "a/nan_window.dcm": "WindowCenter is nan",
      "a/slope_zero.dcm": "Rescale Slope is 0",
      "b/slope_inf.dcm": "RescaleSlope is inf",
      "b/jpeg.dcm": "the file is damaged",
  }
  tags = {"a/nan_window.dcm": BAD_HEADERS["window_center_nan"][0],
          "a/slope_zero.dcm": BAD_HEADERS["slope_zero"][0],
          "b/slope_inf.dcm": BAD_HEADERS["slope_inf"][0]}
  for name, extra in tags.items():
    write_dicom(root / name, STORED, **extra)
  write_dicom(root / "b/jpeg.dcm", STORED, syntax=uid.JPEGBaseline8Bit)
  Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(root / "a" / "one_pixel.png")
  write_dicom(root / "b" / "thin.dcm", STORED[:15])
  bad["a/one_pixel.png"] = "image is 1x1 pixels, smaller than the 16"
  bad["b/thin.dcm"] = "image is 20x15 pixels, smaller than the 16"
  return bad


def test_bad_pixels_stop_prepare_or_are_counted_with_reasons(tmp_path):
  bad = _folder_with_bad_images(tmp_path / "m")
  args = ("ftjax.data", "prepare", "--dataset", "folder", "--name", "px", "--manual_dir",
          tmp_path / "m", "--data_dir", tmp_path / "d", "--resize", 32, "--workers", 1,
          "--option", "test_fraction=0.25")
  line = one_error_line(run_cli(*args))
  assert any(str(tmp_path / "m" / name) in line and reason in line
             for name, reason in bad.items()), line
  assert not list((tmp_path / "d").glob("px/*/*/dataset_info.json"))  # nothing stored
  skipped = run_cli(*args, "--skip_bad")
  assert skipped.returncode == 0, skipped.stderr[-3000:]
  meta = json.loads(next((tmp_path / "d").glob("px/*/*/metadata.json")).read_text())
  assert sum(meta["skipped_bad"].values()) == len(bad)
  for name, reason in bad.items():
    assert [m for m in meta["bad_files"] if str(tmp_path / "m" / name) in m and reason in m]
