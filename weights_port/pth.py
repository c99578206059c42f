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
object: every length it declares must fit in the bytes that follow, its
containers may nest only ``_MAX_PICKLE_DEPTH`` deep, it may hold at most
``_MAX_PICKLE_OPS`` opcodes in ``_MAX_PICKLE_BYTES``, and it may change only the
containers it built itself. So a small hostile pickle can neither exhaust memory
nor crash the interpreter, nor alter the reader for the files read after it.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import math
import os
import pickle
import pickletools
import reprlib
import struct
import zipfile
import zlib
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
# Bounds on one pickle (a zip's data.pkl, or one pickle of a legacy file). The
# largest of any architecture ftjax converts, densenet201's (1207 tensors), is
# 197 KiB of 42 028 opcodes whose containers nest 5 deep (a {'state_dict': ...}
# wrapper adds 1): the bounds are far above it, and low enough that a pickle
# within them builds at most a few hundred MiB of objects.
_MAX_PICKLE_BYTES = 64 << 20  # inflated size, for a deflated data.pkl
_MAX_PICKLE_OPS = 1 << 20
_MAX_PICKLE_DEPTH = 100  # far below where hashing or repr of a nest overflows the C stack
_MAX_INT_BITS = 256  # sizes, strides, offsets and the legacy magic fit in 80

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


def _refused(path: str, detail: str) -> UnsafePickleError:
  return UnsafePickleError(
    f"{path}: refused to load: its pickle {detail}; ftjax reads only plain state_dict "
    f"files. Re-save it with torch.save(model.state_dict(), path) from a trusted source."
  )


class _BriefRepr(reprlib.Repr):
  """repr for error messages: a few levels and characters, never a whole object.

  Anything but plain data shows as its type name, so a message never walks a
  deep or huge object the file built.
  """

  def __init__(self) -> None:
    super().__init__()
    self.maxlevel, self.maxstring, self.maxother = 3, 120, 40

  def repr_int(self, x: int, level: int) -> str:
    if x.bit_length() > 128:
      return f"<int of {x.bit_length()} bits>"
    return repr(x)

  def repr_instance(self, x: Any, level: int) -> str:
    if isinstance(x, (float, bool, type(None))):
      return repr(x)
    return f"<{type(x).__name__}>"


_brief = _BriefRepr().repr


def _clip(text: str, limit: int = 120) -> str:
  """A name from the file, shortened for a message."""
  return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]}"


def _error_text(error: BaseException) -> str:
  """str(error), bounded: the text of some errors holds a repr of pickled data."""
  try:
    text = str(error)
  except Exception:  # pylint: disable=broad-except
    text = ""
  text = text or type(error).__name__
  return text if len(text) <= 200 else text[:200] + " ..."


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
    raise ValueError(f"tensor {what} {_brief(value)} is not a tuple of ints")
  return tuple(value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _TensorRef:
  if not isinstance(storage, _StorageRef):
    raise ValueError(f"tensor data is a {type(storage).__name__}, not a storage")
  size_t, stride_t = _int_tuple(size, "size"), _int_tuple(stride, "stride")
  if not isinstance(storage_offset, int) or len(size_t) != len(stride_t):
    raise ValueError(f"bad tensor layout: offset {_brief(storage_offset)}, size "
                     f"{_brief(size_t)}, stride {_brief(stride_t)}")
  return _TensorRef(storage, storage_offset, size_t, stride_t)


def _rebuild_tensor_v2(
  storage: Any, storage_offset: Any, size: Any, stride: Any,
  requires_grad: Any, backward_hooks: Any, metadata: Any = None,
) -> _TensorRef:
  # metadata carries conj/neg bits, which never apply to real-valued weights.
  if metadata and (not isinstance(metadata, dict) or any(metadata.values())):
    raise ValueError(f"unsupported tensor metadata {_brief(metadata)}")
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


def _admit_global(path: str, module: str, name: str) -> None:
  """Refuses every global but the few a plain state_dict names."""
  if ((module, name) == ("collections", "OrderedDict")
      or (module == "torch._utils" and name in _REBUILDERS)
      # Old files saved from a GPU name torch.cuda.*Storage; the bytes are the same.
      or (module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES)):
    return
  if module in ("torch", "torch.cuda") and name.endswith("Storage"):
    raise PthFormatError(
      f"{path}: holds a tensor of storage type {module}.{_clip(name)}, which ftjax does "
      f"not read (known: {', '.join(_STORAGE_DTYPES)}); the file is malformed or not a "
      f"torchvision checkpoint, so nothing was loaded."
    )
  if module == "__builtin__":  # protocol-2 pickles spell builtins the Python 2 way
    module = "builtins"
  raise _refused(path, f"asks for '{_clip(f'{module}.{name}')}', which is not a "
                       f"tensor-rebuild function")


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler whose globals are limited to what a plain state_dict uses."""

  def __init__(self, file: IO[bytes], path: str, legacy: bool,
                 roots: dict[str, tuple[np.dtype, int]]) -> None:
    super().__init__(file, encoding="utf-8")
    self._path = path
    self._legacy = legacy
    self._roots = roots  # storage key -> (dtype, numel), filled as ids are seen

  def find_class(self, module: str, name: str) -> Any:
    _admit_global(self._path, module, name)
    # Each call returns a new object (OrderedDict is an immutable type), so no
    # opcode of one file can reach an object that reads another file.
    if module == "collections":
      return collections.OrderedDict
    if module == "torch._utils":
      return functools.partial(_REBUILDERS[name])
    return _StorageType(name, _STORAGE_DTYPES[name])

  def persistent_load(self, pid: Any) -> _StorageRef:
    if not isinstance(pid, tuple) or len(pid) != (6 if self._legacy else 5):
      raise ValueError(f"unexpected persistent id {_brief(pid)}")
    kind, storage_type, key, _location, numel = (
      v.decode("ascii") if isinstance(v, bytes) else v for v in pid[:5]
    )
    if kind != "storage" or not isinstance(storage_type, _StorageType):
      raise ValueError(f"unexpected persistent id {_brief(pid)}")
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
      raise ValueError(f"unexpected persistent id {_brief(pid)}")
    dtype, root_numel = self._roots.setdefault(key, (storage_type.dtype, numel))
    if dtype != storage_type.dtype:
      raise ValueError(f"storage {_brief(key)} is read as both {dtype} and {storage_type.dtype}")
    view = pid[5] if self._legacy else None
    if view is None:
      return _StorageRef(key, dtype, 0, root_numel)
    _view_key, offset, view_numel = view
    if not (isinstance(offset, int) and isinstance(view_numel, int)
        and 0 <= offset and 0 <= view_numel and offset + view_numel <= root_numel):
      raise ValueError(f"storage view {_brief(view)} lies outside storage {_brief(key)}")
    return _StorageRef(key, dtype, offset, view_numel)


# --- scanning a pickle's opcodes before it is unpickled ----------------------------


class _CheckedReader:
  """The pickle as the opcode scan reads it: a read that would pass `end` is
  refused before it is made, so a declared length of 2**63 allocates nothing."""

  def __init__(self, f: IO[bytes], end: int, path: str, where: str, capped: bool) -> None:
    self._f, self._end, self._path, self._where, self._capped = f, end, path, where, capped

  def tell(self) -> int:
    return self._f.tell()

  def read(self, n: int) -> bytes:
    left = self._end - self._f.tell()
    if n > left:
      raise self._past_end(n, left)
    return self._f.read(n)

  def readline(self) -> bytes:
    return self._f.readline(max(self._end - self._f.tell(), 0))

  def require(self, n: int) -> None:
    """Refuses, as read(n) would, unless n more bytes follow."""
    left = self._end - self._f.tell()
    if n > left:
      raise self._past_end(n, left)

  def _past_end(self, n: int, left: int) -> PthError:
    if self._capped:
      return _refused(self._path, f"in {self._where} runs past {_bytes(_MAX_PICKLE_BYTES)}, "
                                  f"far more than any state_dict needs")
    return _truncated(self._path, f"the pickle in {self._where} needs {n} bytes at byte "
                                  f"{self._f.tell()}, but only {left} remain")


class _Node:
  """What the scan knows of one object the pickle would build."""

  __slots__ = ("kind", "depth", "text")

  def __init__(self, kind: str, depth: int = 0, text: str | None = None) -> None:
    self.kind, self.depth, self.text = kind, depth, text


_ODICT = "collections OrderedDict"
_SCALAR_OPS = frozenset((
  "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING",
  "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "NONE",
  "NEWTRUE", "NEWFALSE", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
  "FLOAT", "BINFLOAT"))
_EMPTY_OPS = {"EMPTY_LIST": "list", "EMPTY_TUPLE": "tuple", "EMPTY_DICT": "dict",
              "EMPTY_SET": "set"}
_FROM_MARK_OPS = {"TUPLE": "tuple", "LIST": "list", "DICT": "dict", "FROZENSET": "frozenset"}
_TUPLE_N_OPS = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
# Opcodes that change an object already built: only containers the pickle built
# itself may be changed, and only OrderedDicts get attributes (a state_dict's
# _metadata). No opcode may change a function or type the reader returned.
_CHANGE_OPS = {"APPEND": ("list",), "APPENDS": ("list",), "SETITEM": ("dict", "odict"),
               "SETITEMS": ("dict", "odict"), "ADDITEMS": ("set",), "BUILD": ("odict",)}
_CHANGE_COUNTS = {"APPEND": 1, "SETITEM": 2, "BUILD": 1}  # the others take a marked slice
_KIND_WORDS = {"global": "a function or class it imported", "object": "a rebuilt object",
               "scalar": "a plain value", "odict": "an OrderedDict"}


class _PickleScan:
  """Follows a pickle's stack and memo without building anything, refusing what
  no torch.save state_dict does (see _MAX_PICKLE_*).

  Depth is measured as containers are built; one grown through the memo after
  it was put in another is not measured again. That leaves only lists, dicts
  and sets (never hashed) deeper than measured, and the reader never walks the
  unpickled object recursively.
  """

  def __init__(self, path: str, where: str) -> None:
    self._path, self._where = path, where
    self._stack: list[_Node] = []
    self._marks: list[int] = []
    self._memo: dict[int, _Node] = {}
    self._pos = 0

  def run(self, reader: _CheckedReader) -> int:
    """Scans to the STOP opcode and returns the offset just past it."""
    ops = pickletools.genops(reader)
    for _ in range(_MAX_PICKLE_OPS):
      op, arg = self._next(ops)
      if op.name == "STOP":
        return self._pos + 1
      if isinstance(arg, int) and arg.bit_length() > _MAX_INT_BITS:
        raise self._refuse(f"holds an integer of {arg.bit_length()} bits")
      try:
        self._step(op.name, arg, reader)
      except IndexError:  # popped an empty stack or a missing mark
        raise _truncated(self._path, f"the pickle in {self._where} is malformed at byte "
                                     f"{self._pos} ({op.name} on too short a stack)") from None
    raise self._refuse(f"has more than {_MAX_PICKLE_OPS} opcodes")

  def _next(self, ops: Any) -> tuple[Any, Any]:
    try:
      op, arg, self._pos = next(ops)
    except PthError:  # the reader's refusals are ValueErrors too
      raise
    except ValueError as e:  # genops: unknown opcode, bad argument, no STOP
      raise _truncated(self._path, f"the pickle in {self._where} is malformed: "
                                   f"{_error_text(e)}") from None
    return op, arg

  def _refuse(self, detail: str) -> UnsafePickleError:
    return _refused(self._path, f"{detail} (byte {self._pos} of {self._where})")

  def _check_depth(self, node: _Node) -> None:
    if node.depth > _MAX_PICKLE_DEPTH:
      raise self._refuse(f"nests containers more than {_MAX_PICKLE_DEPTH} deep")

  def _push(self, node: _Node) -> None:
    self._check_depth(node)
    self._stack.append(node)

  def _pop(self) -> _Node:
    if len(self._stack) <= (self._marks[-1] if self._marks else 0):
      raise IndexError("stack underflow")
    return self._stack.pop()

  def _pop_mark(self) -> list[_Node]:
    mark = self._marks.pop()
    items = self._stack[mark:]
    del self._stack[mark:]
    return items

  def _container(self, kind: str, items: list[_Node]) -> _Node:
    return _Node(kind, 1 + max((item.depth for item in items), default=0))

  def _step(self, name: str, arg: Any, reader: _CheckedReader) -> None:
    if name in _SCALAR_OPS:
      self._push(_Node("scalar", text=arg if isinstance(arg, str) else None))
    elif name in _EMPTY_OPS:
      self._push(_Node(_EMPTY_OPS[name], 1))
    elif name in _FROM_MARK_OPS:
      self._push(self._container(_FROM_MARK_OPS[name], self._pop_mark()))
    elif name in _TUPLE_N_OPS:
      items = [self._pop() for _ in range(_TUPLE_N_OPS[name])]
      self._push(self._container("tuple", items))
    elif name in _CHANGE_OPS:
      self._change(name)
    elif name == "FRAME":  # the unpickler reads the whole frame at once
      reader.require(arg)
    elif name != "PROTO":
      self._step_other(name, arg)

  def _change(self, name: str) -> None:
    count = _CHANGE_COUNTS.get(name)
    items = [self._pop() for _ in range(count)] if count else self._pop_mark()
    if not items:  # an empty batch changes nothing (and the unpickler looks at nothing)
      return
    target = self._stack[-1]
    if target.kind not in _CHANGE_OPS[name]:
      raise self._refuse(f"tries to change {_KIND_WORDS.get(target.kind, 'a ' + target.kind)} "
                         f"with {name}; only containers it built itself may be changed")
    target.depth = max(target.depth, self._container(target.kind, items).depth)
    self._check_depth(target)

  def _memo_index(self, index: int) -> int:
    if not 0 <= index < _MAX_PICKLE_OPS:  # the unpickler sizes its memo by the index
      raise self._refuse(f"uses memo slot {index}")
    return index

  def _step_other(self, name: str, arg: Any) -> None:
    stack = self._stack
    if name == "MARK":
      self._marks.append(len(stack))
    elif name == "POP":
      if self._marks and self._marks[-1] == len(stack):
        self._marks.pop()
      else:
        self._pop()
    elif name == "POP_MARK":
      self._pop_mark()
    elif name == "DUP":
      self._push(stack[-1])
    elif name in ("GET", "BINGET", "LONG_BINGET"):
      if arg not in self._memo:
        raise _truncated(self._path, f"the pickle in {self._where} reads memo slot {arg} "
                                     f"before writing it (byte {self._pos})")
      self._push(self._memo[arg])
    elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
      self._memo[self._memo_index(arg)] = stack[-1]
    elif name == "MEMOIZE":
      self._memo[self._memo_index(len(self._memo))] = stack[-1]
    elif name == "GLOBAL":
      self._push(self._global(*arg.split(" ", 1)))
    elif name == "STACK_GLOBAL":
      attr, module = self._pop(), self._pop()
      if module.text is None or attr.text is None:
        raise _truncated(self._path, f"the pickle in {self._where} names a global by "
                                     f"something other than text (byte {self._pos})")
      self._push(self._global(module.text, attr.text))
    elif name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX"):
      args = [self._pop() for _ in range(2 if name == "NEWOBJ_EX" else 1)]
      self._push(self._call(self._pop(), args))
    elif name == "INST":
      self._push(self._call(self._global(*arg.split(" ", 1)), self._pop_mark()))
    elif name == "OBJ":
      items = self._pop_mark()
      self._push(self._call(items[0], items[1:]))
    elif name == "PERSID":
      self._push(_Node("object", 1))
    elif name == "BINPERSID":
      self._push(self._container("object", [self._pop()]))
    else:  # EXT* (copyreg's registry), *_BUFFER (out-of-band data), or a later protocol's
      raise self._refuse(f"uses the opcode {name}, which no state_dict needs")

  def _global(self, module: str, name: str) -> _Node:
    _admit_global(self._path, module, name)  # refused here, before anything is built
    return _Node("global", text=f"{module} {name}")

  def _call(self, func: _Node, args: list[_Node]) -> _Node:
    if func.kind != "global":
      raise self._refuse(f"calls {_KIND_WORDS.get(func.kind, 'a ' + func.kind)}, not a "
                         f"function it imported")
    return self._container("odict" if func.text == _ODICT else "object", args)


def _load_pickle(f: IO[bytes], size: int, path: str, where: str, legacy: bool,
                 roots: dict[str, tuple[np.dtype, int]]) -> Any:
  """Scans the pickle at f's position (within `size` bytes from there), then loads it."""
  start = f.tell()
  end = start + min(size, _MAX_PICKLE_BYTES)
  stop = _PickleScan(path, where).run(
    _CheckedReader(f, end, path, where, capped=size > _MAX_PICKLE_BYTES))
  f.seek(start)
  obj = _RestrictedUnpickler(f, path, legacy=legacy, roots=roots).load()
  if f.tell() != stop:  # the scan and the unpickler must agree on where it ends
    raise _truncated(path, f"the pickle in {where} ends at byte {f.tell()}, not {stop}")
  return obj


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
    f"{path}: tensor {_brief(name)} {detail}; the file is malformed or not a torchvision "
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
    if total > max_total_bytes:  # what is allocated, repeats included
      raise _malformed(path, name, f"brings the arrays to {_bytes(total)}, over the cap "
                       f"of {_bytes(max_total_bytes)} for all of them",
                       "If you trust this file, pass a larger max_total_bytes.")


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
      raise _not_state_dict(path, f"entry {_brief(name)} holds a {type(value).__name__}, not a tensor")
  return dict(obj)


def _materialize(refs: dict[str, _TensorRef], key: str, raw: bytes | memoryview,
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
      raise _truncated(path, "the zip archive has no <prefix>/data.pkl entry")
    prefix = pkls[0][: -len("data.pkl")]
    byteorder = b"little"
    if prefix + "byteorder" in zf.namelist():
      with zf.open(prefix + "byteorder") as f:
        byteorder = f.read(16).strip()  # "little" or "big"; never the declared size
      if byteorder not in (b"little", b"big"):
        raise _truncated(path, f"unknown byteorder record {_brief(byteorder)}")
    roots: dict[str, tuple[np.dtype, int]] = {}
    with zf.open(pkls[0]) as f:
      # Inflate at most one byte past the cap, whatever size the entry declares.
      pickled = f.read(_MAX_PICKLE_BYTES + 1)
    if len(pickled) > _MAX_PICKLE_BYTES:
      raise _refused(path, f"in {pkls[0]} inflates to more than {_bytes(_MAX_PICKLE_BYTES)}, "
                           f"far more than any state_dict needs")
    obj = _load_pickle(io.BytesIO(pickled), len(pickled), path, pkls[0], legacy=False,
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

  def load() -> Any:
    return _load_pickle(f, file_size - f.tell(), path, "the file", legacy=True, roots=roots)

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
      f"{path}: legacy torch.save protocol {_brief(protocol)} is not supported (only "
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
        raise _truncated(path, "it is empty (0 bytes)")
      if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        f.close()
        try:
          return _read_zip(path, max_tensor_bytes, max_total_bytes)
        except OSError as e:  # zipfile seeks to the offsets the archive declares
          raise _truncated(path, f"the zip archive's offsets are invalid: {_error_text(e)}") from e
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
  except (pickle.UnpicklingError, EOFError, struct.error, zlib.error) as e:
    raise _truncated(path, f"{type(e).__name__}: {_error_text(e)}") from e
  except NotImplementedError as e:  # zipfile: an unknown compression method
    raise _truncated(path, _error_text(e)) from e
  except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
    # Raised by the marker functions or by unexpected pickle contents.
    raise _truncated(path, _error_text(e)) from e


def sha256_of(path: str | os.PathLike[str]) -> str:
  """Hex sha256 of a file, read in 1 MiB chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()
