"""What training needs to know about a dataset, declared by its builder.

Each builder class names the registry entries it offers (``REGISTRY_NAMES``:
name -> the config options that name fixes, e.g. MURA's ``mura_wrist`` ->
``part='wrist'``) with their classes, multi-label flag and main metrics
(``ImageBuilder.dataset_infos``); :func:`registry_of` gathers them. The loss
follows from the multi-label flag.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import tensorflow_datasets as tfds

LOSSES = {False: "softmax_cross_entropy", True: "sigmoid_binary_cross_entropy"}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What training and evaluation need to know about one dataset.

  Attributes:
    name: registry name.
    builder: the TFDS builder class.
    options: fixed config options of this name (e.g. MURA's body part).
    num_classes: outputs of the classifier head.
    multilabel: sigmoid/BCE (True) or softmax/CE (False).
    class_names: names of the outputs.
    main_metrics: the headline metrics; the first one selects the learning rate.
  """

  name: str
  builder: type
  options: dict[str, Any]
  num_classes: int
  multilabel: bool
  class_names: tuple[str, ...]
  main_metrics: tuple[str, ...]

  @property
  def loss(self) -> str:
    """The training loss: softmax cross-entropy, or per-class sigmoid BCE if multi-label."""
    return LOSSES[self.multilabel]

  def option_defaults(self) -> dict[str, Any]:
    """The options a user may set for this dataset (``dataset_options``), with defaults.

    Options fixed by the registry name (MURA's part, ...) and ``resize``, which
    the training config sets from the architecture, are not among them.
    """
    fixed = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
    fixed |= {"resize", *self.options}
    return {f.name: f.default for f in dataclasses.fields(self.builder.CONFIG_CLASS)
            if f.name not in fixed and f.default is not dataclasses.MISSING}

  def create(self, data_dir, *, skip_bad: bool = False, num_workers: int | None = None,
             **options):
    """The builder of this dataset for ``options`` (resize=232, unit='image', ...)."""
    return self.builder.create(data_dir, skip_bad=skip_bad, num_workers=num_workers,
                               **{**self.options, **options})


def registry_of(builders: Iterable[type]) -> dict[str, DatasetInfo]:
  """Registry name -> DatasetInfo over the entries the ``builders`` declare."""
  out: dict[str, DatasetInfo] = {}
  for builder in builders:
    for info in builder.dataset_infos():
      if info.name in out:
        raise ValueError(f"dataset name {info.name!r} is declared by both "
                         f"{out[info.name].builder.__name__} and {builder.__name__}")
      out[info.name] = info
  return out
