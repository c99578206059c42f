"""Hostile inputs give a clear error (or a counted skip), never run code."""

import io
import pickle
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image
import pytest

from ftjax.data import base
from weights_port import __main__ as weights_cli


def _png_bytes(size=(8, 8)) -> bytes:
  out = io.BytesIO()
  Image.fromarray(np.zeros((*size, 3), np.uint8)).save(out, format="PNG")
  return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
  return struct.pack(">I", len(data)) + kind + data + struct.pack(
      ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _decode(path):
  return base._decode((base.open_image, str(path), 16))  # pylint: disable=protected-access


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
    import os  # pylint: disable=import-outside-toplevel
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


def test_npz_with_object_arrays_cannot_be_loaded_without_pickle(tmp_path):
  """The MedMNIST builder loads with allow_pickle=False and turns the ValueError
  into a DataError ('cannot load without pickle')."""
  path = tmp_path / "pathmnist.npz"
  np.savez(path, train_images=np.array([{"a": 1}], dtype=object))
  with pytest.raises(ValueError, match="allow_pickle"):
    data = np.load(path, allow_pickle=False)
    _ = data["train_images"]
