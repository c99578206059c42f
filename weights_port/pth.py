"""Read PyTorch ``.pth`` state_dict files into numpy arrays without importing torch.

Two on-disk layouts are understood:

* the zip archive written by ``torch.save`` since torch 1.6
 (``<prefix>/data.pkl``, ``<prefix>/data/<key>``, ``<prefix>/byteorder``);
* the older "legacy" stream of pickles followed by raw storages, which
 torchvision's early weight files (e.g. ``vgg19-dcbb9e9d.pth``) still use.

The pickles are read by an unpickler that admits only the handful of globals
a plain ``state_dict`` needs, each replaced by a local marker, so a hostile
file cannot run code. Every tensor's declared layout (size, stride, offset,
storage) is checked against its storage and a size cap before any storage is
read, so a hostile file cannot make the reader allocate more than the cap.
"""

from __future__ import annotations

import collections
import hashlib
import math
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from typing import IO, Any, Callable

import ml_dtypes
import numpy as np

__all__ = [
  "DEFAULT_MAX_TENSOR_BYTES",
  "PthError",
  "PthFormatError",
  "UnsafePickleError",
  "read_state_dict",
  "sha256_of",
]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# The largest torchvision tensor (a ViT-H/14 or RegNet-Y-128GF weight) is well
# under 1 GiB, so 4 GiB refuses only files that are not torchvision checkpoints.
DEFAULT_MAX_TENSOR_BYTES = 4 << 30
# All storages together: twice vgg19_bn-c79401a0.pth (548 MiB), the largest
# torchvision file ftjax converts.
DEFAULT_MAX_TOTAL_BYTES = 2 * 548 << 20
# numpy arrays have at most 64 dimensions; torchvision tensors have at most 5.
_MAX_NDIM = 32

_STORAGE_DTYPES: dict[str, np.dtype] = {
  "FloatStorage": np.dtype(np.float32),
  "DoubleStorage": np.dtype(np.float64),
  "HalfStorage": np.dtype(np.float16),
  "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
  "LongStorage": np.dtype(np.int64),
  "IntStorage": np.dtype(np.int32),
  "ShortStorage": np.dtype(np.int16),
  "CharStorage": np.dtype(np.int8),
  "ByteStorage": np.dtype(np.uint8),
  "BoolStorage": np.dtype(np.bool_),
}


class PthError(ValueError):
  """A .pth file could not be turned into a state_dict."""


class UnsafePickleError(PthError):
  """The file's pickle asks for something other than tensor rebuilding."""


class PthFormatError(PthError):
  """The file is not a readable PyTorch checkpoint (truncated, corrupt, unknown)."""


def _truncated(path: str, detail: str) -> PthFormatError:
  name = os.path.basename(path)
  return PthFormatError(
    f"{path}: the file is truncated or corrupt ({detail}). Download it again; "
    f"torchvision file names carry the first 8 hex digits of their sha256 "
    f"(e.g. resnet50-11ad3fa6.pth), so compare them with `sha256sum {name}`."
  )


def _not_state_dict(path: str, detail: str) -> PthFormatError:
  return PthFormatError(
    f"{path}: {detail}, so it is not a plain state_dict; ftjax reads only those. "
    f"Re-save it with torch.save(model.state_dict(), path)."
  )


# --- markers standing in for the admitted torch globals -------------------------


@dataclass(frozen=True)
class _StorageType:
  name: str
  dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
  key: str
  dtype: np.dtype
  offset: int  # in elements into the root storage; nonzero only for legacy views
  numel: int


@dataclass(frozen=True)
class _TensorRef:
  storage: _StorageRef
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
  if not isinstance(value, (tuple, list)) or not all(
    isinstance(v, int) and not isinstance(v, bool) for v in value
  ):
    raise ValueError(f"tensor {what} {value!r} is not a tuple of ints")
  return tuple(value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _TensorRef:
  if not isinstance(storage, _StorageRef):
    raise ValueError(f"tensor data is a {type(storage).__name__}, not a storage")
  size_t, stride_t = _int_tuple(size, "size"), _int_tuple(stride, "stride")
  if not isinstance(storage_offset, int) or len(size_t) != len(stride_t):
    raise ValueError(f"bad tensor layout: offset {storage_offset!r}, size {size_t}, stride {stride_t}")
  return _TensorRef(storage, storage_offset, size_t, stride_t)


def _rebuild_tensor_v2(
  storage: Any, storage_offset: Any, size: Any, stride: Any,
  requires_grad: Any, backward_hooks: Any, metadata: Any = None,
) -> _TensorRef:
  # metadata carries conj/neg bits, which never apply to real-valued weights.
  if metadata and any(metadata.values()):
    raise ValueError(f"unsupported tensor metadata {metadata!r}")
  return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> _TensorRef:
  if not isinstance(data, _TensorRef):
    raise ValueError(f"parameter data is a {type(data).__name__}, not a tensor")
  return data


_REBUILDERS: dict[str, Callable[..., _TensorRef]] = {
  "_rebuild_tensor_v2": _rebuild_tensor_v2,
  "_rebuild_tensor": _rebuild_tensor,
  "_rebuild_parameter": _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler whose globals are limited to what a plain state_dict uses."""

  def __init__(self, file: IO[bytes], path: str, legacy: bool,
                 roots: dict[str, tuple[np.dtype, int]]) -> None:
    super().__init__(file, encoding="utf-8")
    self._path = path
    self._legacy = legacy
    self._roots = roots  # storage key -> (dtype, numel), filled as ids are seen

  def find_class(self, module: str, name: str) -> Any:
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch._utils" and name in _REBUILDERS:
      return _REBUILDERS[name]
    # Old files saved from a GPU name torch.cuda.*Storage; the bytes are the same.
    if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
      return _StorageType(name, _STORAGE_DTYPES[name])
    if module in ("torch", "torch.cuda") and name.endswith("Storage"):
      raise PthFormatError(
        f"{self._path}: holds a tensor of storage type {module}.{name}, which ftjax does "
        f"not read (known: {', '.join(_STORAGE_DTYPES)}); the file is malformed or not a "
        f"torchvision checkpoint, so nothing was loaded."
      )
    if module == "__builtin__":  # protocol-2 pickles spell builtins the Python 2 way
      module = "builtins"
    raise UnsafePickleError(
      f"{self._path}: refused to load: its pickle asks for '{module}.{name}', which is "
      f"not a tensor-rebuild function; ftjax reads only plain state_dict files. "
      f"Re-save it with torch.save(model.state_dict(), path) from a trusted source."
    )

  def persistent_load(self, pid: Any) -> _StorageRef:
    if not isinstance(pid, tuple) or len(pid) != (6 if self._legacy else 5):
      raise ValueError(f"unexpected persistent id {pid!r}")
    kind, storage_type, key, _location, numel = (
      v.decode("ascii") if isinstance(v, bytes) else v for v in pid[:5]
    )
    if kind != "storage" or not isinstance(storage_type, _StorageType):
      raise ValueError(f"unexpected persistent id {pid!r}")
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
      raise ValueError(f"unexpected persistent id {pid!r}")
    dtype, root_numel = self._roots.setdefault(key, (storage_type.dtype, numel))
    if dtype != storage_type.dtype:
      raise ValueError(f"storage {key} is read as both {dtype} and {storage_type.dtype}")
    view = pid[5] if self._legacy else None
    if view is None:
      return _StorageRef(key, dtype, 0, root_numel)
    _view_key, offset, view_numel = view
    if not (isinstance(offset, int) and isinstance(view_numel, int)
        and 0 <= offset and 0 <= view_numel and offset + view_numel <= root_numel):
      raise ValueError(f"storage view {view!r} lies outside storage {key}")
    return _StorageRef(key, dtype, offset, view_numel)


# --- checking layouts, then turning markers into arrays ---------------------------


def _bytes(n: int) -> str:
  if n >= 1 << 63:
    return "more than 8 EiB"
  for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
    if n >= 1 << shift:
      return f"{n / (1 << shift):.1f} {unit}"
  return f"{n} bytes"


def _malformed(path: str, name: str, detail: str, fix: str = "") -> PthFormatError:
  return PthFormatError(
    f"{path}: tensor {name!r} {detail}; the file is malformed or not a torchvision "
    f"checkpoint, so nothing was loaded. {fix or 'Download the weights again from torchvision.'}"
  )


def _check_layouts(path: str, refs: dict[str, _TensorRef],
                   roots: dict[str, tuple[np.dtype, int]], max_tensor_bytes: int,
                   max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> None:
  """Refuse any tensor whose layout disagrees with its storage or exceeds the cap.

  Runs before any storage is read, so a file that declares absurd sizes costs
  nothing but this check.
  """
  raise_cap = (f"If you trust this file, pass a larger max_tensor_bytes "
               f"(now {_bytes(max_tensor_bytes)}).")
  stored, first_user = 0, {}
  for name, ref in refs.items():
    first_user.setdefault(ref.storage.key, name)
  for key, name in first_user.items():
    dtype, numel = roots[key]
    stored += numel * dtype.itemsize
    if numel * dtype.itemsize > max_tensor_bytes:
      raise _malformed(path, name, f"uses a storage of {numel} {dtype} elements "
                       f"({_bytes(numel * dtype.itemsize)}), over the cap", raise_cap)
    if stored > max_total_bytes:
      raise _malformed(path, name, f"brings the storages to {_bytes(stored)}, over the cap "
                       f"of {_bytes(max_total_bytes)} for all of them",
                       f"If you trust this file, pass a larger max_total_bytes.")
  total = 0
  for name, ref in refs.items():
    storage, dtype = ref.storage, ref.storage.dtype
    size, stride = ref.size, ref.stride
    if len(size) > _MAX_NDIM:
      raise _malformed(path, name, f"declares {len(size)} dimensions")
    if any(n < 0 for n in size) or any(s < 0 for s in stride) or ref.offset < 0:
      raise _malformed(path, name, f"declares a negative size, stride or offset (size "
                       f"{size}, stride {stride}, offset {ref.offset})")
    nbytes = math.prod(size) * dtype.itemsize
    if nbytes > max_tensor_bytes:
      raise _malformed(path, name, f"declares size {size} of {dtype} "
                       f"({_bytes(nbytes)}), over the cap", raise_cap)
    # A zero-size tensor may still declare an absurd dimension next to its 0.
    if max(size, default=0) > max_tensor_bytes:
      raise _malformed(path, name, f"declares size {size}, a dimension no tensor "
                       f"under the cap can have")
    if nbytes == 0:
      continue
    last = ref.offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.numel:
      raise _malformed(path, name, f"of size {size}, stride {stride} and offset "
                       f"{ref.offset} reaches element {last} of storage {storage.key}, "
                       f"which holds {storage.numel}")
    total += nbytes
    # Views that repeat stored elements (stride 0, overlaps) are legal torch, but
    # must not turn a small file into a huge allocation.
    if total > stored + max_tensor_bytes:
      raise _malformed(path, name, f"brings the arrays to {_bytes(total)}, though the "
                       f"file stores {_bytes(stored)}: its views repeat the stored data "
                       f"by more than the cap", raise_cap)


def _to_array(ref: _TensorRef, raw: bytes | memoryview, big_endian: bool) -> np.ndarray:
  """Copy one tensor out of its root storage's bytes (layout already checked)."""
  dtype, storage = ref.storage.dtype, ref.storage
  if math.prod(ref.size) == 0:
    return np.zeros(ref.size, dtype=dtype)
  itemsize = dtype.itemsize
  swap = big_endian and itemsize > 1
  # Swap through a same-width unsigned view so bfloat16 needs no special case.
  read_dtype = np.dtype(f">u{itemsize}") if swap else dtype
  flat = np.frombuffer(raw, dtype=read_dtype, count=storage.numel, offset=storage.offset * itemsize)
  # The stride of a length-1 dimension is never followed; 0 keeps it in range.
  strides = tuple(0 if n == 1 else s * itemsize for n, s in zip(ref.size, ref.stride))
  view = np.lib.stride_tricks.as_strided(flat[ref.offset:], shape=ref.size, strides=strides)
  out = np.array(view, order="C", copy=True)
  if swap:
    out = out.astype(f"=u{itemsize}").view(dtype)
  return out


def _collect(obj: Any, path: str) -> dict[str, _TensorRef]:
  """Check the unpickled object is a flat name -> tensor mapping."""
  if isinstance(obj, dict) and len(obj) == 1:
    (key, value), = obj.items()
    if key in ("state_dict", "model") and isinstance(value, dict):
      obj = value
  if not isinstance(obj, dict):
    raise _not_state_dict(path, f"its top-level object is a {type(obj).__name__}")
  for name, value in obj.items():
    if not isinstance(name, str) or not isinstance(value, _TensorRef):
      raise _not_state_dict(path, f"entry {name!r} holds a {type(value).__name__}, not a tensor")
  return dict(obj)


def _materialize(refs: dict[str, _TensorRef], key: str, raw: bytes | memoryview,
                 big_endian: bool, out: dict[str, np.ndarray]) -> None:
  for name, ref in refs.items():
    if ref.storage.key == key:
      out[name] = _to_array(ref, raw, big_endian)


def _read_zip(path: str, max_tensor_bytes: int, max_total_bytes: int) -> dict[str, np.ndarray]:
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # zipfile would silently read the last of them
      raise PthFormatError(
        f"{path}: the zip archive holds {len(twice)} member name(s) more than once (e.g. "
        f"{twice[0]}): a tampered or badly rewritten file, so nothing was loaded. "
        f"Download the original file again.")
    pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
      raise _truncated(path, "the zip archive has no <prefix>/data.pkl entry")
    prefix = pkls[0][: -len("data.pkl")]
    byteorder = b"little"
    if prefix + "byteorder" in zf.namelist():
      byteorder = zf.read(prefix + "byteorder").strip()
      if byteorder not in (b"little", b"big"):
        raise _truncated(path, f"unknown byteorder record {byteorder!r}")
    roots: dict[str, tuple[np.dtype, int]] = {}
    with zf.open(pkls[0]) as f:
      obj = _RestrictedUnpickler(f, path, legacy=False, roots=roots).load()
    refs = _collect(obj, path)
    _check_layouts(path, refs, roots, max_tensor_bytes, max_total_bytes)
    out: dict[str, np.ndarray] = dict.fromkeys(refs)  # type: ignore[arg-type]
    for key in {ref.storage.key: None for ref in refs.values()}:
      dtype, numel = roots[key]
      entry = f"{prefix}data/{key}"
      try:
        size = zf.getinfo(entry).file_size
      except KeyError:
        raise _truncated(path, f"the zip archive lacks the entry {entry}") from None
      needed = numel * dtype.itemsize
      if size < needed:
        raise _truncated(path, f"storage {key} holds {size} bytes, {needed} needed")
      # Read only what the storage needs: the entry's declared size is not trusted.
      with zf.open(entry) as f:
        raw = f.read(needed)
      if len(raw) != needed:
        raise _truncated(path, f"storage {key} data is cut short")
      _materialize(refs, key, raw, byteorder == b"big", out)
    return out


def _read_exact(f: IO[bytes], n: int, path: str, what: str) -> bytes:
  data = f.read(n)
  if len(data) != n:
    raise _truncated(path, f"{what} is cut short")
  return data


def _read_legacy(path: str, f: IO[bytes], max_tensor_bytes: int,
                 max_total_bytes: int) -> dict[str, np.ndarray]:
  file_size = os.fstat(f.fileno()).st_size
  roots: dict[str, tuple[np.dtype, int]] = {}

  def load(legacy: bool = True) -> Any:
    return _RestrictedUnpickler(f, path, legacy=legacy, roots=roots).load()

  try:
    magic = load()
  except PthError:
    raise
  except Exception:
    magic = None
  if magic != _LEGACY_MAGIC:
    raise _not_checkpoint(path)
  protocol = load()
  if protocol != _LEGACY_PROTOCOL:
    raise PthFormatError(
      f"{path}: legacy torch.save protocol {protocol!r} is not supported (only "
      f"{_LEGACY_PROTOCOL}). Re-save it with a current torch.save(model.state_dict(), path)."
    )
  load()  # sys_info: legacy storages are always written little-endian
  refs = _collect(load(), path)
  keys = load()
  if not isinstance(keys, list):
    raise _truncated(path, "the list of storage keys is missing")
  keys = [k.decode("ascii") if isinstance(k, bytes) else k for k in keys]
  if set(keys) != set(roots):
    raise _truncated(path, "the list of storage keys does not match the tensors")
  _check_layouts(path, refs, roots, max_tensor_bytes, max_total_bytes)
  out: dict[str, np.ndarray] = dict.fromkeys(refs)  # type: ignore[arg-type]
  for key in keys:
    dtype, numel = roots[key]
    (count,) = struct.unpack("<q", _read_exact(f, 8, path, f"storage {key} header"))
    if count != numel:
      raise _truncated(path, f"storage {key} records {count} elements, {numel} expected")
    nbytes = count * dtype.itemsize
    if f.tell() + nbytes > file_size:
      raise _truncated(path, f"storage {key} data is cut short")
    _materialize(refs, key, _read_exact(f, nbytes, path, f"storage {key} data"), False, out)
  return out


def _not_checkpoint(path: str) -> PthFormatError:
  return PthFormatError(
    f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy "
    f"torch.save stream). Check that the path points to a .pth file written by torch.save."
  )


def read_state_dict(path: str | os.PathLike[str], *,
                    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
                    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> dict[str, np.ndarray]:
  """Read ``torch.save(model.state_dict(), path)`` output as ordered name -> numpy array.

  Arrays are C-contiguous copies that own their memory; bfloat16 tensors come back
  as ``ml_dtypes.bfloat16``. A top-level ``{'state_dict': ...}`` or ``{'model': ...}``
  wrapper is removed.

  Args:
    path: the .pth file.
    max_tensor_bytes: no tensor or storage may be larger, and views that repeat
      stored data (stride 0) may add at most this much in all; a file that
      declares more is refused before anything is allocated.
    max_total_bytes: the same bound over all storages together.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(2, "No such .pth file; check the path or download the weights", path)
  try:
    with open(path, "rb") as f:
      head = f.read(512)
      if not head:
        raise _truncated(path, "it is empty (0 bytes)")
      if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        f.close()
        return _read_zip(path, max_tensor_bytes, max_total_bytes)
      if len(head) >= 262 and head[257:262] == b"ustar":
        raise PthFormatError(
          f"{path}: uses torch's pre-1.0 tar checkpoint format, which is not supported. "
          f"Re-save it with a current torch.save(model.state_dict(), path)."
        )
      if not head.startswith(b"\x80"):  # every legacy file opens with a binary pickle
        raise _not_checkpoint(path)
      f.seek(0)
      return _read_legacy(path, f, max_tensor_bytes, max_total_bytes)
  except PthError:
    raise
  except zipfile.BadZipFile as e:
    raise _truncated(path, f"the zip archive is incomplete: {e}") from e
  except (pickle.UnpicklingError, EOFError, struct.error) as e:
    raise _truncated(path, f"{type(e).__name__}: {e}") from e
  except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
    # Raised by the marker functions or by unexpected pickle contents.
    raise _truncated(path, str(e) or type(e).__name__) from e


def sha256_of(path: str | os.PathLike[str]) -> str:
  """Hex sha256 of a file, read in 1 MiB chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()
