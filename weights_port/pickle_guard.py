"""The pickle guard of the .pth reader: nothing in a hostile pickle runs or exhausts memory.

A pickle is first scanned opcode by opcode without building any object: every
length it declares must fit in the bytes that follow, its containers may nest
only ``_MAX_PICKLE_DEPTH`` deep, it may hold at most ``_MAX_PICKLE_OPS`` opcodes in
``MAX_PICKLE_BYTES``, and it may change only the containers it built itself. Then
an unpickler that admits only the handful of globals a plain ``state_dict``
needs, each replaced by a local marker (`TensorRef`), loads it. The file formats
around the pickles (zip, legacy stream) are `weights_port.pth`'s.
"""

from __future__ import annotations

import collections
import functools
import os
import pickle
import pickletools
import reprlib
from dataclasses import dataclass
from typing import IO, Any, Callable

import ml_dtypes
import numpy as np

# Bounds on one pickle (a zip's data.pkl, or one pickle of a legacy file). The
# largest of any architecture ftjax converts, densenet201's (1207 tensors), is
# 197 KiB of 42 028 opcodes whose containers nest 5 deep (a {'state_dict': ...}
# wrapper adds 1): the bounds are far above it, and low enough that a pickle
# within them builds at most a few hundred MiB of objects.
MAX_PICKLE_BYTES = 64 << 20  # inflated size, for a deflated data.pkl
_MAX_PICKLE_OPS = 1 << 20
_MAX_PICKLE_DEPTH = 100  # far below where hashing or repr of a nest overflows the C stack
_MAX_INT_BITS = 256  # sizes, strides, offsets and the legacy magic fit in 80


STORAGE_DTYPES: dict[str, np.dtype] = {
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


def size_text(n: int) -> str:
  if n >= 1 << 63:
    return "more than 8 EiB"
  for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
    if n >= 1 << shift:
      return f"{n / (1 << shift):.1f} {unit}"
  return f"{n} bytes"


class PthError(ValueError):
  """A .pth file could not be turned into a state_dict."""


class UnsafePickleError(PthError):
  """The file's pickle asks for something other than tensor rebuilding."""


class PthFormatError(PthError):
  """The file is not a readable PyTorch checkpoint (truncated, corrupt, unknown)."""


def truncated(path: str, detail: str) -> PthFormatError:
  name = os.path.basename(path)
  return PthFormatError(
    f"{path}: the file is truncated or corrupt ({detail}). Download it again; "
    f"torchvision file names carry the first 8 hex digits of their sha256 "
    f"(e.g. resnet50-11ad3fa6.pth), so compare them with `sha256sum {name}`."
  )


def not_state_dict(path: str, detail: str) -> PthFormatError:
  return PthFormatError(
    f"{path}: {detail}, so it is not a plain state_dict; ftjax reads only those. "
    f"Re-save it with torch.save(model.state_dict(), path)."
  )


def refused(path: str, detail: str) -> UnsafePickleError:
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


brief = _BriefRepr().repr


def _clip(text: str, limit: int = 120) -> str:
  """A name from the file, shortened for a message."""
  return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]}"


def error_text(error: BaseException) -> str:
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
class TensorRef:
  storage: _StorageRef
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
  if not isinstance(value, (tuple, list)) or not all(
    isinstance(v, int) and not isinstance(v, bool) for v in value
  ):
    raise ValueError(f"tensor {what} {brief(value)} is not a tuple of ints")
  return tuple(value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> TensorRef:
  if not isinstance(storage, _StorageRef):
    raise ValueError(f"tensor data is a {type(storage).__name__}, not a storage")
  size_t, stride_t = _int_tuple(size, "size"), _int_tuple(stride, "stride")
  if not isinstance(storage_offset, int) or len(size_t) != len(stride_t):
    raise ValueError(f"bad tensor layout: offset {brief(storage_offset)}, size "
                     f"{brief(size_t)}, stride {brief(stride_t)}")
  return TensorRef(storage, storage_offset, size_t, stride_t)


def _rebuild_tensor_v2(
  storage: Any, storage_offset: Any, size: Any, stride: Any,
  requires_grad: Any, backward_hooks: Any, metadata: Any = None,
) -> TensorRef:
  # metadata carries conj/neg bits, which never apply to real-valued weights.
  if metadata and (not isinstance(metadata, dict) or any(metadata.values())):
    raise ValueError(f"unsupported tensor metadata {brief(metadata)}")
  return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> TensorRef:
  if not isinstance(data, TensorRef):
    raise ValueError(f"parameter data is a {type(data).__name__}, not a tensor")
  return data


_REBUILDERS: dict[str, Callable[..., TensorRef]] = {
  "_rebuild_tensor_v2": _rebuild_tensor_v2,
  "_rebuild_tensor": _rebuild_tensor,
  "_rebuild_parameter": _rebuild_parameter,
}


def _admit_global(path: str, module: str, name: str) -> None:
  """Refuses every global but the few a plain state_dict names."""
  if ((module, name) == ("collections", "OrderedDict")
      or (module == "torch._utils" and name in _REBUILDERS)
      # Old files saved from a GPU name torch.cuda.*Storage; the bytes are the same.
      or (module in ("torch", "torch.cuda") and name in STORAGE_DTYPES)):
    return
  if module in ("torch", "torch.cuda") and name.endswith("Storage"):
    raise PthFormatError(
      f"{path}: holds a tensor of storage type {module}.{_clip(name)}, which ftjax does "
      f"not read (known: {', '.join(STORAGE_DTYPES)}); the file is malformed or not a "
      f"torchvision checkpoint, so nothing was loaded."
    )
  if module == "__builtin__":  # protocol-2 pickles spell builtins the Python 2 way
    module = "builtins"
  raise refused(path, f"asks for '{_clip(f'{module}.{name}')}', which is not a "
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
    return _StorageType(name, STORAGE_DTYPES[name])

  def persistent_load(self, pid: Any) -> _StorageRef:
    if not isinstance(pid, tuple) or len(pid) != (6 if self._legacy else 5):
      raise ValueError(f"unexpected persistent id {brief(pid)}")
    kind, storage_type, key, _location, numel = (
      v.decode("ascii") if isinstance(v, bytes) else v for v in pid[:5]
    )
    if kind != "storage" or not isinstance(storage_type, _StorageType):
      raise ValueError(f"unexpected persistent id {brief(pid)}")
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
      raise ValueError(f"unexpected persistent id {brief(pid)}")
    dtype, root_numel = self._roots.setdefault(key, (storage_type.dtype, numel))
    if dtype != storage_type.dtype:
      raise ValueError(f"storage {brief(key)} is read as both {dtype} and {storage_type.dtype}")
    view = pid[5] if self._legacy else None
    if view is None:
      return _StorageRef(key, dtype, 0, root_numel)
    _view_key, offset, view_numel = view
    if not (isinstance(offset, int) and isinstance(view_numel, int)
        and 0 <= offset and 0 <= view_numel and offset + view_numel <= root_numel):
      raise ValueError(f"storage view {brief(view)} lies outside storage {brief(key)}")
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
      return refused(self._path, f"in {self._where} runs past {size_text(MAX_PICKLE_BYTES)}, "
                                  f"far more than any state_dict needs")
    return truncated(self._path, f"the pickle in {self._where} needs {n} bytes at byte "
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
        raise truncated(self._path, f"the pickle in {self._where} is malformed at byte "
                                     f"{self._pos} ({op.name} on too short a stack)") from None
    raise self._refuse(f"has more than {_MAX_PICKLE_OPS} opcodes")

  def _next(self, ops: Any) -> tuple[Any, Any]:
    try:
      op, arg, self._pos = next(ops)
    except PthError:  # the reader's refusals are ValueErrors too
      raise
    except ValueError as e:  # genops: unknown opcode, bad argument, no STOP
      raise truncated(self._path, f"the pickle in {self._where} is malformed: "
                                   f"{error_text(e)}") from None
    return op, arg

  def _refuse(self, detail: str) -> UnsafePickleError:
    return refused(self._path, f"{detail} (byte {self._pos} of {self._where})")

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
        raise truncated(self._path, f"the pickle in {self._where} reads memo slot {arg} "
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
        raise truncated(self._path, f"the pickle in {self._where} names a global by "
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


def load_pickle(f: IO[bytes], size: int, path: str, where: str, legacy: bool,
                 roots: dict[str, tuple[np.dtype, int]]) -> Any:
  """Scans the pickle at f's position (within `size` bytes from there), then loads it."""
  start = f.tell()
  end = start + min(size, MAX_PICKLE_BYTES)
  stop = _PickleScan(path, where).run(
    _CheckedReader(f, end, path, where, capped=size > MAX_PICKLE_BYTES))
  f.seek(start)
  obj = _RestrictedUnpickler(f, path, legacy=legacy, roots=roots).load()
  if f.tell() != stop:  # the scan and the unpickler must agree on where it ends
    raise truncated(path, f"the pickle in {where} ends at byte {f.tell()}, not {stop}")
  return obj
