"""Shared TFDS builder machinery for the ftjax image datasets (no TensorFlow).

Each dataset module subclasses :class:`ImageBuilder` and implements
``_list_examples`` (read the official layout, return the examples of each split)
and ``load_image`` (open one source image). This module does the rest:

* images are decoded and resized (shorter side, antialiased bilinear) in a
  process pool, once, at prepare time, and stored as zlib ``uint8`` tensors in
  ``array_record`` files; loading is ``builder.as_data_source(split)``;
* everything read is checked first by :mod:`ftjax.data.validate`; a bad image
  raises one :class:`DataError` naming the file, or with ``skip_bad=True`` is
  skipped and counted; counts land in the metadata;
* files of the layout that are not used are listed as ignored, with the
  reason, in the metadata and the ``prepare`` summary;
* the split description (sizes, validation carving, seed, skipped files) is
  recorded in the dataset's TFDS metadata (``metadata.json``).

Partial preparation is safe: TFDS writes into an ``incomplete.*`` folder and
only renames it into place once every split is written, so an interrupted run
leaves nothing that a later run would load; re-running prepares it again (and
removes what a killed run left in ``incomplete.*``) and a finished dataset is
never regenerated. One process prepares a config at a time (a lock file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import multiprocessing
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from etils import epath
from PIL import Image

from ftjax.data import preprocess, validate
from ftjax.data.errors import DataError
from ftjax.data.registry import DatasetInfo

SPLITS = ("train", "validation", "test")
_MAX_LISTED = 200  # bad or ignored file names kept in metadata; the counts are exact
SKIP_HINT = ("Re-download or re-extract this file, or prepare with --skip_bad to skip "
             "and count bad images.")


@dataclasses.dataclass(eq=True)
class ImageConfig(tfds.core.BuilderConfig):
  """Options shared by every dataset.

  Attributes:
    resize: shorter side in pixels after the prepare-time resize (232 ResNet,
      256 DenseNet/VGG; paper 3.4).
    val_fraction: share of the training data carved out (grouped by patient
      where there are patients, seeded) as the validation split for model
      selection.
    seed: seed of every random split.
  """

  resize: int = 232
  val_fraction: float = 0.1
  seed: int = 0


@dataclasses.dataclass(slots=True)  # slots: a dataset lists hundreds of thousands
class Example:
  """One image to prepare: where it comes from and its other features."""

  key: str
  source: Any  # picklable; handed to the builder's ``load_image`` in a worker
  label: Any  # int class index, or a multi-hot sequence
  patient_id: str = ""
  origin: str = ""  # where it was listed, for messages (file row, array index)

  @property
  def id(self) -> str:
    return self.key

  @property
  def where(self) -> str:
    """What a message about this example names: its file and/or origin, else its key."""
    if isinstance(self.source, (str, os.PathLike)):
      path = validate.shown(self.source)
      return f"{path} ({self.origin})" if self.origin else path
    return self.origin or self.key


def _decode(task: tuple[Callable[[Any], Any], Any, str, int]) -> tuple[bool, Any]:
  """Worker: load, check and resize one image; (True, array) or (False, message)."""
  load, source, where, resize = task
  try:
    if isinstance(source, (str, os.PathLike)):
      path = Path(source)
      if not path.exists():
        return False, f"{where}: file not found. Restore it from the original download."
      if path.stat().st_size == 0:
        return False, (f"{where}: file is empty (0 bytes). Re-download or re-extract it, "
                       "or prepare with --skip_bad to skip and count bad images.")
    with validate.bomb_warnings_as_errors():
      image = load(source)
      if isinstance(image, Image.Image):
        validate.check_decoded_size(*image.size)  # before the decode allocates it
        image.load()  # forces the full decode so truncation is caught here
    width, height = validate.check_pixels(image)
    validate.check_resized_size(width, height, resize)
    return True, preprocess.resize_shorter(image, resize)
  except validate.BadImage as exc:
    return False, f"{where}: {exc}. {SKIP_HINT}"
  except (OSError, ValueError, KeyError, SyntaxError, EOFError, TypeError,
          Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
    # the last two: a header declaring absurd sizes
    return False, f"{where}: cannot read image ({type(exc).__name__}: {exc}). {SKIP_HINT}"


def open_image(path: str | os.PathLike) -> Image.Image:
  """Default ``load_image``: PIL open (decoded in the worker)."""
  return Image.open(path)


def natural_key(text: str) -> list:
  """Sort key where 'study2' < 'study10'."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def require_dir(path: Path, what: str, where: str) -> Path:
  """The folder, or a DataError naming it and where the dataset comes from."""
  if not path.is_dir():
    raise DataError(f"{path}: folder not found ({what}). {where}")
  return path


def require_file(path: Path, what: str, where: str) -> Path:
  if not path.is_file():
    raise DataError(f"{path}: file not found ({what}). {where}")
  return path


# Label files are refused as a whole: a bad row means a damaged or foreign file,
# and dropping its rows would silently change the splits.
NOT_SKIPPED = "--skip_bad skips unreadable images, not bad labels."


def read_csv(path: Path, required: Sequence[str], where: str = "", *, delimiter: str = ",",
             fix: str = "") -> list[dict[str, str]]:
  """CSV rows as dicts; a DataError naming the file (and row) for anything that is
  not a complete CSV with the required columns: empty, not UTF-8, a missing
  column, a row with too few or too many fields, broken quoting. ``fix`` replaces
  the default advice (use the dataset's original file)."""
  columns, records = read_csv_records(path, required, where, delimiter=delimiter, fix=fix)
  return [dict(zip(columns, fields)) for _, fields in records]


def read_csv_records(path: Path, required: Sequence[str], where: str = "", *,
                     delimiter: str = ",", fix: str = "") -> tuple[list[str], Iterator]:
  """(header, an iterator of (row number, stripped fields)): ``read_csv`` without a
  dict per row, streamed from the file as it is consumed (checked as ``read_csv`` is;
  the file is never held whole)."""
  import csv
  require_file(path, "CSV file", where)
  fix = fix or f"Use the dataset's original CSV file (re-download or re-extract it). {where}".strip()
  _check_utf8_text(path, fix)
  text = open(path, encoding="utf-8-sig", newline="")  # closed by _csv_rows
  reader = csv.reader(text, strict=True, delimiter=delimiter)
  try:
    columns = [c.strip() for c in next(reader)]
    validate.check_columns(path, columns, f"{fix} {NOT_SKIPPED}")
    missing = [c for c in required if c not in columns]
    if missing:
      raise DataError(f"{path}: missing column(s) {missing} (found {columns}). {fix}")
  except csv.Error as exc:
    text.close()
    raise DataError(f"{path} row {reader.line_num}: not valid CSV ({exc}; an unclosed quote "
                    f"or a truncated file). {fix}") from None
  except DataError:
    text.close()
    raise
  return columns, _csv_rows(path, text, reader, len(columns), fix)


def _check_utf8_text(path: Path, fix: str, chunk_bytes: int = 1 << 20) -> None:
  """Not empty (nor only blank) and UTF-8 throughout, read a chunk at a time; a
  DataError naming the row, byte and offset of the first byte that is not UTF-8."""
  import codecs
  decoder = codecs.getincrementaldecoder("utf-8")()
  offset = newlines = 0
  content = False
  with open(path, "rb") as f:
    while True:
      chunk = f.read(chunk_bytes)
      try:
        decoder.decode(chunk, final=not chunk)
      except UnicodeDecodeError as exc:
        start = exc.start - (len(exc.object) - len(chunk))  # within chunk (< 0: pending)
        line = newlines + chunk[:max(start, 0)].count(b"\n") + 1
        raise DataError(f"{path} row {line}: not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                        f"at offset {offset + start}). {fix}") from None
      if not chunk:
        break
      content = content or bool(chunk.strip())
      offset, newlines = offset + len(chunk), newlines + chunk.count(b"\n")
  if not content:
    raise DataError(f"{path}: file is empty{' (0 bytes)' if not offset else ''}. {fix}")


def _csv_rows(path: Path, text, reader, width: int,
              fix: str) -> Iterator[tuple[int, list[str]]]:
  import csv
  count = 0
  try:
    for fields in reader:
      if not fields:  # a blank line
        continue
      if len(fields) != width:
        raise DataError(f"{path} row {reader.line_num}: {len(fields)} fields where the header "
                        f"has {width} (a truncated or damaged line). {fix} {NOT_SKIPPED}")
      count += 1
      yield reader.line_num, [v.strip() for v in fields]
  except csv.Error as exc:
    raise DataError(f"{path} row {reader.line_num}: not valid CSV ({exc}; an unclosed quote "
                    f"or a truncated file). {fix}") from None
  finally:
    text.close()
  if not count:
    raise DataError(f"{path}: has a header but no rows (a truncated download?). {fix}")


class ImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base builder: array_record files of resized uint8 images + labels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  CONFIG_CLASS: ClassVar[type[ImageConfig]] = ImageConfig
  NAME_FIELDS: ClassVar[tuple[str, ...]] = ()  # config fields spelled first in the name
  CLASS_NAMES: ClassVar[tuple[str, ...]] = ()
  MULTILABEL: ClassVar[bool] = False
  HOMEPAGE: ClassVar[str] = ""
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Download the dataset from its owners (see HOMEPAGE)."
  # The registry names this builder offers -> the config options each one fixes
  # (MURA: mura_wrist -> part='wrist'); none: it is prepared under a user's name.
  REGISTRY_NAMES: ClassVar[dict[str, dict[str, Any]]] = {}
  MAIN_METRICS: ClassVar[tuple[str, ...]] = ()  # the paper's headline metrics

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # tfds's lookup goes through importlib_resources, absent without TensorFlow's deps.
    import inspect
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, skip_bad: bool = False, num_workers: int | None = None,
               **kwargs):
    """Args:
      skip_bad: skip (and count) unreadable images instead of raising.
      num_workers: decoding processes at prepare time (default: all cores).
      **kwargs: ``tfds.core.DatasetBuilder`` arguments (data_dir, config, ...).
    """
    kwargs.setdefault("file_format", "array_record")
    self.skip_bad = skip_bad
    self.num_workers = num_workers
    super().__init__(**kwargs)

  # ---- configs ------------------------------------------------------------

  @classmethod
  def make_config(cls, **options) -> ImageConfig:
    """A config whose name spells every option that changes the data."""
    fields = {f.name: f for f in dataclasses.fields(cls.CONFIG_CLASS)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
      raise ValueError(f"unknown option(s) {unknown} for {cls.__name__}; valid: "
                       f"{sorted(set(fields) - {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)})}")
    config = cls.CONFIG_CLASS(name="tmp", **options)
    base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
    parts = [str(getattr(config, n)) for n in cls.NAME_FIELDS]
    parts.append(f"r{config.resize}")
    for name, field in fields.items():
      if name in base or name in cls.NAME_FIELDS or name == "resize":
        continue
      value = getattr(config, name)
      if field.default is not dataclasses.MISSING and value != field.default:
        parts.append(f"{name}{value}")
    config.name = re.sub(r"[^A-Za-z0-9_.-]", "-", "_".join(parts))
    return config

  @classmethod
  def create(cls, data_dir: str | os.PathLike, *, skip_bad: bool = False,
             num_workers: int | None = None, **options) -> "ImageBuilder":
    """Builder for the config described by ``options`` (e.g. resize=256)."""
    config = cls.make_config(**options)
    registered = cls.builder_configs.get(config.name)
    chosen = config.name if registered is not None and registered == config else config
    return cls(data_dir=os.fspath(data_dir), config=chosen, skip_bad=skip_bad,
               num_workers=num_workers)

  @classmethod
  def dataset_infos(cls) -> list[DatasetInfo]:
    """The registry entries of this builder: one per ``REGISTRY_NAMES``, with the
    class-level classes, multi-label flag and main metrics (a builder whose classes
    depend on its config declares its entries itself)."""
    return [cls.declare(name, options) for name, options in cls.REGISTRY_NAMES.items()]

  @classmethod
  def declare(cls, name: str, options: dict[str, Any], class_names: Sequence[str] | None = None,
              multilabel: bool | None = None,
              main_metrics: Sequence[str] | None = None) -> DatasetInfo:
    """One registry entry; what is not given is the class-level declaration."""
    names = tuple(cls.CLASS_NAMES if class_names is None else class_names)
    return DatasetInfo(name, cls, dict(options), len(names),
                       bool(cls.MULTILABEL if multilabel is None else multilabel), names,
                       tuple(cls.MAIN_METRICS if main_metrics is None else main_metrics))

  # ---- what subclasses provide -------------------------------------------

  def _list_examples(self, root: Path | None) -> dict[str, list[Example]]:
    """Examples of each split (train/validation/test) from the official layout.

    May also add entries to ``self._notes`` (recorded in the metadata).
    """
    raise NotImplementedError

  @staticmethod
  def load_image(source: Any) -> Image.Image | np.ndarray:
    """Opens one source image (runs in a worker process)."""
    return open_image(source)

  def class_names(self) -> tuple[str, ...]:
    return self.CLASS_NAMES

  def description(self) -> str:
    return (type(self).__doc__ or "").strip()

  # ---- tfds hooks ---------------------------------------------------------

  def _info(self) -> tfds.core.DatasetInfo:
    names = list(self.class_names())
    if self.MULTILABEL:
      label = tfds.features.Tensor(shape=(len(names),), dtype=np.float32)
    else:
      label = tfds.features.ClassLabel(names=names)
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.description(),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8,
                                          encoding="zlib"),
            "label": label,
            "id": tfds.features.Text(),
            "patient_id": tfds.features.Text(),
        }),
        homepage=self.HOMEPAGE or None,
        metadata=tfds.core.MetadataDict(),
    )

  def download_and_prepare(self, *, download_dir=None, download_config=None,
                           file_format=None) -> None:
    """tfds's prepare, with a DataError when the manual folder is missing."""
    if self.MANUAL_DOWNLOAD_INSTRUCTIONS and not self.data_path.exists():
      manual = download_config.manual_dir if download_config else None
      if manual is None:
        raise DataError(f"{self.name}: no manual_dir given. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
      require_dir(Path(manual), f"manual_dir of {self.name}", self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    prepare = functools.partial(super().download_and_prepare, download_dir=download_dir,
                                download_config=download_config, file_format=file_format)
    if self.data_path.exists():
      return prepare()  # prepared: nothing is written (the folder may be read-only)
    with self._prepare_lock():
      if not self.data_path.exists():  # else another process has just prepared it
        self._remove_leftovers()
      prepare()

  # TFDS prints "Downloading and preparing dataset Unknown size ..." and "... downloaded
  # and prepared" even though nothing is downloaded here (the images come from
  # manual_dir); prepare prints its own summary of what it wrote.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass

  def _config_dir(self) -> Path:
    return Path(os.fspath(self.data_path)).parent

  @contextlib.contextmanager
  def _prepare_lock(self) -> Iterator[None]:
    """Held while preparing: a second process waits, then finds the data prepared."""
    self._config_dir().mkdir(parents=True, exist_ok=True)
    with open(self._config_dir() / ".prepare.lock", "w") as lock:
      try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        print(f"{self.name}: another process is preparing {self._config_dir()}; waiting "
              "for it", file=sys.stderr)
        fcntl.flock(lock, fcntl.LOCK_EX)
      yield

  def _remove_leftovers(self) -> None:
    """Deletes the ``incomplete.*`` folders of a killed prepare of this version (tfds
    writes ``<config>/incomplete.XXXXXX_<version>`` and renames it when done; the
    lock says no other process is writing one)."""
    pattern = f"{tfds.core.constants.INCOMPLETE_PREFIX}*_{self.version}"
    for leftover in sorted(self._config_dir().glob(pattern)):
      size = sum(f.stat().st_size for f in leftover.rglob("*") if f.is_file())
      shutil.rmtree(leftover)
      print(f"{self.name}: removed {leftover} ({size / 2**20:.1f} MiB), left by an "
            "interrupted prepare", file=sys.stderr)

  def _split_generators(self, dl_manager):
    root = None
    if self.MANUAL_DOWNLOAD_INSTRUCTIONS:
      root = Path(os.fspath(dl_manager._manual_dir))  # pylint: disable=protected-access
    splits = self.list_splits(root)
    config = dataclasses.asdict(self.builder_config)
    for k in ("release_notes", "supported_versions", "tags", "description", "version"):
      config.pop(k, None)
    self.info.metadata.update({
        "config": config,
        "listed": {s: len(e) for s, e in splits.items()},
        "patients": {s: len({x.patient_id for x in e if x.patient_id})
                     for s, e in splits.items()},
        "skipped_bad": {s: 0 for s in splits},
        "bad_files": [],
        "ignored": len(self._ignored),
        "ignored_files": self._ignored[:_MAX_LISTED],
        "notes": self._notes,
    })
    return {split: self._generate_examples(split, examples)
            for split, examples in splits.items()}

  def list_splits(self, root: Path | None) -> dict[str, list[Example]]:
    """The checked examples of each split: what ``prepare`` stores (nothing is decoded)."""
    self._notes: dict[str, Any] = {}
    self._ignored: list[str] = []
    splits = self._list_examples(root)
    validate.check_examples(splits, root)
    for split, examples in splits.items():
      if not examples:
        sizes = {s: len(e) for s, e in splits.items()}
        raise DataError(f"{root or self.name}: split '{split}' of {self.name} "
                        f"({self.builder_config.name}) is empty (examples per split: {sizes}). "
                        "Raise the option that sizes it (val_fraction, test_fraction, num_test, "
                        "...) or check that manual_dir holds the complete download. "
                        f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS or ''}".rstrip())
    self.check_splits(splits, root)
    return splits

  def check_splits(self, splits: dict[str, list[Example]], root: Path | None) -> None:
    """A builder's own checks of the final splits (none here)."""

  def ignore(self, path: str | os.PathLike, reason: str) -> None:
    """Lists a file of the layout that is not used (shown in the prepare summary)."""
    self._ignored.append(f"{validate.shown(path)}: {reason}")

  def ignore_unused(self, folder: Path, used: Sequence[str | os.PathLike], reason: str,
                    image_suffixes: Sequence[str] = ()) -> None:
    """Lists every file under ``folder`` that is not in ``used`` as ignored."""
    used_paths = {os.path.normpath(p) for p in used}
    for path in validate.walk(folder, image_suffixes):
      if os.path.normpath(path) not in used_paths:
        self.ignore(path, reason)

  def _generate_examples(self, split: str, examples: list[Example]) -> Iterator:
    tasks = [(type(self).load_image, e.source, e.where, self.builder_config.resize)
             for e in examples]
    workers = self.num_workers or os.cpu_count() or 1
    bar = tqdm.tqdm(total=len(tasks), desc=f"{self.name}/{self.builder_config.name} {split}",
                    unit="img", dynamic_ncols=True,
                    disable=None)  # a terminal only: no carriage-return frames in logs
    written = 0
    with bar, _map(tasks, workers) as results:
      for example, (ok, value) in zip(examples, results):
        bar.update(1)
        if not ok:
          if not self.skip_bad:
            raise DataError(value)
          self.info.metadata["skipped_bad"][split] += 1
          if len(self.info.metadata["bad_files"]) < _MAX_LISTED:
            self.info.metadata["bad_files"].append(value)
          continue
        written += 1
        yield example.key, {
            "image": value,
            "label": (np.asarray(example.label, np.float32) if self.MULTILABEL
                      else int(example.label)),
            "id": example.key,
            "patient_id": example.patient_id,
        }
    if written == 0:
      raise DataError(f"split '{split}' of {self.name}: every image was unreadable "
                      f"({len(examples)} skipped); see the messages above.")
    skipped = self.info.metadata["skipped_bad"][split]
    if skipped:
      print(f"{self.name} {split}: skipped {skipped} bad image(s) of {len(examples)}")


class _map:
  """Ordered map over tasks: inline for small jobs, else a spawn process pool."""

  def __init__(self, tasks: list, workers: int):
    self.tasks, self.workers, self.pool = tasks, workers, None

  def __enter__(self):
    if self.workers <= 1 or len(self.tasks) < 64:
      return map(_decode, self.tasks)
    # spawn: the parent may have started jax/grain threads, which fork would copy.
    self.pool = multiprocessing.get_context("spawn").Pool(self.workers)
    return self.pool.imap(_decode, self.tasks, chunksize=4)

  def __exit__(self, *exc):
    if self.pool is not None:
      self.pool.terminate()
      self.pool.join()
    return False
