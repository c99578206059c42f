"""The data stage: images/s of the training loader (decode, crop, normalise, batch)."""

from __future__ import annotations

import time
from typing import Any


from benchmarks.throughput.device import device_info
from ftjax.models import registry

def _data_config(args, arch: registry.Arch):
  import ml_collections  # pylint: disable=import-outside-toplevel
  from ftjax.data import get_dataset  # pylint: disable=import-outside-toplevel
  info = get_dataset(args.dataset)
  resize = args.resize or max(arch.preprocessing.resize, args.size)
  options = {}
  if info.name.startswith("synthetic"):
    options = {"num_train": args.num_train, "num_test": 16, "image_size": max(64, resize)}
  return ml_collections.ConfigDict({
      "dataset": args.dataset, "data_dir": args.data_dir, "resize": resize,
      "dataset_options": options})


def prepared_source(args, arch: registry.Arch):
  """(dataset info, builder, train source); synthetic data is generated when missing."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from ftjax.data.prepared import prepared_builder  # pylint: disable=import-outside-toplevel
  config = _data_config(args, arch)
  if config.resize < args.size:
    raise ValueError(f"--resize {config.resize} is smaller than the crop --size {args.size}.")
  tfds.disable_progress_bar()
  info, builder = prepared_builder(config, arch)
  return info, builder, builder.as_data_source("train")


def bench_data(args, arch: registry.Arch, workers: int) -> dict[str, Any]:
  """images/s of the training loader: decode, crop, normalise, batch."""
  info, builder, source = prepared_source(args, arch)
  rate, images = measure(source, args.batch, workers, args.min_images, args.size)
  return {"stage": "data", **device_info(), "dataset": info.name,
          "data_config": builder.builder_config.name, "train_images": len(source),
          "batch": args.batch, "size": args.size, "workers": workers,
          "images_per_s": rate, "images_timed": images}


def measure(source, batch: int, workers: int, min_images: int, crop: int) -> tuple[float, int]:
  """(images per second, images timed) over whole epochs of at least `min_images`,
  each after one warm-up batch (worker start-up is not throughput)."""
  from ftjax.data import pipeline  # pylint: disable=import-outside-toplevel
  epoch, images, elapsed = 0, 0, 0.0
  while images < min_images:
    it = iter(pipeline.make_loader(source, batch, seed=0, epoch=epoch, num_workers=workers,
                                   crop=crop))
    next(it)
    start = time.perf_counter()
    for b in it:
      images += len(b["image"])
    elapsed += time.perf_counter() - start
    epoch += 1
  return images / elapsed, images
