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
from tests.helpers.data_trees import records, write_image
from tests.helpers.dicom_files import write_dicom

pydicom = pytest.importorskip("pydicom")
from pydicom import uid  # noqa: E402
from pydicom.pixels import apply_color_lut  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def cli_env() -> dict:
  """This checkout, CPU only, and the tests' compilation cache (repeats are free)."""
  import jax
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
          "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or ""}


def run_cli(*args, timeout=300) -> subprocess.CompletedProcess:
  """`python -m <args>` from the repository."""
  return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=REPO, env=cli_env(),
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


@pytest.mark.parametrize("shape,resize,refused", [
    ((1, 1), 8, "smaller than the 8 pixels a side"),
    ((7, 40), 8, "smaller than the 8 pixels a side"),
    ((40, 7, 3), 8, "smaller than the 8 pixels a side"),
    ((14, 30), 232, "would stretch it 16.6 times, more than the 16 allowed"),
    ((8, 8), 8, None), ((15, 30), 232, None), ((28, 28), 256, None)])
def test_image_too_small_for_the_resize_is_refused_not_stretched(shape, resize, refused):
  """Any source (here an array, as MedMNIST's and the MRI's): a few pixels stretched
  to the resize would look like an image."""
  from ftjax.data import base
  stored = np.random.default_rng(5).integers(0, 256, shape, dtype=np.uint8)
  task = (lambda source: stored, ("x.npz", 3), "x.npz train_images[3]", resize)
  ok, value = base._decode(task)  # pylint: disable=protected-access
  if refused:
    assert not ok and value.startswith(f"x.npz train_images[3]: image is {shape[1]}x{shape[0]} "
                                       "pixels") and refused in value, value
  else:
    assert ok and min(value.shape[:2]) == resize


# ---- through prepare: an error line, or counted skips ----------------------------


def _folder_with_bad_images(root: pathlib.Path) -> dict[str, str]:
  """Two classes of good PNGs plus one bad image of each kind; bad file -> reason."""
  for label in ("a", "b"):
    for i in range(8):
      write_image(root / label / f"{i}.png", size=(40, 30), seed=i + 50 * (label == "b"))
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
  write_dicom(root / "b" / "thin.dcm", STORED[:5])
  write_image(root / "b" / "small.png", size=(12, 10), seed=99)
  bad["a/one_pixel.png"] = "image is 1x1 pixels, smaller than the 8 pixels a side"
  bad["b/thin.dcm"] = "image is 20x5 pixels, smaller than the 8 pixels a side"
  bad["b/small.png"] = "image is 12x10 pixels: resizing its shorter side to 232 would " \
                       "stretch it 23.2 times, more than the 16 allowed"
  return bad


def test_bad_pixels_stop_prepare_or_are_counted_with_reasons(tmp_path):
  bad = _folder_with_bad_images(tmp_path / "m")
  args = ("ftjax.data", "prepare", "--dataset", "folder", "--name", "px", "--manual_dir",
          tmp_path / "m", "--data_dir", tmp_path / "d", "--resize", 232, "--workers", 1,
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


# ---- option ranges: checked before any image is read ------------------------------


def _unreadable_folder(root: pathlib.Path) -> pathlib.Path:
  """Class folders of files that are no images: reading any would fail."""
  for label in ("a", "b"):
    for i in range(6):
      (root / label).mkdir(parents=True, exist_ok=True)
      (root / label / f"{i}.png").write_bytes(b"not an image")
  return root


@pytest.mark.parametrize("flags,named", [
    (("--resize", 0), "resize=0 is out of range: resize is a whole number of pixels from 8"),
    (("--resize", 100000), "resize=100000 is out of range"),
    (("--option", "val_fraction=1.5"), "val_fraction=1.5 is out of range: val_fraction is a "
                                       "fraction from 0 up to (not including) 1"),
    (("--option", "test_fraction=-0.1"), "test_fraction=-0.1 is out of range"),
    (("--option", "val_fraction=lots"), "val_fraction='lots' is out of range"),
    (("--option", "val_fraction=0.6", "--option", "test_fraction=0.5"),
     "test_fraction=0.5 + val_fraction=0.6 hold out all the data"),
    (("--workers", 0), "--workers 0 is out of range: give at least 1 decoding process"),
])
def test_option_out_of_range_is_named_before_any_image_is_read(tmp_path, flags, named):
  m = _unreadable_folder(tmp_path / "m")
  proc = run_cli("ftjax.data", "prepare", "--dataset", "folder", "--name", "opt",
                 "--manual_dir", m, "--data_dir", tmp_path / "d",
                 *(() if "--workers" in flags else ("--workers", 1)), *flags)
  line = one_error_line(proc)
  assert named in line, line
  assert "Re-download" not in line and "class" not in line
  assert not (tmp_path / "d" / "opt").exists() or not list((tmp_path / "d").rglob("*.json"))


def test_builtin_dataset_option_out_of_range_is_named(tmp_path):
  proc = run_cli("ftjax.data", "prepare", "--dataset", "synthetic", "--data_dir",
                 tmp_path / "d", "--option", "num_train=0")
  assert "num_train=0 is out of range: num_train is a whole number of at least 1" in \
      one_error_line(proc)


# ---- prepare: a full disk, Ctrl-C, a damaged record file ---------------------------

SYNTHETIC = ("--dataset", "synthetic", "--resize", 36, "--workers", 1, "--option",
             "num_train=40", "--option", "num_test=8", "--option", "image_size=36")


def _with_fault(module: str, args, fault: str, *, popen=False):
  """`python -m module args` with `fault` (Python code) run first in the process."""
  code = (f"{fault}\nimport runpy, sys\nsys.argv = [{module!r}, *{[str(a) for a in args]!r}]\n"
          f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n")
  command = [sys.executable, "-c", code]
  if popen:
    return subprocess.Popen(command, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  return subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True,
                        timeout=300, check=False)


# The second split's record file fails to be written, as a full disk fails it.
FULL_DISK_AT_SECOND_SPLIT = """
import errno
import tensorflow_datasets.core.writer as writer
_real, _calls = writer.ExampleWriter.write, []
def _write(self, path, examples):
  _calls.append(path)
  if len(_calls) == 2:
    raise {error}
  return _real(self, path, examples)
writer.ExampleWriter.write = _write
"""

DISK_ERRORS = {
    "oserror": "OSError(errno.ENOSPC, 'No space left on device')",
    "array_record_status": "RuntimeError('RESOURCE_EXHAUSTED: Failed to write the record "
                           "file')",
}


def _stored(data_dir: pathlib.Path) -> list[pathlib.Path]:
  """What a prepare left: finished datasets and temporary folders."""
  return sorted(data_dir.rglob("dataset_info.json")) + sorted(data_dir.rglob("incomplete.*"))


def _contents(data_dir: pathlib.Path) -> dict:
  """split -> (id, label, image bytes) of every stored example, as read back."""
  from ftjax.data import get_dataset
  builder = get_dataset("synthetic").create(data_dir, resize=36, num_train=40, num_test=8,
                                            image_size=36)
  return {split: sorted((r["id"], int(r["label"]), r["image"].tobytes())
                        for r in records(builder, split))
          for split in ("train", "validation", "test")}


@pytest.fixture(scope="module")
def straight_synthetic(tmp_path_factory) -> pathlib.Path:
  """The tiny synthetic dataset, prepared without a fault."""
  data_dir = tmp_path_factory.mktemp("straight")
  proc = run_cli("ftjax.data", "prepare", "--data_dir", data_dir, *SYNTHETIC)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return data_dir


@pytest.mark.parametrize("kind", sorted(DISK_ERRORS))
def test_full_disk_during_prepare_is_one_line_and_stores_nothing(tmp_path, kind,
                                                                 straight_synthetic):
  args = ("prepare", "--data_dir", tmp_path / "d", *SYNTHETIC)
  proc = _with_fault("ftjax.data", args,
                     FULL_DISK_AT_SECOND_SPLIT.format(error=DISK_ERRORS[kind]))
  line = one_error_line(proc)
  assert f"error: {tmp_path / 'd'}: no space left on device while preparing synthetic" in line
  assert "nothing was stored" in line and "Free some space" in line
  assert _stored(tmp_path / "d") == []
  again = run_cli("ftjax.data", *args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert _contents(tmp_path / "d") == _contents(straight_synthetic)


SLOW_DECODE = """
import time
from ftjax.data import base
_real = base._decode
def _slow(task):
  time.sleep(0.05)
  return _real(task)
base._decode = _slow
"""


def _interrupt_when(proc: subprocess.Popen, ready, limit: float = 120.0) -> None:
  """SIGINT to `proc` once `ready()` holds (Ctrl-C in a terminal)."""
  import signal
  import time
  start = time.monotonic()
  while proc.poll() is None and not ready() and time.monotonic() - start < limit:
    time.sleep(0.01)
  assert proc.poll() is None, proc.communicate()[1][-3000:]
  proc.send_signal(signal.SIGINT)


def test_ctrl_c_during_prepare_is_one_line_and_stores_nothing(tmp_path, straight_synthetic):
  import time
  args = ("prepare", "--data_dir", tmp_path / "d", *SYNTHETIC)
  proc = _with_fault("ftjax.data", args, SLOW_DECODE, popen=True)
  _interrupt_when(proc, lambda: any((tmp_path / "d").rglob("incomplete.*")))
  time.sleep(0.3)  # into the decoding
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
  assert err.strip().splitlines()[-1] == (
      f"interrupted: nothing was stored in {tmp_path / 'd'}; run the same command again to "
      "prepare the dataset.")
  assert _stored(tmp_path / "d") == []
  again = run_cli("ftjax.data", *args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert _contents(tmp_path / "d") == _contents(straight_synthetic)


def _copy(source: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
  import shutil
  shutil.copytree(source, target)
  return target


@pytest.mark.parametrize("damage", ["truncated", "byte_flipped", "missing"])
def test_damaged_record_file_is_named_at_load(tmp_path, straight_synthetic, damage):
  data_dir = _copy(straight_synthetic, tmp_path / "d")
  record = sorted(data_dir.rglob("*-train.array_record-*"))[0]
  data = record.read_bytes()
  if damage == "truncated":
    record.write_bytes(data[:len(data) // 2])
  elif damage == "byte_flipped":  # same size, one byte in the middle changed
    middle = len(data) // 2
    record.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
  else:
    record.unlink()
  inspect = ("ftjax.data", "inspect", "--dataset", "synthetic", "--data_dir", data_dir,
             "--resize", 36, "--option", "num_train=40", "--option", "num_test=8",
             "--option", "image_size=36")
  line = one_error_line(run_cli(*inspect))
  assert f"error: {record}: prepared record file" in line and "damaged" in line, line
  assert "prepare` again" in line
  assert ("missing" if damage == "missing" else
          "bytes where prepare wrote" if damage == "truncated" else "checksum") in line
  import shutil
  shutil.rmtree(record.parent)
  assert run_cli("ftjax.data", "prepare", "--data_dir", data_dir, *SYNTHETIC).returncode == 0
  assert run_cli(*inspect).returncode == 0


# ---- training: a full disk, Ctrl-C, a damaged record file --------------------------


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> pathlib.Path:
  """The tiny training config's synthetic data, generated once."""
  from ftjax.data.prepared import prepared_builder
  from ftjax.models import registry
  from tests.helpers.runs import tiny_config
  data_dir = tmp_path_factory.mktemp("train_data")
  config = tiny_config(data_dir, "lp")
  prepared_builder(config, registry.get_arch(config.arch))
  return data_dir


def _train_args(tmp_path: pathlib.Path, data_dir: pathlib.Path, epochs: int = 2):
  config = tmp_path / "tiny.py"
  config.write_text(
      "from tests.helpers.runs import tiny_config\n\n\n"
      f"def get_config():\n  return tiny_config({str(data_dir)!r}, 'lp', num_epochs={epochs})\n")
  return (f"--config={config}", f"--workdir={tmp_path / 'run'}")


@pytest.fixture(scope="module")
def straight_run(train_data, tmp_path_factory) -> dict:
  """results.json of the tiny run trained without a fault."""
  from ftjax.engine import training
  from tests.helpers.runs import tiny_config
  return training.train_and_evaluate(tiny_config(train_data, "lp"),
                                     tmp_path_factory.mktemp("straight_run"))


def _same_results(workdir: pathlib.Path, straight: dict) -> None:
  resumed = json.loads((workdir / "results.json").read_text())
  for key in ("best_epoch", "epochs_run", "validation", "test"):
    assert resumed[key] == straight[key], key
  assert _epochs_logged(workdir) == [0, 1]


def _epochs_logged(workdir: pathlib.Path) -> list[int]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line)["epoch"] for line in path.read_text().splitlines()]


# Orbax's save of the second epoch's checkpoint fails as tensorstore reports a full disk.
FULL_DISK_AT_SECOND_SAVE = """
import orbax.checkpoint as ocp
_real, _saves = ocp.CheckpointManager.save, []
def _save(self, step, *args, **kwargs):
  if "latest" in str(self.directory):
    _saves.append(step)
    if len(_saves) == 2:
      raise ValueError('RESOURCE_EXHAUSTED: Error writing local file "' + str(self.directory)
                       + '/1.orbax-checkpoint-tmp-0/state/d/0"')
  return _real(self, step, *args, **kwargs)
ocp.CheckpointManager.save = _save
"""


@pytest.mark.slow  # two trainings; the conversion itself is tested in-process below
def test_full_disk_during_training_is_one_line_and_a_rerun_resumes(tmp_path, train_data,
                                                                   straight_run):
  args = _train_args(tmp_path, train_data)
  proc = _with_fault("ftjax.train", args, FULL_DISK_AT_SECOND_SAVE)
  line = one_error_line(proc, status=1)
  assert line == (f"error: {(tmp_path / 'run' / 'checkpoints' / 'latest').absolute()}: No space "
                  "left on device; the disk is full: free some space or use a --workdir on "
                  "another disk. The last good checkpoint is kept: rerun the same command to "
                  "resume."), line
  assert not (tmp_path / "run" / "results.json").exists()
  again = run_cli("ftjax.train", *args)
  assert again.returncode == 0, again.stderr[-3000:]
  _same_results(tmp_path / "run", straight_run)


def test_full_disk_in_a_checkpoint_save_becomes_enospc_naming_the_folder(tmp_path,
                                                                       monkeypatch):
  import errno
  import orbax.checkpoint as ocp
  from ftjax.engine import checkpoints

  def full(self, *args, **kwargs):
    raise ValueError("RESOURCE_EXHAUSTED: Error writing local file")

  monkeypatch.setattr(ocp.CheckpointManager, "save", full)
  ckpts = checkpoints.RunCheckpoints(tmp_path)
  with pytest.raises(OSError) as caught:
    ckpts.save_best(0, {"w": np.zeros(2)})
  assert caught.value.errno == errno.ENOSPC
  assert caught.value.filename == str((tmp_path / "checkpoints" / "best").absolute())
  ckpts.close()


def test_memory_exhausted_outside_a_write_is_not_a_full_disk():
  from ftjax import faults
  oom = ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8 GiB")
  assert not faults.no_space(oom) and faults.no_space(oom, writing=True)
  try:  # tfds's wrapping of the writer's error keeps it as the cause
    try:
      raise OSError(28, "No space left on device")
    except OSError as inner:
      raise RuntimeError('Failed to finalize writing of split "train": ...') from inner
  except RuntimeError as wrapped:
    assert faults.no_space(wrapped)


def test_ctrl_c_during_training_is_one_line_and_a_rerun_resumes(tmp_path, train_data,
                                                               straight_run):
  """Aimed at the first checkpoint save (orbax's thread in flight), else just after."""
  args = _train_args(tmp_path, train_data)
  proc = subprocess.Popen([sys.executable, "-m", "ftjax.train", *args], cwd=REPO, env=cli_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  saving = lambda: any((tmp_path / "run" / "checkpoints").glob("*/*.orbax-checkpoint-tmp*"))
  _interrupt_when(proc, lambda: saving() or _epochs_logged(tmp_path / "run") == [0],
                  limit=240)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
  assert err.strip().splitlines()[-1] == "interrupted; run the same command again to resume."
  assert not (tmp_path / "run" / "results.json").exists()
  again = run_cli("ftjax.train", *args)
  assert again.returncode == 0, again.stderr[-3000:]
  _same_results(tmp_path / "run", straight_run)


def test_damaged_record_file_stops_training_in_one_line(tmp_path, train_data):
  data_dir = _copy(train_data, tmp_path / "d")
  record = sorted(data_dir.rglob("*-validation.array_record-*"))[0]
  record.write_bytes(record.read_bytes()[:100])
  line = one_error_line(run_cli("ftjax.train", *_train_args(tmp_path, data_dir)), status=1)
  assert f"error: {record}: prepared record file is 100 bytes where prepare wrote" in line
  assert "it is generated again on the next run" in line
  assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ---- the report --------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> pathlib.Path:
  """FT and LP-FT, two seeds each, with test predictions (bootstrap intervals)."""
  from tests.helpers.reports import own_data_sweep as _sweep
  root = tmp_path_factory.mktemp("study")
  _sweep(root, "knee", ["a", "b", "c"], False)
  return root


# run -> how its results.json is spoiled, and the reason the report gives.
BAD_METRICS = {
    "knee/resnet50/ft/lr0.001/seed0": (
        lambda r: r.update(main_metrics=["foo", "accuracy"]),
        "main_metrics ['foo', 'accuracy'] is not a list of metrics of map, accuracy, auroc"),
    "knee/resnet50/ft/lr0.001/seed1": (
        lambda r: r["validation"].update(auroc="high"),
        "validation metric 'auroc' is 'high', not a number"),
    "knee/resnet50/lp_ft/lr0.001/seed0": (
        lambda r: r.update(test="oops"),
        "test is str, not metric values"),
}


def test_report_ignores_runs_with_a_bad_metric_naming_why(tmp_path, study):
  import csv
  root = _copy(study, tmp_path / "runs")
  for run, (change, _) in BAD_METRICS.items():
    path = root / run / "results.json"
    results = json.loads(path.read_text())
    change(results)
    path.write_text(json.dumps(results))
  proc = run_cli("ftjax.report", "--workdir", root, "--out", tmp_path / "out", "--nofigures",
                 "--bootstrap", 50)
  assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  for run, (_, reason) in BAD_METRICS.items():
    assert (f"report: ignored {root / run}: results.json is unreadable" in proc.stderr
            and reason in proc.stderr), (run, proc.stderr[-3000:])
  with open(tmp_path / "out" / "cells.csv", newline="") as f:
    seeds = {row["strategy"]: row["seeds"] for row in csv.DictReader(f)}
  assert seeds == {"lp_ft": "1"}  # the one good run is reported


@pytest.mark.parametrize("flags,message", [
    (("--bootstrap", 100000000), "--bootstrap 100000000: give 10 to 10,000 resamples"),
    (("--paper", "--out", "FILE"), "--out FILE: a file, not a folder"),
])
def test_report_refuses_bad_flags_in_one_line(tmp_path, study, flags, message):
  out_file = tmp_path / "report.txt"
  out_file.write_text("keep me")
  flags = [str(out_file) if f == "FILE" else f for f in flags]
  if "--out" not in flags:
    flags += ["--out", tmp_path / "out"]
  proc = run_cli("ftjax.report", "--workdir", study, "--nofigures", *flags, timeout=60)
  line = one_error_line(proc, status=1)
  assert message.replace("FILE", str(out_file)) in line, line
  assert out_file.read_text() == "keep me" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("resamples,out,message", [
    (5, "out", "--bootstrap 5: give 10 to 10,000 resamples"),
    (10_001, "out", "--bootstrap 10001: give 10 to 10,000 resamples"),
    (100, "file", "a file, not a folder"),
])
def test_report_checks_its_arguments_before_reading(tmp_path, study, resamples, out, message):
  from ftjax.report import write_report
  (tmp_path / "file").write_text("keep me")
  with pytest.raises(ValueError, match=message):
    write_report(study, tmp_path / out, figures_too=False, resamples=resamples)
  assert (tmp_path / "file").read_text() == "keep me" and not (tmp_path / "out").exists()
