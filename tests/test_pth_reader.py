"""weights_port.pth against torch.load as the reference reader."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import pickletools
import re
import resource
import struct
import subprocess
import sys
import textwrap
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


# --- pickles built to crash, exhaust memory or alter the reader ----------------------
# Each hostile construct is followed by a call that would `touch` a sentinel file,
# so a reader that went past the construct would be seen.

_DEEP = 10**6  # levels: a file of about 1 MB
_STORAGE_PID = (b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000"
                b"X\x03\x00\x00\x00cpuK\x01tQ")  # BINPERSID of one float storage


def _deep_list(levels: int, inner: bytes = b"") -> bytes:
  return b"]" * levels + inner + b"a" * (levels - (0 if inner else 1))


def _op_len(opcode: bytes, fmt: str, length: int) -> bytes:
  return opcode + struct.pack(fmt, length)


HOSTILE = {
    # name: (pickle without its sentinel call and STOP, expected message)
    # Hashing a 10^6-deep tuple as a dict key overflowed the C stack (SIGSEGV).
    "deep_tuple_key": (b"\x80\x02}" + b")" + b"\x85" * _DEEP + b"Ns",
                       r"refused to load: its pickle nests containers more than 100 deep "
                       r"\(byte 103 of \w+/data\.pkl\)"),
    # repr of a deep tensor size or persistent id in a message raised RecursionError.
    "deep_tensor_size": (b"\x80\x02ctorch._utils\n_rebuild_tensor\n(" + _STORAGE_PID + b"K\x00"
                         + _deep_list(_DEEP) + b")tR", "nests containers more than 100 deep"),
    "deep_persistent_id": (b"\x80\x02" + _deep_list(_DEEP) + b"Q",
                           "nests containers more than 100 deep"),
    # The unpickler allocated the declared length before reading: MemoryError.
    "bytes_of_1_tib": (b"\x80\x04" + _op_len(b"\x8e", "<Q", 1 << 40),
                       r"truncated or corrupt \(the pickle in \w+/data\.pkl needs "
                       r"1099511627776 bytes at byte 11, but only \d+ remain\)"),
    # The unpickler sized its memo by the slot number: 2**31 slots, MemoryError.
    "memo_slot_2e9": (b"\x80\x02}" + _op_len(b"r", "<I", 2**31 - 1),
                      r"refused to load: its pickle uses memo slot 2147483647 \(byte 3 "),
}


def _sentinel_call(marker: Path) -> bytes:
  """Opcodes that run `touch marker` if ever reached, then drop the result."""
  return pickle.dumps(_Evil(f"touch {marker}"), protocol=2)[2:-1] + b"0"


def _hostile_file(tmp_path: Path, case: str, build=None) -> Path:
  payload = HOSTILE[case][0] + _sentinel_call(tmp_path / "pwned") + b"."
  return (build or _zip_with_pickle)(tmp_path, payload, f"{case}.pth")


def _deflate_bomb(tmp_path: Path) -> Path:
  """A 5 MB zip whose data.pkl inflates to 1 GiB: one bytes opcode and its zeros."""
  path = tmp_path / "bomb.pth"
  block = bytes(1 << 20)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
    with archive.open("bomb/data.pkl", "w") as entry:
      entry.write(b"\x80\x04" + _op_len(b"\x8e", "<Q", (1 << 30) - 11))
      for _ in range(1 << 10):
        entry.write(block)
  return path


def _python_under(gib: int, body: str) -> subprocess.CompletedProcess:
  """Runs `body` in a Python process limited to `gib` GiB of address space."""
  code = ("import resource\n"
          f"resource.setrlimit(resource.RLIMIT_AS, ({gib} << 30, {gib} << 30))\n" + body)
  env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
  return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300, check=False)


def _convert_args(src: Path, tmp_path: Path) -> list[str]:
  return ["convert", "--arch", "resnet18", "--src", str(src), "--out", str(tmp_path / "out"),
          "--no-check-hash"]


def _assert_one_error_line(code: int, err: str, src: Path, expected: str) -> None:
  assert code == 1, (code, err)
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
  assert err.startswith(f"error: {src}: "), err
  assert re.search(expected, err), err


def test_hostile_pickles_through_the_converter_cli_under_1_gib(tmp_path: Path) -> None:
  cases = {case: (_hostile_file(tmp_path, case), HOSTILE[case][1]) for case in HOSTILE}
  cases["deflate_bomb"] = (_deflate_bomb(tmp_path), r"refused to load: its pickle in "
                           r"bomb/data\.pkl inflates to more than 64\.0 MiB")
  # One process for all files (importing the converter takes seconds).
  out = _python_under(1, textwrap.dedent(f"""
      import contextlib, io, json
      from weights_port.__main__ import main
      for args in {[_convert_args(src, tmp_path) for src, _ in cases.values()]!r}:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
          code = main(args)
        print(json.dumps([code, err.getvalue()]), flush=True)
      """))
  assert out.returncode == 0, f"status {out.returncode}: {out.stderr[-2000:]}"
  results = [json.loads(line) for line in out.stdout.splitlines()]
  assert len(results) == len(cases)
  for (src, expected), (code, err) in zip(cases.values(), results):
    _assert_one_error_line(code, err, src, expected)
  assert not (tmp_path / "pwned").exists()


def test_deep_pickle_is_one_error_line_from_python_m_weights_port(tmp_path: Path) -> None:
  """The file that crashed the interpreter, through the real command line."""
  src = _hostile_file(tmp_path, "deep_tuple_key")
  limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # noqa: E731
  out = subprocess.run([sys.executable, "-m", "weights_port", *_convert_args(src, tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       preexec_fn=limit, check=False)
  assert out.returncode == 1, f"status {out.returncode} (negative: killed by a signal)"
  _assert_one_error_line(out.returncode, out.stderr, src, HOSTILE["deep_tuple_key"][1])
  assert not (tmp_path / "pwned").exists()


_LENGTH_OPS = {
    # opcode: (protocol, declared-length prefix); each declares far more than follows
    "BINBYTES8": (4, _op_len(b"\x8e", "<Q", 1 << 62)),
    "BINUNICODE8": (4, _op_len(b"\x8d", "<Q", 1 << 62)),
    "BYTEARRAY8": (5, _op_len(b"\x96", "<Q", 1 << 62)),
    "FRAME": (4, _op_len(b"\x95", "<Q", 1 << 40)),
    "BINUNICODE": (2, _op_len(b"X", "<I", 2**32 - 1)),
    "BINBYTES": (3, _op_len(b"B", "<I", 2**32 - 1)),
    "BINSTRING": (2, _op_len(b"T", "<i", 2**31 - 1)),
    "LONG4": (2, _op_len(b"\x8b", "<i", 2**31 - 1)),
}


def test_declared_lengths_past_the_data_are_refused_under_1_gib(tmp_path: Path) -> None:
  paths, declared = [], []
  for name, (protocol, op) in _LENGTH_OPS.items():
    payload = bytes([0x80, protocol]) + op + b"}."
    for build in (_zip_with_pickle, _legacy_with_pickle):
      paths.append(str(build(tmp_path, payload, f"{name}-{build.__name__}.pth")))
      declared.append(struct.unpack("<Q" if len(op) == 9 else "<I", op[1:])[0])
  out = _python_under(1, textwrap.dedent(f"""
      from weights_port import pth
      for path in {paths!r}:
        try:
          pth.read_state_dict(path)
          print("loaded")
        except pth.PthFormatError as error:
          print(str(error).replace("\\n", " "))
      """))
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert len(lines) == len(paths)
  for path, length, line in zip(paths, declared, lines):
    assert line.startswith(f"{path}: the file is truncated or corrupt"), line
    assert f"needs {length} bytes at byte " in line, line


def test_legacy_pickle_past_the_cap_is_refused_under_1_gib(tmp_path: Path) -> None:
  """A legacy file whose pickle holds 1 GiB of bytes (a sparse file: cheap to write)."""
  path = _legacy_with_pickle(tmp_path, b"\x80\x04" + _op_len(b"\x8e", "<Q", 1 << 30),
                             "huge-legacy.pth")
  with open(path, "r+b") as f:
    f.truncate((1 << 30) + (1 << 20))
  out = _python_under(1, textwrap.dedent(f"""
      from weights_port import pth
      try:
        pth.read_state_dict({str(path)!r})
      except pth.UnsafePickleError as error:
        print(error)
      """))
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.startswith(f"{path}: refused to load: its pickle in the file runs past "
                               f"64.0 MiB, far more than any state_dict needs"), out.stdout


@pytest.mark.parametrize("build", [_zip_with_pickle, _legacy_with_pickle])
def test_deep_legacy_and_zip_pickles_are_refused(tmp_path: Path, build) -> None:
  path = _hostile_file(tmp_path, "deep_tuple_key", build)
  with pytest.raises(UnsafePickleError, match="nests containers more than 100 deep"):
    read_state_dict(path)


def test_messages_never_show_a_deep_or_huge_object(tmp_path: Path) -> None:
  # A tensor size that is a list 50 deep (under the limit) around a 1 MiB name.
  huge = b"X" + struct.pack("<I", 1 << 20) + b"n" * (1 << 20)
  payload = (b"\x80\x02ctorch._utils\n_rebuild_tensor\n(" + _STORAGE_PID + b"K\x00"
             + _deep_list(50, huge) + b")tR.")
  path = _zip_with_pickle(tmp_path, payload, "wordy.pth")
  with pytest.raises(PthFormatError, match=r"wordy\.pth: .*tensor size \[\[\[.*is not a tuple "
                                           r"of ints") as err:
    read_state_dict(path)
  assert len(str(err.value)) < 600, len(str(err.value))


MUTATIONS = {
    # name: a pickle that tries to change an object the reader hands to every file
    "defaults_of_rebuild_v2": b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n"
                              b"N}X\x0c\x00\x00\x00__defaults__)s\x86b.",
    "attributes_of_rebuild_parameter": b"\x80\x02ctorch._utils\n_rebuild_parameter\n"
                                       b"}X\x08\x00\x00\x00__call__Nsb.",
    "storage_type": b"\x80\x02ctorch\nFloatStorage\nN}X\x05\x00\x00\x00dtypeK\x01s\x86b.",
    "item_of_ordereddict_type": b"\x80\x02ccollections\nOrderedDict\nX\x01\x00\x00\x00kNs.",
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_file_cannot_change_how_later_files_load(tmp_path: Path, fmt: str) -> None:
  build = _zip_with_pickle if fmt == "zip" else _legacy_with_pickle
  for name, payload in MUTATIONS.items():
    with pytest.raises(UnsafePickleError, match=r"tries to change a function or class it "
                                                r"imported with (BUILD|SETITEM)"):
      read_state_dict(build(tmp_path, payload, f"{name}.pth"))
  # A good file read afterwards in the same process still loads as torch.load reads it.
  _assert_matches_torch(_save(_tricky_state(), tmp_path / "good.pth", fmt))


def test_unpickler_alone_hands_each_file_fresh_rebuild_functions(tmp_path: Path) -> None:
  """Even without the opcode scan, the objects a file can reach are its own."""
  from weights_port import pickle_guard  # pylint: disable=import-outside-toplevel
  for payload in MUTATIONS.values():
    unpickler = pickle_guard._RestrictedUnpickler(  # pylint: disable=protected-access
        io.BytesIO(payload), "crafted.pth", legacy=False, roots={})
    try:
      unpickler.load()
    except Exception:  # pylint: disable=broad-except
      pass  # refusing is fine; what matters is the next file
  _assert_matches_torch(_save(_tricky_state(), tmp_path / "good.pth", "zip"))


@pytest.mark.parametrize("arch", ["resnet50", "densenet201"])
def test_real_pickles_are_far_inside_the_pickle_bounds(tmp_path: Path, arch: str,
                                                       monkeypatch) -> None:
  # densenet201 has the most tensors (1207) of the architectures ftjax converts.
  from weights_port import pickle_guard  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  path = _save(getattr(torchvision.models, arch)().state_dict(), tmp_path / f"{arch}.pth", "zip")
  with zipfile.ZipFile(path) as archive:
    pickled = archive.read(f"{arch}/data.pkl")
  opcodes = sum(1 for _ in pickletools.genops(pickled))
  assert len(pickled) < pickle_guard.MAX_PICKLE_BYTES // 64  # pylint: disable=protected-access
  assert opcodes < pickle_guard._MAX_PICKLE_OPS // 16  # pylint: disable=protected-access
  # Its containers nest exactly 5 deep, as documented: loads at 5, refused at 4.
  monkeypatch.setattr(pickle_guard, "_MAX_PICKLE_DEPTH", 5)
  _assert_matches_torch(path)
  monkeypatch.setattr(pickle_guard, "_MAX_PICKLE_DEPTH", 4)
  with pytest.raises(UnsafePickleError, match="nests containers more than 4 deep"):
    read_state_dict(path)


PICKLE_BOUNDS = {
    # name: (pickle, expected message part)
    "too_many_opcodes": (b"\x80\x02" + b"K\x00" * 1001 + b".", "has more than 1000 opcodes"),
    "integer_of_505_bits": (b"\x80\x02\x8a\x40" + b"\x01" * 64 + b".",
                            r"holds an integer of 505 bits \(byte 2 of "),
    "out_of_band_buffer": (b"\x80\x05\x97.", "uses the opcode NEXT_BUFFER, which no state_dict"),
    "call_of_a_number": (b"\x80\x02K\x01K\x02R.", "calls a plain value, not a function it "
                                                  "imported"),
    "memo_read_before_write": (b"\x80\x02h\x05.", "reads memo slot 5 before writing it"),
}


@pytest.mark.parametrize("case", PICKLE_BOUNDS)
def test_pickles_outside_the_bounds_are_refused(tmp_path: Path, case: str, monkeypatch) -> None:
  from weights_port import pickle_guard  # pylint: disable=import-outside-toplevel
  # The real bound (2**20 opcodes) takes seconds to reach; the count is the same code.
  monkeypatch.setattr(pickle_guard, "_MAX_PICKLE_OPS", 1000)
  payload, expected = PICKLE_BOUNDS[case]
  path = _zip_with_pickle(tmp_path, payload, f"{case}.pth")
  with pytest.raises(PthError, match=expected) as err:
    read_state_dict(path)
  assert str(err.value).startswith(f"{path}: "), err.value
