"""CholecT50 laparoscopic video frames, instrument presence (6 classes, multi-label).

manual_dir holds ``CholecT50/`` (or is it): ``videos/VIDxx/NNNNNN.png`` frames
at 1 fps and ``labels/VIDxx.json`` whose ``annotations`` map a frame id to a
list of triplet records of 15 numbers ``[triplet_id, instrument_id, ...]``; an
instrument is present in a frame when some record names it (``-1`` = none).

Splits: the official CholecT50 split of the dataset's own loader
(``cholect50``): train videos 1, 2, 4, 5, 13, 15, 18, 22, 23, 25, 26, 27, 31,
35, 36, 40, 43, 47, 48, 49, 52, 56, 57, 60, 62, 65, 66, 68, 70, 75, 79, 92,
96, 103, 110; validation videos 8, 12, 29, 50, 78; test videos 6, 10, 14, 32,
42, 51, 73, 74, 80, 111. ``frame_stride`` = 10 keeps every 10th annotated
frame (1 fps -> 6 frames per minute, as the paper; Table 2: 7,980 train +
validation / 2,129 test frames, 10,109 in all). Videos of the split lists
missing from manual_dir are recorded in the metadata.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from ftjax.data.base import NOT_SKIPPED, Example, ImageBuilder, ImageConfig
from ftjax.data.errors import DataError
from ftjax.data.mura import dataset_root

WHERE = ("Request and download CholecT50 from https://github.com/CAMMA-public/cholect50 "
         "and extract it into manual_dir.")
INSTRUMENTS = ("grasper", "bipolar", "hook", "scissors", "clipper", "irrigator")
TRAIN_VIDEOS = (1, 15, 26, 40, 52, 65, 79, 2, 18, 27, 43, 56, 66, 92, 4, 22, 31, 47, 57, 68,
                96, 5, 23, 35, 48, 60, 70, 103, 13, 25, 36, 49, 62, 75, 110)
VAL_VIDEOS = (8, 12, 29, 50, 78)
TEST_VIDEOS = (6, 51, 10, 73, 14, 74, 32, 80, 42, 111)
RECORD_LENGTH = 15  # triplet, instrument, verb, target and phase values of one instance


_KINDS = {dict: "an object", list: "an array", str: "a string", int: "a number",
          float: "a number", bool: "a boolean", type(None): "null"}


def _kind(value) -> str:
  return _KINDS.get(type(value), type(value).__name__)


def _is_number(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def read_labels(path: Path) -> dict[int, list[float]]:
  """Frame id -> instrument presence from one ``labels/VIDxx.json``.

  Anything that is not the official format (truncated, not JSON, a list where
  an object belongs, records of the wrong length or with non-numbers) is one
  DataError naming the file and the frame/record, never a silently wrong label.
  """
  def bad(detail: str) -> DataError:
    return DataError(f"{path}: {detail}. Expected the official CholecT50 label file (JSON "
                     f"with an 'annotations' object mapping frame ids to lists of "
                     f"{RECORD_LENGTH}-value records); re-extract it. {WHERE} {NOT_SKIPPED}")

  data = path.read_bytes()
  if not data.strip():
    raise bad("file is empty")
  try:
    doc = json.loads(data.decode("utf-8-sig"))
  except UnicodeDecodeError as exc:
    raise bad(f"not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})") from None
  except json.JSONDecodeError as exc:
    raise bad(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}; a "
              f"truncated or foreign file?)") from None
  if not isinstance(doc, dict):
    raise bad(f"the top level is {_kind(doc)}, not an object")
  if "annotations" not in doc:
    raise bad(f"no 'annotations' key (found {sorted(doc)[:10]})")
  annotations = doc["annotations"]
  if not isinstance(annotations, dict):
    raise bad(f"'annotations' is {_kind(annotations)}, not an object")
  labels: dict[int, list[float]] = {}
  for frame, records in annotations.items():
    if not (frame.isascii() and frame.isdigit()):
      raise bad(f"frame id {frame!r} in 'annotations' is not a number")
    if int(frame) in labels:
      raise bad(f"frame {int(frame)} appears twice in 'annotations'")
    if not isinstance(records, list):
      raise bad(f"frame {frame} holds {_kind(records)}, not an array of records")
    present = [0.0] * len(INSTRUMENTS)
    for j, record in enumerate(records):
      where = f"frame {frame} record {j}"
      if not isinstance(record, list) or len(record) != RECORD_LENGTH:
        what = f"{len(record)} values" if isinstance(record, list) else _kind(record)
        raise bad(f"{where} is {what}, not an array of {RECORD_LENGTH} numbers")
      wrong = [v for v in record if not _is_number(v)]
      if wrong:
        raise bad(f"{where} holds {json.dumps(wrong[0])}, not a number")
      instrument = record[1]
      if instrument == -1:
        continue
      if instrument != int(instrument) or not 0 <= instrument < len(INSTRUMENTS):
        raise bad(f"unknown instrument id {instrument} in {where}; expected 0..5 or -1")
      present[int(instrument)] = 1.0
    labels[int(frame)] = present
  return labels


@dataclasses.dataclass(eq=True)
class Cholect50Config(ImageConfig):
  """Attributes:
    frame_stride: keep annotated frames whose id is a multiple of this (10: 6 fpm).
  """

  frame_stride: int = 10


class Cholect50(ImageBuilder):
  __doc__ = __doc__
  CONFIG_CLASS = Cholect50Config
  CLASS_NAMES = INSTRUMENTS
  MULTILABEL = True
  MAIN_METRICS = ("map", "auroc")
  REGISTRY_NAMES = {"cholect50": {}}
  HOMEPAGE = "https://github.com/CAMMA-public/cholect50"
  MANUAL_DOWNLOAD_INSTRUCTIONS = WHERE
  BUILDER_CONFIGS = [Cholect50Config(name=f"r{r}", resize=r) for r in (232, 256)]

  def _video(self, root: Path, vid: int) -> list[Example] | None:
    name = f"VID{vid:02d}"
    label_file = root / "labels" / f"{name}.json"
    if not label_file.exists():
      return None
    examples = []
    self._listed.append(label_file)
    for frame, label in sorted(read_labels(label_file).items()):
      source = root / "videos" / name / f"{frame:06d}.png"
      self._listed.append(source)  # frames between the strided ones are explained too
      if frame % self.builder_config.frame_stride:
        continue
      examples.append(Example(key=f"{name}/{frame:06d}", source=str(source),
                              label=label, patient_id=name))
    return examples

  def _list_examples(self, root: Path) -> dict[str, list[Example]]:
    if self.builder_config.frame_stride < 1:
      raise ValueError(f"frame_stride must be >= 1, got {self.builder_config.frame_stride}")
    root = dataset_root(root, "CholecT50", WHERE)
    for sub in ("videos", "labels"):
      if not (root / sub).is_dir():
        raise DataError(f"{root / sub}: folder not found. {WHERE}")
    out, missing = {}, []
    self._listed: list[Path] = []
    for split, vids in (("train", TRAIN_VIDEOS), ("validation", VAL_VIDEOS),
                        ("test", TEST_VIDEOS)):
      out[split] = []
      for vid in sorted(vids):
        examples = self._video(root, vid)
        if examples is None:
          missing.append(f"VID{vid:02d}")
        else:
          out[split] += examples
    self._notes["missing_videos"] = missing
    for sub in ("videos", "labels"):
      self.ignore_unused(root / sub, self._listed,
                         "not an annotated frame (or label file) of a video of the official "
                         "split", (".png", ".json"))
    if missing:
      print(f"cholect50: {len(missing)} video(s) of the official split not in manual_dir: "
            f"{', '.join(missing)}")
    self._notes["split"] = ("official CholecT50 video split; validation = official val videos; "
                            f"frame_stride {self.builder_config.frame_stride}")
    return out
