"""Split counts, shares and patients, class balance and a contact sheet of a prepared dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ftjax.data.base import ImageBuilder


def summary(builder: ImageBuilder) -> dict:
  """{split: {'count': n, 'share': n / all, 'patients': distinct patient ids,
  'classes': {name: positives}}} read from the data."""
  names = builder.info.features["label"].names if not builder.MULTILABEL else \
      list(builder.class_names())
  out = {}
  for split in builder.info.splits:
    source = builder.as_data_source(split)
    counts = np.zeros(len(names), np.int64)
    patients = set()
    for i in range(len(source)):
      record = source[i]
      if builder.MULTILABEL:
        counts += np.asarray(record["label"]) > 0.5
      else:
        counts[int(record["label"])] += 1
      patients.add(record["patient_id"])
    patients.discard(b"")
    out[split] = {"count": len(source), "patients": len(patients),
                  "classes": dict(zip(names, counts.tolist()))}
  total = sum(s["count"] for s in out.values()) or 1
  for stats in out.values():
    stats["share"] = round(stats["count"] / total, 4)
  return out


def contact_sheet(builder: ImageBuilder, out: str | Path, split: str = "train",
                  per_class: int = 6, thumb: int = 112) -> Path:
  """PNG grid: one row per class with the first ``per_class`` examples of it."""
  names = list(builder.class_names())
  source = builder.as_data_source(split)
  rows: list[list[np.ndarray]] = [[] for _ in names]
  for i in range(len(source)):
    record = source[i]
    label = np.asarray(record["label"])
    classes = np.flatnonzero(label > 0.5) if builder.MULTILABEL else [int(label)]
    for c in classes:
      if len(rows[c]) < per_class:
        rows[c].append(record["image"])
    if all(len(r) >= per_class for r in rows):
      break
  label_w, pad = 120, 4
  sheet = Image.new("RGB", (label_w + per_class * (thumb + pad), len(names) * (thumb + pad)),
                    "white")
  draw = ImageDraw.Draw(sheet)
  for r, (name, images) in enumerate(zip(names, rows)):
    y = r * (thumb + pad)
    draw.text((4, y + thumb // 2), name[:18], fill="black")
    for c, image in enumerate(images):
      tile = Image.fromarray(image)
      tile.thumbnail((thumb, thumb))
      sheet.paste(tile, (label_w + c * (thumb + pad), y))
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  sheet.save(out)
  return out
