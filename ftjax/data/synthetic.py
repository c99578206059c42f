"""Procedural images with a learnable label: the embedded default, no download.

Every class owns a shape drawn in a class colour on a noisy textured
background; images vary in size and aspect ratio like real scans. The
multi-class variant draws one shape per image; the multi-label variant draws
each class's shape independently with probability 0.4 (at least one). Images
are a pure function of (seed, split, index), so preparation is deterministic.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from ftjax.data.base import Example, ImageBuilder, ImageConfig

MULTICLASS_NAMES = ("disc", "square", "cross", "stripes")
MULTILABEL_NAMES = ("disc", "square", "cross", "stripes", "ring")
_COLOURS = np.array([[220, 60, 60], [60, 200, 80], [70, 90, 230], [230, 200, 50],
                     [200, 80, 220]], np.float32)


@dataclasses.dataclass(eq=True)
class SyntheticConfig(ImageConfig):
  """Attributes:
    variant: 'multiclass' (4 classes) or 'multilabel' (5 classes).
    num_train: training images (validation is carved from them).
    num_test: test images.
    image_size: shorter side of the generated images before the resize.
  """

  variant: str = "multiclass"
  num_train: int = 240
  num_test: int = 60
  image_size: int = 64


def _mask(kind: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
  """Boolean mask of shape ``kind`` at a random place and scale."""
  s = min(h, w)
  r = rng.uniform(0.15, 0.3) * s
  cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  dy, dx = yy - cy, xx - cx
  if kind == 0:  # disc
    return dy ** 2 + dx ** 2 <= r ** 2
  if kind == 1:  # square
    return (np.abs(dy) <= r * 0.8) & (np.abs(dx) <= r * 0.8)
  if kind == 2:  # cross
    t = r * 0.3
    return ((np.abs(dy) <= t) & (np.abs(dx) <= r)) | ((np.abs(dx) <= t) & (np.abs(dy) <= r))
  if kind == 3:  # stripes inside a box
    period = max(3.0, r / 2.5)
    return (np.abs(dy) <= r) & (np.abs(dx) <= r) & ((xx // period) % 2 == 0)
  return (dy ** 2 + dx ** 2 <= r ** 2) & (dy ** 2 + dx ** 2 >= (0.6 * r) ** 2)  # ring


def render(seed: int, split: str, index: int, image_size: int,
           classes: list[int]) -> np.ndarray:
  """The uint8 HxWx3 image of one example (deterministic)."""
  digest = hashlib.sha256(f"{seed}/{split}/{index}".encode()).digest()
  rng = np.random.default_rng(np.frombuffer(digest[:8], np.uint64)[0])
  short = image_size
  long = int(round(short * rng.uniform(1.0, 1.4)))
  h, w = (short, long) if rng.random() < 0.5 else (long, short)
  # near-gray background with a slight tint, so colour belongs to the shapes
  base = (rng.uniform(60, 160) + rng.uniform(-15, 15, size=3)).astype(np.float32)
  image = np.broadcast_to(base, (h, w, 3)).copy()
  image += rng.normal(0, 25, size=(h, w, 1)).astype(np.float32)  # texture
  for c in classes:
    m = _mask(c, h, w, rng)
    image[m] = 0.35 * image[m] + 0.65 * _COLOURS[c]
  image += rng.normal(0, 12, size=(h, w, 3)).astype(np.float32)  # sensor noise
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _load(source: tuple) -> np.ndarray:
  return render(*source)


class Synthetic(ImageBuilder):
  """Synthetic shapes: multi-class (4) or multi-label (5); no patients.

  Splits: ``num_train`` images of which ``val_fraction`` (stratified for the
  multi-class variant, random for multi-label) become ``validation``, and
  ``num_test`` test images generated independently. Not in paper Table 2.
  """

  CONFIG_CLASS = SyntheticConfig
  NAME_FIELDS = ("variant",)
  MANUAL_DOWNLOAD_INSTRUCTIONS = None  # generated, nothing to download
  BUILDER_CONFIGS = [SyntheticConfig(name=f"{v}_r{r}", variant=v, resize=r)
                     for v in ("multiclass", "multilabel") for r in (232, 256)]

  @property
  def MULTILABEL(self) -> bool:  # noqa: N802 (class-level flag in other builders)
    return self.builder_config.variant == "multilabel"

  @classmethod
  def dataset_infos(cls):
    return [cls.declare("synthetic", {"variant": "multiclass"}, MULTICLASS_NAMES, False,
                        ("accuracy", "auroc")),
            cls.declare("synthetic_multilabel", {"variant": "multilabel"}, MULTILABEL_NAMES,
                        True, ("map", "auroc"))]

  def class_names(self) -> tuple[str, ...]:
    if self.builder_config.variant not in ("multiclass", "multilabel"):
      raise ValueError(f"synthetic variant must be 'multiclass' or 'multilabel', "
                       f"got {self.builder_config.variant!r}")
    return MULTILABEL_NAMES if self.MULTILABEL else MULTICLASS_NAMES

  load_image = staticmethod(_load)

  def _labels(self, split: str, index: int) -> tuple[list[int], object]:
    cfg = self.builder_config
    digest = hashlib.sha256(f"label/{cfg.seed}/{split}/{index}".encode()).digest()
    rng = np.random.default_rng(np.frombuffer(digest[:8], np.uint64)[0])
    n = len(self.class_names())
    if not self.MULTILABEL:
      c = int(rng.integers(n))
      return [c], c
    present = rng.random(n) < 0.4
    if not present.any():
      present[rng.integers(n)] = True
    classes = np.flatnonzero(present).tolist()
    return classes, present.astype(np.float32).tolist()

  def _make(self, split: str, count: int) -> list[Example]:
    cfg = self.builder_config
    out = []
    for i in range(count):
      classes, label = self._labels(split, i)
      out.append(Example(key=f"{split}_{i:06d}",
                         source=(cfg.seed, split, i, cfg.image_size, classes),
                         label=label))
    return out

  def _list_examples(self, root: Path | None) -> dict[str, list[Example]]:
    from ftjax.data import splits
    cfg = self.builder_config
    train = self._make("train", cfg.num_train)
    if self.MULTILABEL:
      keep, held = splits.grouped_split([e.key for e in train], cfg.val_fraction, cfg.seed)
    else:
      keep, held = splits.stratified_split([e.label for e in train], cfg.val_fraction,
                                           cfg.seed)
    self._notes["validation"] = (f"{cfg.val_fraction:.0%} of the generated training images, "
                                 f"seed {cfg.seed}")
    return {"train": [train[i] for i in keep], "validation": [train[i] for i in held],
            "test": self._make("test", cfg.num_test)}
