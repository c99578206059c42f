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


def groups_per_split(meta: dict, examples: dict[str, int]) -> dict[str, tuple[int, str]]:
  """split -> (resampling units, "patients" or "images"): the patients where the split
  has patient ids (metadata "patients"), else its images."""
  patients = meta.get("patients", {})
  return {split: (patients[split], "patients") if patients.get(split)
          else (n, "images") for split, n in examples.items()}


# What a split with too few patients costs.
_TOO_FEW = {"validation": "the learning rate and strategy chosen on it are a coin toss",
            "test": "the report gives no interval and no win/tie/loss call on it "
                    "(report --min_test_groups)"}


def group_lines(meta: dict, examples: dict[str, int], minimum: int
                ) -> tuple[list[str], list[str]]:
  """Per split, its images and patients; and a warning for the validation or test
  split with fewer patients (images without patient ids) than `minimum`."""
  lines, warnings = [], []
  for split, (count, unit) in groups_per_split(meta, examples).items():
    lines.append(f"{split}: {examples[split]} images, "
                 + (f"{count} patients" if unit == "patients" else "no patient ids"))
    if split in _TOO_FEW and count < minimum:
      warnings.append(f"warning: {split} has {count} {unit}, fewer than {minimum}: "
                      f"{_TOO_FEW[split]}; give it more {unit} (the val_fraction, "
                      f"test_fraction or num_test option).")
  return lines, warnings


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
