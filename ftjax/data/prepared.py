"""A run's prepared dataset: its builder from the config (a generated dataset, one
without MANUAL_DOWNLOAD_INSTRUCTIONS, is prepared on first use; any other must have
been prepared), and the dataset options the config sets."""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import ml_collections

from ftjax import distributed
from ftjax.data import DataError, get_dataset
from ftjax.models import registry


def dataset_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The dataset options the config sets (unset ones keep the dataset's default)."""
  return {k: v for k, v in config.dataset_options.to_dict().items() if v is not None}


def _dataset_flags(info) -> str:
  base = getattr(info.builder, "BASE_NAME", "")
  return f"--dataset {base} --name {info.name}" if base else f"--dataset {info.name}"


def prepared_builder(config: ml_collections.ConfigDict, arch: registry.Arch):
  """The dataset's builder, prepared (synthetic data is generated on first use)."""
  info = get_dataset(config.dataset, config.data_dir)
  resize = config.resize or arch.preprocessing.resize
  options = dataset_options(config)
  unknown = sorted(set(options) - set(info.option_defaults()))
  if unknown:
    raise ValueError(
        f"config.dataset_options sets {unknown}, which {info.name} does not have; "
        f"its options: {sorted(info.option_defaults()) or 'none'}.")
  builder = info.create(config.data_dir, resize=resize, **options)
  if not builder.data_path.exists():
    if not builder.MANUAL_DOWNLOAD_INSTRUCTIONS:  # generated data: nothing to download
      # Several processes: the first generates, the others wait for it; a host that
      # does not share its disk then generates its own copy (generation is seeded).
      # One process makes no JAX call here (a sweep must not take its runs' GPUs).
      if distributed.wants_distributed(config):
        if jax.process_index() == 0:
          builder.download_and_prepare()
        distributed.barrier("synthetic dataset prepared")
        builder = info.create(config.data_dir, resize=resize, **options)
      if not builder.data_path.exists():
        builder.download_and_prepare()
        builder = info.create(config.data_dir, resize=resize, **options)
    else:
      # Prepared with other options or another resize: the config names say which.
      others = sorted(p.parent.name for p in
                      (pathlib.Path(config.data_dir) / builder.name).glob(f"*/{builder.version}"))
      found = (f" Prepared there with other settings: {', '.join(others)} (set "
               f"config.resize / config.dataset_options to use one)." if others else "")
      raise DataError(
          f"{info.name} is not prepared in {pathlib.Path(config.data_dir).absolute()} "
          f"(config {builder.builder_config.name}).{found} "
          f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS} "
          f"Then prepare it once: {_prepare_command(info, config, resize, options)}")
  builder.check_records(
      f"Remove {builder.data_path} and prepare it again: "
      f"{_prepare_command(info, config, resize, options)}"
      if builder.MANUAL_DOWNLOAD_INSTRUCTIONS else
      f"Remove {builder.data_path}; it is generated again on the next run.")
  return info, builder


def _prepare_command(info, config: ml_collections.ConfigDict, resize: int,
                     options: dict[str, Any]) -> str:
  return (f"python -m ftjax.data prepare {_dataset_flags(info)} --manual_dir <the downloaded "
          f"folder> --data_dir {config.data_dir} --resize {resize}"
          + "".join(f" --option {k}={v}" for k, v in sorted(options.items())))
