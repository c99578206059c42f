"""Input-pipeline throughput: images/s from prepared data through grain.

  python -m benchmarks.data_throughput --dataset synthetic --workers 0 1 2 --batch 64

Prepares the dataset first if needed (synthetic needs no download; others take
--manual_dir). Measures full passes of the training loader (decode from
array_record, center crop, normalise, batch) after one warm-up batch.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import tensorflow_datasets as tfds

from ftjax.data import get_dataset, pipeline


def measure(source, batch: int, workers: int, min_images: int, crop: int) -> tuple[float, int]:
  """(images per second, images timed) over whole epochs of at least ``min_images``."""
  epoch, images, elapsed = 0, 0, 0.0
  while images < min_images:
    it = iter(pipeline.make_loader(source, batch, seed=0, epoch=epoch, num_workers=workers,
                                   crop=crop))
    next(it)  # warm-up: worker start-up is not throughput
    start = time.perf_counter()
    for b in it:
      images += len(b["image"])
    elapsed += time.perf_counter() - start
    epoch += 1
  return images / elapsed, images


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default="synthetic")
  parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "ftjax_bench"))
  parser.add_argument("--manual_dir")
  parser.add_argument("--resize", type=int, default=232)
  parser.add_argument("--crop", type=int, default=224)
  parser.add_argument("--split", default="train")
  parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--min_images", type=int, default=1024)
  parser.add_argument("--num_train", type=int, default=1024, help="synthetic only")
  args = parser.parse_args()

  info = get_dataset(args.dataset)
  options = {"resize": args.resize}
  if info.builder.__name__ == "Synthetic":
    options.update(num_train=args.num_train, num_test=64, image_size=256)
  builder = info.create(args.data_dir, **options)
  config = tfds.download.DownloadConfig(manual_dir=args.manual_dir) if args.manual_dir else None
  tfds.disable_progress_bar()
  builder.download_and_prepare(download_config=config)
  source = builder.as_data_source(args.split)
  print(f"{args.dataset} {builder.builder_config.name} {args.split}: {len(source)} images, "
        f"batch {args.batch}, crop {args.crop}, cpu cores {os.cpu_count()}")
  for workers in args.workers:
    rate, n = measure(source, args.batch, workers, args.min_images, args.crop)
    print(f"workers={workers}: {rate:8.1f} images/s ({n} images)")


if __name__ == "__main__":
  main()
