"""Datasets of the paper as TFDS builders (no TensorFlow) + grain pipelines.

``get_dataset(name)`` returns a :class:`DatasetInfo`; ``info.create(data_dir,
resize=232)`` returns the builder, ``builder.download_and_prepare(
download_config=tfds.download.DownloadConfig(manual_dir=...))`` prepares it
once, and ``builder.as_data_source(split)`` feeds ``pipeline.make_loader``.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import tensorflow_datasets as tfds

from ftjax.data.bach import Bach
from ftjax.data.base import Example, ImageBuilder, ImageConfig
from ftjax.data.brain_tumor_mri import BrainTumorMri
from ftjax.data.chexpert import Chexpert
from ftjax.data.cholect50 import Cholect50
from ftjax.data.errors import DataError
from ftjax.data.isic2020 import Isic2020
from ftjax.data.medmnist import SUBSETS as MEDMNIST_SUBSETS, Medmnist
from ftjax.data.mura import Mura
from ftjax.data.synthetic import MULTICLASS_NAMES, MULTILABEL_NAMES, Synthetic
from ftjax.data import chexpert, cholect50, bach, brain_tumor_mri, user

__all__ = ["DataError", "DatasetInfo", "get_dataset", "list_datasets", "ImageBuilder",
           "ImageConfig", "Example"]


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
    main_metrics: the paper's headline metrics for this dataset.
  """

  name: str
  builder: type[ImageBuilder]
  options: dict[str, Any]
  num_classes: int
  multilabel: bool
  class_names: tuple[str, ...]
  main_metrics: tuple[str, ...]

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
             **options) -> ImageBuilder:
    """The builder of this dataset for ``options`` (resize=232, unit='image', ...)."""
    return self.builder.create(data_dir, skip_bad=skip_bad, num_workers=num_workers,
                               **{**self.options, **options})


def _registry() -> dict[str, DatasetInfo]:
  out = {
      "synthetic": DatasetInfo("synthetic", Synthetic, {"variant": "multiclass"}, 4, False,
                               MULTICLASS_NAMES, ("accuracy", "auroc")),
      "synthetic_multilabel": DatasetInfo("synthetic_multilabel", Synthetic,
                                          {"variant": "multilabel"}, 5, True,
                                          MULTILABEL_NAMES, ("map", "auroc")),
      "chexpert": DatasetInfo("chexpert", Chexpert, {}, 5, True, chexpert.CLASSES,
                              ("map", "auroc")),
      "brain_tumor_mri": DatasetInfo("brain_tumor_mri", BrainTumorMri, {}, 3, False,
                                     brain_tumor_mri.CLASSES, ("accuracy", "f1")),
      "bach": DatasetInfo("bach", Bach, {}, 4, False, Bach.CLASS_NAMES,
                          ("accuracy", "kappa")),
      "isic2020": DatasetInfo("isic2020", Isic2020, {}, 2, False, Isic2020.CLASS_NAMES,
                              ("auroc", "accuracy")),
      "cholect50": DatasetInfo("cholect50", Cholect50, {}, 6, True, cholect50.INSTRUMENTS,
                               ("map", "auroc")),
  }
  for part in ("shoulder", "wrist", "humerus"):
    out[f"mura_{part}"] = DatasetInfo(f"mura_{part}", Mura, {"part": part}, 2, False,
                                      Mura.CLASS_NAMES, ("accuracy", "kappa"))
  for subset, (n, multilabel) in MEDMNIST_SUBSETS.items():
    out[f"medmnist_{subset}"] = DatasetInfo(
        f"medmnist_{subset}", Medmnist, {"subset": subset}, n, multilabel,
        tuple(str(i) for i in range(n)),
        ("map", "auroc") if multilabel else ("accuracy", "auroc"))
  return out


_REGISTRY = _registry()


def list_datasets() -> list[str]:
  return sorted(_REGISTRY)


def generic_builders() -> list[str]:
  """The builders that prepare the user's own data under a name (--dataset folder)."""
  return sorted(user.generic_builders())


def get_dataset(name: str, data_dir=None) -> DatasetInfo:
  """The DatasetInfo of ``name``: a built-in dataset, or a user dataset prepared in
  ``data_dir`` (``python -m ftjax.data prepare --dataset folder --name ...``); a
  ValueError lists the valid names."""
  if name in _REGISTRY:
    return _REGISTRY[name]
  found = user.find_prepared(DatasetInfo, name, data_dir) if data_dir is not None else None
  if found is not None:
    return found
  prepared = user_datasets(data_dir) if data_dir is not None else []
  where = (f"; prepared in {data_dir}: {', '.join(prepared) or 'none'}" if data_dir is not None
           else "")
  raise ValueError(f"unknown dataset {name!r}; built-in names: {', '.join(list_datasets())}"
                   f"{where}. Prepare your own images under a name with: python -m ftjax.data "
                   f"prepare --dataset folder --name {name if user.NAME_RE.fullmatch(name) else 'NAME'} "
                   "--manual_dir <your images> --data_dir <data_dir>")


def user_datasets(data_dir) -> list[str]:
  """Names of the user datasets prepared in ``data_dir``."""
  root = pathlib.Path(data_dir)
  if not root.is_dir():
    return []
  return sorted(p.name for p in root.iterdir()
                if p.name not in _REGISTRY and user.prepared_layout(root, p.name) is not None)


def option_defaults(name: str, data_dir=None) -> dict[str, Any]:
  """The dataset options of ``name`` (``config.dataset_options``); a name that is not
  built in is a user dataset, whose options are the split ones."""
  if name in _REGISTRY:
    return _REGISTRY[name].option_defaults()
  if data_dir is not None:
    found = user.find_prepared(DatasetInfo, name, data_dir)
    if found is not None:
      return found.option_defaults()
  return user.split_option_defaults()
