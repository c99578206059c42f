"""CholecT50 laparoscopic video frames, instrument presence (6 classes, multi-label).

manual_dir holds ``CholecT50/`` (or is it): ``videos/VIDxx/NNNNNN.png`` frames
at 1 fps and ``labels/VIDxx.json`` whose ``annotations`` map a frame id to a
list of triplet records ``[triplet_id, instrument_id, ...]``; an instrument
is present in a frame when some record names it (``-1`` = none).

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
from pathlib import Path

from ftjax.data.base import Example, ImageBuilder, ImageConfig
from ftjax.data.errors import DataError
from ftjax.data.mura import dataset_root

WHERE = ("Request and download CholecT50 from https://github.com/CAMMA-public/cholect50 "
         "and extract it into manual_dir.")
INSTRUMENTS = ("grasper", "bipolar", "hook", "scissors", "clipper", "irrigator")
TRAIN_VIDEOS = (1, 15, 26, 40, 52, 65, 79, 2, 18, 27, 43, 56, 66, 92, 4, 22, 31, 47, 57, 68,
                96, 5, 23, 35, 48, 60, 70, 103, 13, 25, 36, 49, 62, 75, 110)
VAL_VIDEOS = (8, 12, 29, 50, 78)
TEST_VIDEOS = (6, 51, 10, 73, 14, 74, 32, 80, 42, 111)


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
  HOMEPAGE = "https://github.com/CAMMA-public/cholect50"
  MANUAL_DOWNLOAD_INSTRUCTIONS = WHERE
  BUILDER_CONFIGS = [Cholect50Config(name=f"r{r}", resize=r) for r in (232, 256)]

  def _video(self, root: Path, vid: int) -> list[Example] | None:
    name = f"VID{vid:02d}"
    label_file = root / "labels" / f"{name}.json"
    if not label_file.exists():
      return None
    try:
      annotations = json.loads(label_file.read_text())["annotations"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as exc:
      raise DataError(f"{label_file}: not a CholecT50 label file ({exc!r}); expected JSON "
                      f"with an 'annotations' object. {WHERE}") from exc
    examples = []
    for frame in sorted(annotations, key=int):
      if int(frame) % self.builder_config.frame_stride:
        continue
      label = [0.0] * len(INSTRUMENTS)
      for record in annotations[frame]:
        instrument = int(record[1])
        if instrument == -1:
          continue
        if not 0 <= instrument < len(INSTRUMENTS):
          raise DataError(f"{label_file}: unknown instrument id {instrument} in frame "
                          f"{frame}; expected 0..5 or -1. {WHERE}")
        label[instrument] = 1.0
      examples.append(Example(key=f"{name}/{int(frame):06d}",
                              source=str(root / "videos" / name / f"{int(frame):06d}.png"),
                              label=label, patient_id=name))
    return examples

  def _list_examples(self, root: Path) -> dict[str, list[Example]]:
    root = dataset_root(root, "CholecT50", WHERE)
    for sub in ("videos", "labels"):
      if not (root / sub).is_dir():
        raise DataError(f"{root / sub}: folder not found. {WHERE}")
    out, missing = {}, []
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
    if missing:
      print(f"cholect50: {len(missing)} video(s) of the official split not in manual_dir: "
            f"{', '.join(missing)}")
    self._notes["split"] = ("official CholecT50 video split; validation = official val videos; "
                            f"frame_stride {self.builder_config.frame_stride}")
    return out
