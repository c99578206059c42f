"""weights_port.pth against torch.load as the reference reader."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
import torchvision

from weights_port.pth import (
  PthError,
  PthFormatError,
  UnsafePickleError,
  read_state_dict,
  sha256_of,
)

REPO = Path(__file__).resolve().parents[1]
FORMATS = {"zip": True, "legacy": False}


def _save(obj: object, path: Path, fmt: str) -> Path:
  torch.save(obj, path, _use_new_zipfile_serialization=FORMATS[fmt])
  return path


def _to_numpy(t: torch.Tensor) -> np.ndarray:
  if t.dtype == torch.bfloat16:
    return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.contiguous().numpy()


def _assert_matches_torch(path: Path) -> dict[str, np.ndarray]:
  expected = torch.load(path, weights_only=True)
  got = read_state_dict(path)
  assert list(got) == list(expected)
  for name, ref in expected.items():
    want, arr = _to_numpy(ref), got[name]
    assert arr.dtype == want.dtype, name
    assert arr.shape == want.shape, name
    assert arr.flags.c_contiguous and arr.flags.owndata, name
    # Bitwise comparison, so NaNs and signed zeros count too.
    assert arr.tobytes() == want.tobytes(), name
  return got


@pytest.fixture(scope="module")
def resnet_state() -> OrderedDict:
  torch.manual_seed(0)
  model = torchvision.models.resnet18(num_classes=10)
  # Non-trivial running stats so the buffers are not all zeros/ones.
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.running_mean.uniform_(-1, 1)
      m.running_var.uniform_(0.5, 2)
      m.num_batches_tracked.fill_(7)
  return model.state_dict()


@pytest.mark.parametrize("fmt", FORMATS)
def test_resnet18_matches_torch(resnet_state: OrderedDict, tmp_path: Path, fmt: str) -> None:
  got = _assert_matches_torch(_save(resnet_state, tmp_path / "resnet18.pth", fmt))
  assert len(got) == len(resnet_state)
  assert got["bn1.num_batches_tracked"].dtype == np.int64
  assert got["bn1.num_batches_tracked"].shape == ()
  assert got["fc.weight"].shape == (10, 512)


def _tricky_state() -> OrderedDict:
  torch.manual_seed(1)
  base = torch.randn(4, 6)
  shared = torch.arange(12, dtype=torch.float32)
  return OrderedDict(
    half=torch.randn(3, 5).half(),
    bf16=torch.randn(2, 7).bfloat16(),
    int64=torch.arange(-5, 5, dtype=torch.int64).reshape(2, 5),
    bool=torch.tensor([True, False, True]),
    int8=torch.tensor([-128, 0, 127], dtype=torch.int8),
    transposed=base.t(),  # non-contiguous view
    sliced=base[1:, 2:5],  # nonzero storage offset, non-contiguous
    shared_a=shared[:6].view(2, 3),  # shares a storage with shared_b
    shared_b=shared[4:].view(4, 2),
    scalar=torch.tensor(2.5, dtype=torch.float64),
    empty=torch.empty(0, 3),
  )


@pytest.mark.parametrize("fmt", FORMATS)
def test_dtypes_views_and_shared_storage(tmp_path: Path, fmt: str) -> None:
  state = _tricky_state()
  assert state["sliced"].storage_offset() != 0
  assert not state["transposed"].is_contiguous()
  got = _assert_matches_torch(_save(state, tmp_path / "tricky.pth", fmt))
  assert got["bf16"].dtype == ml_dtypes.bfloat16
  assert got["scalar"].shape == () and got["scalar"] == 2.5
  assert got["empty"].shape == (0, 3)
  # Shared storage must not leak between the returned arrays.
  got["shared_a"][...] = -1
  assert got["shared_b"][0, 0] == 4.0


@pytest.mark.parametrize("fmt", FORMATS)
def test_expanded_and_empty_tensors_pass_the_layout_checks(tmp_path: Path, fmt: str) -> None:
  # Stride-0 views are legal torch: they load as long as their copies stay under the cap.
  state = OrderedDict(
    expanded=torch.arange(3.0).expand(4, 3),
    column=torch.arange(5.0).reshape(5, 1).expand(5, 6),
    tracked=torch.tensor(7),
    empty=torch.empty(0, 3, 0),
  )
  assert state["expanded"].stride() == (0, 1)
  path = _save(state, tmp_path / "expanded.pth", fmt)
  _assert_matches_torch(path)
  # 3 stored floats repeated into 12, and 5 into 30: 168 bytes from 40 stored.
  with pytest.raises(PthFormatError, match=r"tensor 'column' brings the arrays to 168 "
                                           r"bytes, though the file stores 40 bytes"):
    read_state_dict(path, max_tensor_bytes=120)


def test_real_checkpoint_is_under_the_default_cap(resnet_state: OrderedDict,
                                                   tmp_path: Path) -> None:
  path = _save(resnet_state, tmp_path / "resnet18.pth", "zip")
  largest = max(t.numel() * t.element_size() for t in resnet_state.values())
  assert len(read_state_dict(path, max_tensor_bytes=largest)) == len(resnet_state)
  with pytest.raises(PthFormatError, match=r"resnet18\.pth: tensor '[\w.]+' .*over the cap"):
    read_state_dict(path, max_tensor_bytes=largest - 1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_wrapped_state_dict_is_unwrapped(tmp_path: Path, fmt: str) -> None:
  state = OrderedDict(w=torch.randn(2, 2))
  got = read_state_dict(_save({"state_dict": state}, tmp_path / "wrapped.pth", fmt))
  np.testing.assert_array_equal(got["w"], state["w"].numpy())


class _OldStyleTensor:
  """Pickles like torch < 0.4 did, through torch._utils._rebuild_tensor."""

  def __init__(self, t: torch.Tensor) -> None:
    self.t = t

  def __reduce__(self):
    t = self.t
    args = (t._typed_storage(), t.storage_offset(), tuple(t.size()), t.stride())
    return (torch._utils._rebuild_tensor, args)


@pytest.mark.parametrize("fmt", FORMATS)
def test_old_rebuild_and_parameter(tmp_path: Path, fmt: str) -> None:
  base = torch.randn(3, 4)
  state = OrderedDict(old=_OldStyleTensor(base[1:].t()), param=torch.nn.Parameter(torch.randn(5)))
  path = _save(state, tmp_path / "old.pth", fmt)
  expected = torch.load(path, weights_only=False)
  got = read_state_dict(path)
  for name in state:
    assert got[name].tobytes() == _to_numpy(expected[name].detach()).tobytes(), name
    assert got[name].shape == tuple(expected[name].shape), name


def test_big_endian_zip(tmp_path: Path) -> None:
  state = OrderedDict(w=torch.randn(3, 2), b=torch.randn(4).bfloat16())
  path = _save(state, tmp_path / "little.pth", "zip")
  swapped = tmp_path / "big.pth"
  widths = {"0": "<u4", "1": "<u2"}  # storage key -> element width of w and b
  with zipfile.ZipFile(path) as src, zipfile.ZipFile(swapped, "w") as dst:
    for info in src.infolist():
      data = src.read(info)
      if info.filename.endswith("/byteorder"):
        data = b"big"
      elif "/data/" in info.filename:
        width = widths[info.filename.rsplit("/", 1)[1]]
        data = np.frombuffer(data, dtype=width).byteswap().tobytes()
      dst.writestr(info, data)
  got = read_state_dict(swapped)
  assert got["w"].tobytes() == state["w"].numpy().tobytes()
  assert got["b"].tobytes() == _to_numpy(state["b"]).tobytes()


def test_no_torch_import(tmp_path: Path) -> None:
  path = _save(OrderedDict(w=torch.randn(2)), tmp_path / "w.pth", "zip")
  code = (
    "import sys; from weights_port.pth import read_state_dict; "
    f"read_state_dict({str(path)!r}); assert 'torch' not in sys.modules"
  )
  subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# --- hostile pickles -------------------------------------------------------------


class _Evil:
  def __init__(self, cmd: str) -> None:
    self.cmd = cmd

  def __reduce__(self):
    return (os.system, (self.cmd,))


class _EvalEvil:
  def __reduce__(self):
    return (eval, ("__import__('os').getcwd()",))


def _zip_with_pickle(tmp_path: Path, payload: bytes, name: str) -> Path:
  path = _save(OrderedDict(w=torch.randn(2)), tmp_path / "clean.pth", "zip")
  out = tmp_path / name
  with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
    for info in src.infolist():
      data = payload if info.filename.endswith("/data.pkl") else src.read(info)
      dst.writestr(info, data)
  return out


def _legacy_with_pickle(tmp_path: Path, payload: bytes, name: str) -> Path:
  raw = _save(OrderedDict(w=torch.randn(2)), tmp_path / "clean.pth", "legacy").read_bytes()
  f = io.BytesIO(raw)
  for _ in range(3):  # magic, protocol version, sys_info: plain data
    pickle.load(f)
  out = tmp_path / name
  out.write_bytes(raw[: f.tell()] + payload + pickle.dumps([], protocol=2))
  return out


@pytest.mark.parametrize("build", [_zip_with_pickle, _legacy_with_pickle])
def test_os_system_is_refused(tmp_path: Path, build) -> None:
  marker = tmp_path / "pwned"
  payload = pickle.dumps(_Evil(f"touch {marker}"), protocol=2)
  path = build(tmp_path, payload, "evil.pth")
  with pytest.raises(UnsafePickleError) as err:
    read_state_dict(path)
  msg = str(err.value)
  assert "evil.pth" in msg and "system" in msg
  assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("build", [_zip_with_pickle, _legacy_with_pickle])
def test_eval_is_refused(tmp_path: Path, build, protocol: int) -> None:
  path = build(tmp_path, pickle.dumps(_EvalEvil(), protocol=protocol), "eval.pth")
  with pytest.raises(UnsafePickleError, match=r"eval\.pth.*builtins\.eval"):
    read_state_dict(path)


def test_module_pickle_is_refused(tmp_path: Path) -> None:
  path = tmp_path / "module.pth"
  torch.save(torch.nn.Linear(2, 2), path)
  with pytest.raises(UnsafePickleError, match="torch.nn"):
    read_state_dict(path)


# --- damaged and foreign files -----------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_file(resnet_state: OrderedDict, tmp_path: Path, fmt: str) -> None:
  raw = _save(resnet_state, tmp_path / "full.pth", fmt).read_bytes()
  cut = tmp_path / "resnet18-cut.pth"
  cut.write_bytes(raw[: len(raw) // 2])
  with pytest.raises(PthFormatError, match=r"resnet18-cut\.pth.*truncated or corrupt.*sha256sum"):
    read_state_dict(cut)


def test_storage_shorter_than_tensor(tmp_path: Path) -> None:
  path = _save(OrderedDict(w=torch.randn(8)), tmp_path / "w.pth", "zip")
  bad = tmp_path / "short.pth"
  with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
    for info in src.infolist():
      data = src.read(info)
      dst.writestr(info, data[:8] if "/data/" in info.filename else data)
  with pytest.raises(PthFormatError, match=r"short\.pth.*truncated or corrupt"):
    read_state_dict(bad)


def test_empty_file(tmp_path: Path) -> None:
  path = tmp_path / "empty.pth"
  path.write_bytes(b"")
  with pytest.raises(PthFormatError, match=r"empty\.pth"):
    read_state_dict(path)


def test_text_file(tmp_path: Path) -> None:
  path = tmp_path / "notes.pth"
  path.write_text("<html>404 Not Found</html>\n")
  with pytest.raises(PthFormatError, match=r"notes\.pth.*not a PyTorch checkpoint"):
    read_state_dict(path)


def test_missing_file(tmp_path: Path) -> None:
  with pytest.raises(FileNotFoundError, match="nowhere.pth"):
    read_state_dict(tmp_path / "nowhere.pth")


def test_error_hierarchy() -> None:
  assert issubclass(UnsafePickleError, PthError)
  assert issubclass(PthFormatError, PthError)
  assert issubclass(PthError, ValueError)


def test_sha256_of(tmp_path: Path) -> None:
  path = tmp_path / "blob.bin"
  data = np.random.default_rng(0).bytes(3 * (1 << 20) + 123)  # spans several chunks
  path.write_bytes(data)
  assert sha256_of(path) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("fmt", FORMATS)
def test_total_storage_bytes_are_capped(fmt, tmp_path):
  # Three storages each under the per-tensor cap, together over the total cap.
  state = OrderedDict((f"w{i}", torch.zeros(1000)) for i in range(3))  # 4000 bytes each
  path = _save(state, tmp_path / f"three.{fmt}.pth", fmt)
  assert set(read_state_dict(path, max_tensor_bytes=5000, max_total_bytes=12000)) == set(state)
  with pytest.raises(PthFormatError, match=r"w2.*over the cap of .* for all of them"):
    read_state_dict(path, max_tensor_bytes=5000, max_total_bytes=11999)
