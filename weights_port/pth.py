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

Before a pickle is unpickled, its opcodes are scanned without building any
object (`weights_port.pickle_guard`), so a small hostile pickle can neither
exhaust memory nor crash the interpreter, nor alter the reader for the files
read after it.
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import os
import pickle
import struct
import zipfile
import zlib
from typing import IO, Any

import numpy as np

__all__ = [
  "DEFAULT_MAX_TENSOR_BYTES",
  "PthError",
  "PthFormatError",
  "UnsafePickleError",
  "read_state_dict",
  "sha256_of",
]


from weights_port.pickle_guard import (MAX_PICKLE_BYTES, PthError,
                                       PthFormatError, TensorRef, UnsafePickleError, brief,
                                       error_text, load_pickle, not_state_dict, refused,
                                       size_text, truncated)

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

# --- checking layouts, then turning markers into arrays ---------------------------


def _malformed(path: str, name: str, detail: str, fix: str = "") -> PthFormatError:
  return PthFormatError(
    f"{path}: tensor {brief(name)} {detail}; the file is malformed or not a torchvision "
    f"checkpoint, so nothing was loaded. {fix or 'Download the weights again from torchvision.'}"
  )


def _check_layouts(path: str, refs: dict[str, TensorRef],
                   roots: dict[str, tuple[np.dtype, int]], max_tensor_bytes: int,
                   max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> None:
  """Refuse any tensor whose layout disagrees with its storage or exceeds the cap.

  Runs before any storage is read, so a file that declares absurd sizes costs
  nothing but this check.
  """
  raise_cap = (f"If you trust this file, pass a larger max_tensor_bytes "
               f"(now {size_text(max_tensor_bytes)}).")
  stored, first_user = 0, {}
  for name, ref in refs.items():
    first_user.setdefault(ref.storage.key, name)
  for key, name in first_user.items():
    dtype, numel = roots[key]
    stored += numel * dtype.itemsize
    if numel * dtype.itemsize > max_tensor_bytes:
      raise _malformed(path, name, f"uses a storage of {numel} {dtype} elements "
                       f"({size_text(numel * dtype.itemsize)}), over the cap", raise_cap)
    if stored > max_total_bytes:
      raise _malformed(path, name, f"brings the storages to {size_text(stored)}, over the cap "
                       f"of {size_text(max_total_bytes)} for all of them",
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
                       f"({size_text(nbytes)}), over the cap", raise_cap)
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
      raise _malformed(path, name, f"brings the arrays to {size_text(total)}, though the "
                       f"file stores {size_text(stored)}: its views repeat the stored data "
                       f"by more than the cap", raise_cap)
    if total > max_total_bytes:  # what is allocated, repeats included
      raise _malformed(path, name, f"brings the arrays to {size_text(total)}, over the cap "
                       f"of {size_text(max_total_bytes)} for all of them",
                       "If you trust this file, pass a larger max_total_bytes.")


def _to_array(ref: TensorRef, raw: bytes | memoryview, big_endian: bool) -> np.ndarray:
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


def _collect(obj: Any, path: str) -> dict[str, TensorRef]:
  """Check the unpickled object is a flat name -> tensor mapping."""
  if isinstance(obj, dict) and len(obj) == 1:
    (key, value), = obj.items()
    if key in ("state_dict", "model") and isinstance(value, dict):
      obj = value
  if not isinstance(obj, dict):
    raise not_state_dict(path, f"its top-level object is a {type(obj).__name__}")
  for name, value in obj.items():
    if not isinstance(name, str) or not isinstance(value, TensorRef):
      raise not_state_dict(path, f"entry {brief(name)} holds a {type(value).__name__}, not a tensor")
  return dict(obj)


def _materialize(refs: dict[str, TensorRef], key: str, raw: bytes | memoryview,
                 big_endian: bool, out: dict[str, np.ndarray]) -> None:
  for name, ref in refs.items():
    if ref.storage.key == key:
      out[name] = _to_array(ref, raw, big_endian)


def _read_zip(path: str, max_tensor_bytes: int, max_total_bytes: int) -> dict[str, np.ndarray]:
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    twice = sorted(n for n, count in collections.Counter(names).items() if count > 1)
    if twice:  # zipfile would silently read the last of them
      raise PthFormatError(
        f"{path}: the zip archive holds {len(twice)} member name(s) more than once (e.g. "
        f"{twice[0]}): a tampered or badly rewritten file, so nothing was loaded. "
        f"Download the original file again.")
    pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
      raise truncated(path, "the zip archive has no <prefix>/data.pkl entry")
    prefix = pkls[0][: -len("data.pkl")]
    byteorder = b"little"
    if prefix + "byteorder" in zf.namelist():
      with zf.open(prefix + "byteorder") as f:
        byteorder = f.read(16).strip()  # "little" or "big"; never the declared size
      if byteorder not in (b"little", b"big"):
        raise truncated(path, f"unknown byteorder record {brief(byteorder)}")
    roots: dict[str, tuple[np.dtype, int]] = {}
    with zf.open(pkls[0]) as f:
      # Inflate at most one byte past the cap, whatever size the entry declares.
      pickled = f.read(MAX_PICKLE_BYTES + 1)
    if len(pickled) > MAX_PICKLE_BYTES:
      raise refused(path, f"in {pkls[0]} inflates to more than {size_text(MAX_PICKLE_BYTES)}, "
                           f"far more than any state_dict needs")
    obj = load_pickle(io.BytesIO(pickled), len(pickled), path, pkls[0], legacy=False,
                       roots=roots)
    refs = _collect(obj, path)
    _check_layouts(path, refs, roots, max_tensor_bytes, max_total_bytes)
    out: dict[str, np.ndarray] = dict.fromkeys(refs)  # type: ignore[arg-type]
    for key in {ref.storage.key: None for ref in refs.values()}:
      dtype, numel = roots[key]
      entry = f"{prefix}data/{key}"
      try:
        size = zf.getinfo(entry).file_size
      except KeyError:
        raise truncated(path, f"the zip archive lacks the entry {entry}") from None
      needed = numel * dtype.itemsize
      if size < needed:
        raise truncated(path, f"storage {key} holds {size} bytes, {needed} needed")
      # Read only what the storage needs: the entry's declared size is not trusted.
      with zf.open(entry) as f:
        raw = f.read(needed)
      if len(raw) != needed:
        raise truncated(path, f"storage {key} data is cut short")
      _materialize(refs, key, raw, byteorder == b"big", out)
    return out


def _read_exact(f: IO[bytes], n: int, path: str, what: str) -> bytes:
  data = f.read(n)
  if len(data) != n:
    raise truncated(path, f"{what} is cut short")
  return data


def _read_legacy(path: str, f: IO[bytes], max_tensor_bytes: int,
                 max_total_bytes: int) -> dict[str, np.ndarray]:
  file_size = os.fstat(f.fileno()).st_size
  roots: dict[str, tuple[np.dtype, int]] = {}

  def load() -> Any:
    return load_pickle(f, file_size - f.tell(), path, "the file", legacy=True, roots=roots)

  try:
    magic = load()
  except UnsafePickleError:
    raise
  except Exception:  # pylint: disable=broad-except
    magic = None
  if magic != _LEGACY_MAGIC:
    raise _not_checkpoint(path)
  protocol = load()
  if protocol != _LEGACY_PROTOCOL:
    raise PthFormatError(
      f"{path}: legacy torch.save protocol {brief(protocol)} is not supported (only "
      f"{_LEGACY_PROTOCOL}). Re-save it with a current torch.save(model.state_dict(), path)."
    )
  load()  # sys_info: legacy storages are always written little-endian
  refs = _collect(load(), path)
  keys = load()
  if not isinstance(keys, list):
    raise truncated(path, "the list of storage keys is missing")
  keys = [k.decode("ascii") if isinstance(k, bytes) else k for k in keys]
  if set(keys) != set(roots):
    raise truncated(path, "the list of storage keys does not match the tensors")
  _check_layouts(path, refs, roots, max_tensor_bytes, max_total_bytes)
  out: dict[str, np.ndarray] = dict.fromkeys(refs)  # type: ignore[arg-type]
  for key in keys:
    dtype, numel = roots[key]
    (count,) = struct.unpack("<q", _read_exact(f, 8, path, f"storage {key} header"))
    if count != numel:
      raise truncated(path, f"storage {key} records {count} elements, {numel} expected")
    nbytes = count * dtype.itemsize
    if f.tell() + nbytes > file_size:
      raise truncated(path, f"storage {key} data is cut short")
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
    max_total_bytes: the same bound over all storages together, and over all
      arrays together (what is allocated, repeated views included).
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(2, "No such .pth file; check the path or download the weights", path)
  try:
    with open(path, "rb") as f:
      head = f.read(512)
      if not head:
        raise truncated(path, "it is empty (0 bytes)")
      if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        f.close()
        try:
          return _read_zip(path, max_tensor_bytes, max_total_bytes)
        except OSError as e:  # zipfile seeks to the offsets the archive declares
          raise truncated(path, f"the zip archive's offsets are invalid: {error_text(e)}") from e
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
    raise truncated(path, f"the zip archive is incomplete: {e}") from e
  except (pickle.UnpicklingError, EOFError, struct.error, zlib.error) as e:
    raise truncated(path, f"{type(e).__name__}: {error_text(e)}") from e
  except NotImplementedError as e:  # zipfile: an unknown compression method
    raise truncated(path, error_text(e)) from e
  except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
    # Raised by the marker functions or by unexpected pickle contents.
    raise truncated(path, error_text(e)) from e


def sha256_of(path: str | os.PathLike[str]) -> str:
  """Hex sha256 of a file, read in 1 MiB chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()
