"""Hostile inputs give a clear error (or a counted skip), never run code."""

import io
import os
import pathlib
import pickle
import re
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image
import pytest

from ftjax.data import __main__ as data_cli
from ftjax.data import base, medmnist
from tests.helpers.data_trees import mri_tree, prepare
from tests.helpers.subprocesses import under_1_gib
from weights_port import __main__ as weights_cli
from weights_port import pth

REPO = pathlib.Path(__file__).resolve().parents[1]


def _png_bytes(size=(8, 8)) -> bytes:
  out = io.BytesIO()
  Image.fromarray(np.zeros((*size, 3), np.uint8)).save(out, format="PNG")
  return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
  return struct.pack(">I", len(data)) + kind + data + struct.pack(
      ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _decode(path):
  return base._decode((base.open_image, str(path), str(path), 16))  # pylint: disable=protected-access




def test_zero_byte_image_is_a_clear_skip_message(tmp_path):
  path = tmp_path / "empty.png"
  path.write_bytes(b"")
  ok, message = _decode(path)
  assert not ok and "file is empty (0 bytes)" in message and "--skip_bad" in message


def test_truncated_image_is_a_clear_skip_message(tmp_path):
  path = tmp_path / "cut.png"
  path.write_bytes(_png_bytes((64, 64))[:60])
  ok, message = _decode(path)
  assert not ok and "cannot read image" in message and str(path) in message


def test_png_declaring_absurd_size_is_a_clear_message(tmp_path):
  header = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
  path = tmp_path / "bomb.png"
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
                   + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b""))
  ok, message = _decode(path)
  assert not ok and "cannot read image" in message


class _Payload:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_pth_with_malicious_pickle_is_refused_without_running_it(tmp_path, capsys):
  marker = tmp_path / "pwned"
  src = tmp_path / "resnet18-f37072fd.pth"
  with zipfile.ZipFile(src, "w") as archive:
    archive.writestr("archive/data.pkl", pickle.dumps({"fc.weight": _Payload(marker)},
                                                      protocol=2))
    archive.writestr("archive/version", "3\n")
  code = weights_cli.main(["convert", "--arch", "resnet18", "--src", str(src),
                           "--out", str(tmp_path / "out"), "--no-check-hash"])
  err = capsys.readouterr().err
  assert code == 1 and err.startswith("error: ") and "Traceback" not in err
  assert "posix.system" in err or "os.system" in err or "not allowed" in err.lower(), err
  assert not marker.exists()


def test_npz_with_object_arrays_is_refused_without_running_it(tmp_path, capsys):
  """A MedMNIST .npz whose object array would run a command when unpickled."""
  marker = tmp_path / "pwned"
  manual = tmp_path / "downloads"
  manual.mkdir()
  np.savez(manual / "pathmnist.npz",
           train_images=np.array([_Payload(marker)], dtype=object),
           train_labels=np.zeros((1, 1), np.uint8))
  code = data_cli.main(["prepare", "--dataset", "medmnist_pathmnist", "--manual_dir",
                        str(manual), "--data_dir", str(tmp_path / "data"), "--resize", "28"])
  err = capsys.readouterr().err
  assert code == 2 and "Traceback" not in err
  assert err.startswith(f"error: {manual / 'pathmnist.npz'}: cannot load without pickle"), err
  assert not marker.exists()


def _npz_declaring(path, declared_shape, stored=b"\0" * 16):
  """A MedMNIST .npz whose train_images header declares `declared_shape` of uint8."""
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      header, {"descr": "|u1", "fortran_order": False, "shape": declared_shape})
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("train_images.npy", header.getvalue() + stored)
    labels = io.BytesIO()
    np.save(labels, np.zeros((2, 1), np.uint8))
    archive.writestr("train_labels.npy", labels.getvalue())


def test_npz_declaring_terabytes_is_refused_before_reading(tmp_path, capsys):
  manual = tmp_path / "downloads"
  manual.mkdir()
  _npz_declaring(manual / "pathmnist.npz", (10**6, 10**6, 3))
  code = data_cli.main(["prepare", "--dataset", "medmnist_pathmnist", "--manual_dir",
                        str(manual), "--data_dir", str(tmp_path / "data"), "--resize", "28"])
  err = capsys.readouterr().err
  assert code == 2 and "Traceback" not in err
  assert err.startswith(f"error: {manual / 'pathmnist.npz'}: array 'train_images' declares "
                        "shape (1000000, 1000000, 3) of uint8 (3,000,000,000,000 bytes) but "
                        "the file holds"), err


def test_npz_refusal_needs_no_memory(tmp_path):
  """Under a 1 GiB address-space limit a 4 GiB declaration is refused, not a MemoryError."""
  path = tmp_path / "pathmnist.npz"
  _npz_declaring(path, (2**32,))
  out = under_1_gib(f"""
      from ftjax.data import DataError, medmnist
      try:
        medmnist.check_npz_arrays({str(path)!r})
      except DataError as error:
        print("refused" if "declares shape (4294967296,)" in str(error) else error)
      """)
  assert out.returncode == 0 and out.stdout.split() == ["refused"], out.stderr


def test_npz_of_the_right_sizes_still_loads(tmp_path):
  path = tmp_path / "ok.npz"
  np.savez_compressed(path, a=np.arange(1000, dtype=np.float64).reshape(10, 100),
                      b=np.zeros((0, 3), np.uint8), c=np.array(7))
  medmnist.check_npz_arrays(path)  # raises on a refusal


# --- MATLAB v7.3 (HDF5) files of the brain MRI dataset ------------------------------
# HDF5 declares a chunked array's shape without storing it: a few hundred bytes can
# claim terabytes. Each case replaces one field of a valid file.

def _huge(group, name, shape, dtype):
  group.create_dataset(name, shape=shape, dtype=dtype, chunks=(64,) * len(shape))


BAD_MAT_FIELDS = {
    "image_of_8_terabytes": ("image", lambda g: _huge(g, "image", (10**6, 10**6), "f8"),
                             r"cjdata/image declares shape \(1000000, 1000000\)"),
    "label_of_a_billion_values": ("label", lambda g: _huge(g, "label", (10**9,), "f8"),
                                  r"cjdata/label declares shape \(1000000000,\)"),
    "patient_id_of_10**8_chars": ("PID", lambda g: _huge(g, "PID", (10**8,), "u2"),
                                  r"cjdata/PID declares shape \(100000000,\)"),
    "image_is_a_group": ("image", lambda g: g.create_group("image"),
                         "cjdata/image is a Group, not an array"),
    "label_is_text": ("label", lambda g: g.create_dataset("label", data=np.bytes_("glioma")),
                      r"cjdata/label holds \|S6 values, not numbers"),
}


def _spoil_mat(path, case):
  import h5py  # pylint: disable=import-outside-toplevel
  field, write, _ = BAD_MAT_FIELDS[case]
  with h5py.File(path, "r+") as f:
    del f["cjdata"][field]
    write(f["cjdata"])
  assert path.stat().st_size < 1 << 20  # the claim costs the file nothing


@pytest.mark.parametrize("case", sorted(BAD_MAT_FIELDS))
def test_mat_declaring_absurd_or_wrong_fields_is_named(tmp_path, capsys, case):
  manual = mri_tree(tmp_path / "mri")
  bad = sorted(manual.rglob("*.mat"))[4]
  _spoil_mat(bad, case)
  code = data_cli.main(["prepare", "--dataset", "brain_tumor_mri", "--manual_dir",
                        str(manual), "--data_dir", str(tmp_path / "data"), "--resize", "32",
                        "--workers", "1"])
  err = capsys.readouterr().err
  message = err.rstrip("\n").split("\n")[-1].split("\r")[-1]  # after the progress bar
  assert code == 2 and "Traceback" not in err, err
  assert message.startswith(f"error: {bad}: cannot read") and "--skip_bad" in message, err
  assert re.search(BAD_MAT_FIELDS[case][2], message), err


def test_mat_with_absurd_fields_is_a_counted_skip(tmp_path):
  manual = mri_tree(tmp_path / "mri")
  files = sorted(manual.rglob("*.mat"))
  for path, case in zip(files[::5], sorted(BAD_MAT_FIELDS)):
    _spoil_mat(path, case)
  builder = prepare("brain_tumor_mri", manual, tmp_path / "data", skip_bad=True)
  kept = sum(builder.info.splits[s].num_examples for s in ("train", "validation", "test"))
  assert kept == len(files) - len(BAD_MAT_FIELDS)


def test_mat_refusal_needs_no_memory(tmp_path):
  """Under a 1 GiB address-space limit the huge declared fields are refused."""
  manual = mri_tree(tmp_path / "mri", n_patients=1)
  paths = sorted(manual.rglob("*.mat"))
  for path, case in zip(paths, ("image_of_8_terabytes", "label_of_a_billion_values",
                                "patient_id_of_10**8_chars")):
    _spoil_mat(path, case)
  out = under_1_gib(f"""
      from ftjax.data import brain_tumor_mri
      for read, path in zip((brain_tumor_mri.load_mat, brain_tumor_mri.read_header,
                             brain_tumor_mri.read_header), {[str(p) for p in paths]!r}):
        try:
          read(path)
        except ValueError as error:
          print("refused" if "declares shape" in str(error) else error)
      """)
  assert out.returncode == 0 and out.stdout.split() == ["refused"] * 3, out.stderr


# --- .pth files whose tensor layouts disagree with their storages -------------------
# Written opcode by opcode, so the declared sizes are exactly what a hostile file
# could hold (torch itself would refuse to build such tensors).


def _op_str(text: str) -> bytes:
  data = text.encode()
  return b"X" + struct.pack("<I", len(data)) + data


def _op_int(value: int) -> bytes:
  data = pickle.encode_long(value)
  return b"\x8a" + bytes([len(data)]) + data


def _op_tuple(values) -> bytes:
  return b"(" + b"".join(_op_int(v) for v in values) + b"t"


def _state_pickle(tensors: dict, storages: dict, legacy: bool) -> bytes:
  """A protocol-2 state_dict pickle: name -> (storage key, offset, size, stride)."""
  out = b"\x80\x02}("
  for name, (key, offset, size, stride) in tensors.items():
    dtype_name, numel = storages[key]
    pid = (b"(" + _op_str("storage") + b"ctorch\n" + dtype_name.encode() + b"\n"
           + _op_str(key) + _op_str("cpu") + _op_int(numel) + (b"N" if legacy else b"")
           + b"t")
    out += (_op_str(name) + b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"Q"
            + _op_int(offset) + _op_tuple(size) + _op_tuple(stride)
            + b"\x89ccollections\nOrderedDict\n)Rt" + b"R")
  return out + b"u."


def _write_pth(path, tensors, storages, fmt="zip", data_bytes=None):
  """storages: key -> (storage type, declared numel); data holds data_bytes (or what
  the declared numel needs) of ones, float32."""
  payload = _state_pickle(tensors, storages, legacy=fmt == "legacy")
  data = {k: np.ones(numel if data_bytes is None else data_bytes // 4, np.float32).tobytes()
          for k, (_, numel) in storages.items()}
  if fmt == "zip":
    with zipfile.ZipFile(path, "w") as archive:
      archive.writestr("archive/data.pkl", payload)
      archive.writestr("archive/byteorder", "little")
      archive.writestr("archive/version", "3\n")
      for key, raw in data.items():
        archive.writestr(f"archive/data/{key}", raw)
  else:
    head = b"".join(pickle.dumps(v, protocol=2) for v in (
        0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}))
    tail = b"".join(struct.pack("<q", len(raw) // 4) + raw for raw in data.values())
    path.write_bytes(head + payload + pickle.dumps(list(data), protocol=2) + tail)
  return path


_F32 = "FloatStorage"
BAD_LAYOUTS = {
    # name: (tensors, storages, expected message part)
    "stride0_huge": ({"w": ("0", 0, (10**6, 10**6), (0, 0))}, {"0": (_F32, 1)},
                     r"declares size \(1000000, 1000000\) of float32 \(3725\.3 GiB\), over "
                     r"the cap"),
    "size_overflows_int64": ({"w": ("0", 0, (2**40, 2**40, 2**40), (0, 0, 0))},
                             {"0": (_F32, 1)}, "over the cap"),
    "past_storage_end": ({"w": ("0", 0, (8,), (1,))}, {"0": (_F32, 4)},
                         r"reaches element 7 of storage 0, which holds 4"),
    "offset_past_end": ({"w": ("0", 10, (1,), (1,))}, {"0": (_F32, 4)},
                        "reaches element 10 of storage 0"),
    "negative_size": ({"w": ("0", 0, (-1, 4), (4, 1))}, {"0": (_F32, 4)}, "negative size"),
    "negative_stride": ({"w": ("0", 3, (4,), (-1,))}, {"0": (_F32, 4)}, "negative size"),
    "absurd_ndim": ({"w": ("0", 0, (1,) * 100, (0,) * 100)}, {"0": (_F32, 1)},
                    "declares 100 dimensions"),
    "huge_dim_next_to_zero": ({"w": ("0", 0, (0, 10**30), (1, 1))}, {"0": (_F32, 1)},
                              r"a dimension no tensor under the cap can have"),
    "storage_of_1e12": ({"w": ("0", 0, (4,), (1,))}, {"0": (_F32, 10**12)},
                        r"uses a storage of 1000000000000 float32 elements"),
}


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("case", BAD_LAYOUTS)
def test_pth_with_inconsistent_layout_is_refused_before_allocating(tmp_path, case, fmt):
  tensors, storages, expected = BAD_LAYOUTS[case]
  path = _write_pth(tmp_path / "crafted.pth", tensors, storages, fmt,
                    data_bytes=16 if case == "storage_of_1e12" else None)
  with pytest.raises(pth.PthFormatError, match=expected) as err:
    pth.read_state_dict(path)
  message = str(err.value)
  assert message.startswith(f"{path}: tensor 'w' ")
  assert "malformed or not a torchvision checkpoint" in message


def test_pth_with_absurd_tensor_through_the_converter_cli(tmp_path, capsys):
  src = _write_pth(tmp_path / "resnet18-f37072fd.pth", *BAD_LAYOUTS["stride0_huge"][:2])
  code = weights_cli.main(["convert", "--arch", "resnet18", "--src", str(src),
                           "--out", str(tmp_path / "out"), "--no-check-hash"])
  err = capsys.readouterr().err
  assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
  assert err.startswith(f"error: {src}: tensor 'w' declares size (1000000, 1000000) of "
                        "float32 (3725.3 GiB), over the cap; the file is malformed or not a "
                        "torchvision checkpoint")


def test_pth_views_repeating_data_beyond_the_cap_are_refused(tmp_path):
  # Each tensor alone is under the cap; together they repeat 4 stored bytes 1600 times.
  tensors = {name: ("0", 0, (200,), (0,)) for name in ("a", "b", "c")}
  path = _write_pth(tmp_path / "repeat.pth", tensors, {"0": (_F32, 1)})
  with pytest.raises(pth.PthFormatError,
                     match=r"tensor 'b' brings the arrays to 1\.6 KiB, though the file "
                           r"stores 4 bytes.*max_tensor_bytes \(now 1\.0 KiB\)"):
    pth.read_state_dict(path, max_tensor_bytes=1024)
  assert pth.read_state_dict(path, max_tensor_bytes=4096)["c"].shape == (200,)


def test_pth_repeating_views_stay_under_the_total_cap_under_1_gib(tmp_path):
  # One float repeated 300 million times: 1.1 GiB from a file of a few hundred bytes,
  # under the per-tensor cap (4 GiB) but over the total one (1096 MiB by default).
  path = _write_pth(tmp_path / "expand.pth", {"w": ("0", 0, (300_000_000,), (0,))},
                    {"0": (_F32, 1)})
  assert path.stat().st_size < 2000
  out = under_1_gib(f"""
      import sys
      from weights_port import pth
      try:
        pth.read_state_dict({str(path)!r})
      except pth.PthFormatError as error:
        print("error:", error)
        sys.exit(1)
      """)
  assert out.returncode == 1, out.stderr[-2000:]
  assert out.stdout.startswith(f"error: {path}: tensor 'w' brings the arrays to 1.1 GiB, "
                               f"over the cap of 1.1 GiB for all of them"), out.stdout
  assert "pass a larger max_total_bytes" in out.stdout


def test_pth_cap_is_a_parameter(tmp_path):
  path = _write_pth(tmp_path / "big.pth", {"w": ("0", 0, (64, 64), (64, 1))},
                    {"0": (_F32, 64 * 64)})
  with pytest.raises(pth.PthFormatError, match=r"16\.0 KiB\), over the cap.*larger "
                                               r"max_tensor_bytes \(now 8\.0 KiB\)"):
    pth.read_state_dict(path, max_tensor_bytes=8 << 10)
  assert pth.read_state_dict(path)["w"].shape == (64, 64)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_pth_legitimate_odd_layouts_still_load(tmp_path, fmt):
  tensors = {
      "expanded": ("0", 0, (3, 4), (0, 1)),          # stride 0, as torch's expand()
      "scalar": ("1", 0, (), ()),                    # BN num_batches_tracked is 0-d
      "empty": ("2", 0, (0, 3), (3, 1)),             # zero-size
      "unit_dim": ("0", 1, (1, 3), (10**15, 1)),     # a length-1 dim's stride is unused
  }
  storages = {"0": (_F32, 4), "1": (_F32, 1), "2": (_F32, 0)}
  got = pth.read_state_dict(_write_pth(tmp_path / "odd.pth", tensors, storages, fmt))
  assert got["expanded"].shape == (3, 4) and got["expanded"].flags.owndata
  np.testing.assert_array_equal(got["expanded"], np.ones((3, 4), np.float32))
  assert got["scalar"].shape == () and got["scalar"] == 1.0
  assert got["empty"].shape == (0, 3)
  assert got["unit_dim"].shape == (1, 3)


def test_pth_unknown_storage_type_is_named(tmp_path):
  path = _write_pth(tmp_path / "complex.pth", {"w": ("0", 0, (1,), (1,))},
                    {"0": ("ComplexFloatStorage", 1)})
  with pytest.raises(pth.PthFormatError, match=r"complex\.pth: holds a tensor of storage "
                                               r"type torch\.ComplexFloatStorage"):
    pth.read_state_dict(path)


def test_pth_refusal_needs_no_memory(tmp_path):
  """Under a 1 GiB address-space limit the crafted files are refused, not a MemoryError."""
  paths = [str(_write_pth(tmp_path / f"{case}.pth", *BAD_LAYOUTS[case][:2]))
           for case in ("stride0_huge", "size_overflows_int64")]
  out = under_1_gib(f"""
      from weights_port import pth
      for path in {paths!r}:
        try:
          pth.read_state_dict(path)
        except pth.PthFormatError:
          print("refused")
      """)
  assert out.returncode == 0 and out.stdout.split() == ["refused", "refused"], out.stderr
