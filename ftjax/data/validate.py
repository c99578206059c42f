"""The checks every dataset's files, labels and images pass before anything is stored.

Builders read their own layout; what they read is checked here, in one place:

* images (in the decoding workers): ``check_decoded_size`` before the decode,
  ``check_pixels`` after it, ``check_resized_size`` before the resize;
  PIL's DecompressionBombWarning is an error (``bomb_warnings_as_errors``);
* label arrays and CSV headers: ``check_label_shape``, ``check_columns``;
* the listed examples (``check_examples``): unique keys, UTF-8 names, image
  paths inside manual_dir (symbolic links resolved), no file used twice, no
  folder where an image belongs;
* folder walks (``walk``): a symbolic link to a folder is refused (it would
  label its images twice or reach outside the dataset).

A failed image check raises :class:`BadImage` (a bad image: an error, or a
counted skip with ``--skip_bad``); every other failure is a :class:`DataError`
of one line naming the file (row, array index) and the fix.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from ftjax.data import preprocess
from ftjax.data.errors import DataError

# PIL's own decompression-bomb limit (89.5 M pixels, 268 MB as RGB); beyond it a
# header is taken to lie about the image, never decoded.
MAX_DECODED_PIXELS = Image.MAX_IMAGE_PIXELS
# The shorter-side resize makes a 1 x 20000 image 232 x 4,640,000: the longer side
# grows with the aspect ratio. 2**24 pixels (48 MiB as RGB) allows an aspect ratio of
# 1:311 at resize 232; the datasets' images are at most about 1:3.
MAX_RESIZED_PIXELS = 1 << 24


class BadImage(ValueError):
  """An image that cannot be stored as it is (the message says why, not where)."""


@contextlib.contextmanager
def bomb_warnings_as_errors() -> Iterator[None]:
  """PIL only warns about a header declaring 1-2x its pixel limit; here it is an error."""
  with warnings.catch_warnings():
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    yield


def check_decoded_size(width: int, height: int) -> None:
  if width <= 0 or height <= 0:
    raise BadImage(f"image is {width}x{height} pixels (empty)")
  if width * height > MAX_DECODED_PIXELS:
    raise BadImage(f"image declares {width}x{height} pixels, more than the "
                   f"{MAX_DECODED_PIXELS:,} an image may have (a damaged or hostile header)")


def check_resized_size(width: int, height: int, size: int) -> None:
  """The shorter-side resize to ``size`` must stay within MAX_RESIZED_PIXELS."""
  new_width, new_height = preprocess.resized_size(width, height, size)
  if new_width * new_height > MAX_RESIZED_PIXELS:
    raise BadImage(f"image is {width}x{height} pixels: resizing its shorter side to {size} "
                   f"gives {new_width}x{new_height}, more than the {MAX_RESIZED_PIXELS:,} "
                   f"pixels allowed (an aspect ratio no scan has)")


def check_pixels(image: Image.Image | np.ndarray) -> tuple[int, int]:
  """(width, height) of a decoded image whose values can be scaled to uint8."""
  if isinstance(image, Image.Image):
    check_decoded_size(*image.size)
    if image.mode == "F":  # float TIFFs: the only PIL mode that holds NaN
      _check_finite(np.asarray(image))
    return image.size
  array = np.asarray(image)
  if array.dtype.kind not in "biuf":
    raise BadImage(f"image holds {array.dtype} values, not numbers")
  if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3))):
    raise BadImage(f"image has shape {array.shape}; expected H x W or H x W x 3")
  check_decoded_size(array.shape[1], array.shape[0])
  if array.dtype.kind == "f":
    _check_finite(array)
  return array.shape[1], array.shape[0]


def _check_finite(array: np.ndarray) -> None:
  bad = ~np.isfinite(array)
  if bad.any():
    row, column = np.argwhere(bad)[0][:2]
    raise BadImage(f"image holds {int(bad.sum())} non-finite pixel value(s) (NaN or Inf, "
                   f"the first at row {row}, column {column}), which no scaling can store")


def check_label_shape(labels: np.ndarray, expected: tuple[int, ...], what: str,
                      fix: str) -> None:
  if labels.shape != expected:
    raise DataError(f"{what} has shape {labels.shape}; expected {expected}. {fix}")


def check_columns(path: Path, columns: Sequence[str], fix: str) -> None:
  """A CSV header naming a column twice is refused: a reader keeps one silently."""
  seen: set[str] = set()
  twice = sorted({c for c in columns if c in seen or seen.add(c)})
  if twice:
    raise DataError(f"{path}: column(s) {twice} appear more than once in the header, so "
                    f"which one holds the values is ambiguous. {fix}")


def shown(path: str | os.PathLike) -> str:
  """A path as text, undecodable bytes shown as \\xNN (messages must print)."""
  text = os.fspath(path)
  try:  # file names: undecodable bytes are surrogate escapes
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
  except UnicodeEncodeError:  # other lone surrogates (e.g. from UTF-16 codes)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_text(text: str, what: str, where: str, fix: str) -> None:
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    raise DataError(f"{where}: {what} {shown(text)!r} is not UTF-8 text. {fix}") from None


def resolve_inside(root: Path, path: Path, where: str) -> Path:
  """``path`` with symbolic links and '..' resolved; a DataError (``where`` names the
  path) if it leaves ``root``."""
  return Path(_Resolver(root).inside(os.fspath(path), where))


class _Resolver:
  """Resolves many paths under one root: each folder above a file's own folder is
  looked up once, so a file costs two lstats, not one per component of its path, and
  only those folders are remembered."""

  def __init__(self, root: Path):
    self.root = root
    self.top = os.path.realpath(root)
    self.folders: dict[str, str] = {}

  def real(self, path: str, level: int = 0) -> str:
    """os.path.realpath(path) (``level``: how far above a file ``path`` is)."""
    found = self.folders.get(path)
    if found is not None:
      return found
    parent, name = os.path.split(path)
    if name in ("", ".", "..") or parent == path:
      found = os.path.realpath(path or ".")
    else:
      full = os.path.join(self.real(parent, level + 1), name)
      found = os.path.realpath(full) if os.path.islink(full) else full
    if level >= 2:
      self.folders[path] = found
    return found

  def inside(self, path: str, where: str | Callable[[], str]) -> str:
    """The real path; a DataError naming ``where`` (or what it returns) outside root."""
    resolved = self.real(path)
    if resolved != self.top and not resolved.startswith(self.top.rstrip(os.sep) + os.sep):
      where = where() if callable(where) else where
      raise DataError(f"{where}: leads to {shown(resolved)}, outside manual_dir "
                      f"{shown(self.root)} (an absolute path, '..' or a symbolic link). Keep "
                      "the dataset's files inside manual_dir and use its original file lists.")
    return resolved


def check_examples(splits: dict[str, list], root: Path | None) -> None:
  """Keys unique across splits, UTF-8 names and, for file sources, one distinct file
  inside ``root`` per example (one pass; a message's ``where`` is made only for it)."""
  keys: dict[str, Any] = {}
  files: dict[int, Any] = {}  # hash of the real path -> the example (no copy of the path)
  collided: dict[str, Any] = {}
  resolver = _Resolver(root) if root is not None else None
  for examples in splits.values():
    for example in examples:
      if not _is_utf8(example.key):
        check_text(example.key, "name", example.where,
                   "Rename it (names are stored as UTF-8 text).")
      if not _is_utf8(example.patient_id):
        check_text(example.patient_id, "patient id", example.where,
                   "Use the dataset's original file (patient ids are stored as UTF-8 text).")
      if example.key in keys:
        raise DataError(f"{example.where}: '{example.key}' is listed twice (also at "
                        f"{keys[example.key].where}); every image must appear once. Use the "
                        "dataset's original files.")
      keys[example.key] = example
      if resolver is None or not isinstance(example.source, (str, os.PathLike)):
        continue
      resolved = resolver.inside(os.fspath(example.source), lambda e=example: e.where)
      if os.path.isdir(resolved):
        raise DataError(f"{example.where}: a folder, not an image file. "
                        "Remove or rename the folder, and restore the image.")
      other = files.setdefault(hash(resolved), example)
      if other is not example and resolver.real(os.fspath(other.source)) != resolved:
        other = collided.setdefault(resolved, example)  # two paths, one hash: rare
      if other is not example:
        raise DataError(f"{example.where}: the same file as {other.where} "
                        f"({shown(resolved)}, through a symbolic link): it would be stored "
                        "twice, perhaps under two labels. Replace the link by the real files.")


def _is_utf8(text: str) -> bool:
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


def is_hidden(name: str) -> bool:
  """A hidden file or folder ('.DS_Store', '.ipynb_checkpoints'): never data."""
  return name.startswith(".")


def hidden_files(path: Path) -> list[Path]:
  """``path`` if it is a file (or a link), else every file under the folder."""
  if path.is_symlink() or not path.is_dir():
    return [path]
  return [Path(parent) / name for parent, _, names in os.walk(path) for name in names]


def walk(folder: Path, image_suffixes: Sequence[str] = (),
         hidden: list[Path] | None = None) -> Iterator[Path]:
  """Every file under ``folder`` (sorted). A symbolic link to a folder, and a folder
  named like an image (``image1.png/``), are DataErrors. With a ``hidden`` list, the
  files in hidden folders and the hidden files are added to it instead."""
  for parent, dirs, names in os.walk(folder):
    parent_path = Path(parent)
    if hidden is not None:
      for name in sorted(n for n in dirs + names if is_hidden(n)):
        hidden.extend(hidden_files(parent_path / name))
      dirs[:] = [n for n in dirs if not is_hidden(n)]
      names = [n for n in names if not is_hidden(n)]
    for name in sorted(dirs):
      path = parent_path / name
      if path.is_symlink():
        raise DataError(f"{shown(path)}: a symbolic link to the folder "
                        f"{shown(path.resolve())}; its images would be labelled twice or "
                        "come from outside the dataset. Replace it by a copy of the folder, "
                        "or remove it.")
      if path.suffix.lower() in image_suffixes:
        raise DataError(f"{shown(path)}: a folder with an image's name, where the image "
                        "belongs. Remove or rename the folder, and restore the image.")
    dirs.sort()
    for name in sorted(names):
      yield parent_path / name
