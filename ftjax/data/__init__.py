"""Datasets of the paper as TFDS builders (no TensorFlow) + grain pipelines.

``get_dataset(name)`` returns a :class:`DatasetInfo`; ``info.create(data_dir,
resize=232)`` returns the builder, ``builder.download_and_prepare(
download_config=tfds.download.DownloadConfig(manual_dir=...))`` prepares it
once, and ``builder.as_data_source(split)`` feeds ``pipeline.make_loader``.
The built-in names are those the builders of BUILDER_MODULES declare
(``ftjax.data.registry``); a user dataset is found by its name in ``data_dir``.
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
from typing import Any

from ftjax.data.base import Example, ImageBuilder, ImageConfig
from ftjax.data.errors import DataError
from ftjax.data.registry import DatasetInfo, registry_of
from ftjax.data import user

__all__ = ["DataError", "DatasetInfo", "get_dataset", "list_datasets", "ImageBuilder",
           "ImageConfig", "Example"]

# The modules of the built-in datasets. Their builders declare the registry names,
# classes, multi-label flag and main metrics (ImageBuilder.REGISTRY_NAMES,
# dataset_infos), so adding a dataset is its module plus its name here.
BUILDER_MODULES = ("synthetic", "chexpert", "brain_tumor_mri", "bach", "isic2020",
                   "cholect50", "mura", "medmnist")


def builders() -> list[type[ImageBuilder]]:
  """The builder classes defined in BUILDER_MODULES."""
  found = []
  for module_name in BUILDER_MODULES:
    module = importlib.import_module(f"{__name__}.{module_name}")
    found += [value for value in vars(module).values()
              if inspect.isclass(value) and issubclass(value, ImageBuilder)
              and value.__module__ == module.__name__]
  return found


_REGISTRY = registry_of(builders())


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
  found = user.find_prepared(name, data_dir) if data_dir is not None else None
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
    found = user.find_prepared(name, data_dir)
    if found is not None:
      return found.option_defaults()
  return user.split_option_defaults()
