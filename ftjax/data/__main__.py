"""Command line: prepare a dataset once, then inspect it.

  python -m ftjax.data prepare --dataset isic2020 --manual_dir ~/isic \
      --data_dir ~/tfds [--resize 232] [--skip_bad] [--option unit=image]
  python -m ftjax.data inspect --dataset isic2020 --data_dir ~/tfds --out sheet.png

Your own images: ``--dataset folder`` (class folders), ``csv`` (a table of image
paths and labels) or ``npz`` (MedMNIST-format arrays), with ``--name knee_xr``;
the dataset is then known by that name (``inspect --dataset knee_xr``, training's
``--config.dataset=knee_xr``).

Bad input data ends the command with one line, ``error: <file>: <what is wrong and
the fix>``, on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from typing import Sequence

from pathlib import Path

from ftjax import logging_utils, metrics
from ftjax.data import DataError, generic_builders, get_dataset, list_datasets, user

DEFAULT_DATA_DIR = "data"  # configs/base.py's config.data_dir
_HELP = {
    None: "Prepare a dataset once (decode, resize and split its images into TFDS files "
          "under --data_dir), then inspect it.",
    "prepare": "read the dataset from --manual_dir (or your own images with --dataset "
               "folder/csv/npz and --name), resize and split it, and write it under "
               "--data_dir; prints the images and patients per split",
    "inspect": "print a prepared dataset's split sizes, patients and class counts (JSON) "
               "and, with --out, save a contact sheet of its images",
}


def _options(pairs: Sequence[str]) -> dict:
  out = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep:
      raise SystemExit(f"--option expects key=value, got {pair!r}")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def _builder(args, **kwargs):
  if args.dataset in generic_builders():
    return _user_builder(args, **kwargs)
  if getattr(args, "name", None):
    raise DataError(f"--name is for your own data (--dataset {' / '.join(generic_builders())}), "
                    f"not for the built-in {args.dataset}.")
  info = get_dataset(args.dataset, args.data_dir)
  return info, info.create(args.data_dir, resize=args.resize, **_options(args.option),
                           **kwargs)


def _user_builder(args, **kwargs):
  """A generic builder under the user's --name, its layout read from manual_dir."""
  if args.command != "prepare":
    raise DataError(f"inspect a prepared dataset by its name: --dataset <the --name it was "
                    f"prepared with>, not --dataset {args.dataset}.")
  if not args.name:
    raise DataError(f"--dataset {args.dataset} needs --name: the name your dataset is "
                    f"stored under in --data_dir and trained with (--config.dataset=NAME), "
                    f"e.g. --name knee_xr.")
  name = user.check_name(args.name, list_datasets() + generic_builders())
  if not args.manual_dir:
    raise DataError(f"--dataset {args.dataset} needs --manual_dir, the folder that holds "
                    "your images.")
  base = user.generic_builders()[args.dataset]
  root = Path(args.manual_dir)
  if not root.is_dir():
    raise DataError(f"{root}: folder not found (--manual_dir). Give the folder that holds "
                    "your images.")
  options = base.discover(root, _options(args.option))
  config = base.make_config(**options)
  layout = {k: getattr(config, k) for k in base.layout_fields()}
  user.check_same_layout(args.dataset, user.prepared_layout(args.data_dir, name), name,
                         layout, args.data_dir)
  info = user.make_info(name, args.dataset, layout)
  split_options = {k: v for k, v in options.items() if k not in layout}
  return info, info.create(args.data_dir, resize=args.resize, **split_options, **kwargs)


def prepare(args) -> int:
  import tensorflow_datasets as tfds
  info, builder = _builder(args, skip_bad=args.skip_bad, num_workers=args.workers)
  config = (tfds.download.DownloadConfig(manual_dir=args.manual_dir)
            if args.manual_dir else None)
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS and not args.manual_dir \
      and not builder.data_path.exists():
    raise DataError(f"{args.dataset} needs --manual_dir. "
                    f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  tfds.disable_progress_bar()  # ours (per split, decoding) is the informative one
  builder.download_and_prepare(download_config=config)
  meta = dict(builder.info.metadata)
  print(f"{info.name} ({builder.builder_config.name}) at {builder.data_path}")
  _print_groups(meta, {split: split_info.num_examples
                       for split, split_info in builder.info.splits.items()},
                args.min_test_groups)
  print(f"  skipped bad images: {meta.get('skipped_bad')}")
  if "user_dataset" in meta:
    layout = meta["user_dataset"]["layout"]
    print(f"  classes: {', '.join(layout['classes'])} "
          f"({'multi-label' if layout['multilabel'] else 'one class per image'}); "
          f"main metrics: {', '.join(layout['main_metrics'])}")
    print(f"  train with: --config.dataset={info.name} --config.data_dir={args.data_dir}")
  _print_ignored(meta, builder.data_path)
  for key, value in meta.get("notes", {}).items():
    print(f"  {key}: {value}")
  return 0


def _print_groups(meta: dict, examples: dict[str, int], minimum: int) -> None:
  from ftjax.data import inspection  # pylint: disable=import-outside-toplevel
  lines, warnings = inspection.group_lines(meta, examples, minimum)
  for line in lines:
    print(f"  {line}")
  for warning in warnings:
    print(warning, file=sys.stderr)


_SHOWN_IGNORED = 20  # the rest are in the metadata


def _print_ignored(meta: dict, data_path) -> None:
  """The files of manual_dir the layout does not use, each with the reason."""
  count, listed = meta.get("ignored", 0), meta.get("ignored_files", [])
  if not count:
    return
  print(f"  ignored {count} file(s) of manual_dir that the layout does not use "
        f"(up to 200 listed in {data_path}/metadata.json):")
  for line in listed[:_SHOWN_IGNORED]:
    print(f"    {line}")
  if count > _SHOWN_IGNORED:
    print(f"    ... and {count - _SHOWN_IGNORED} more")


def inspect(args) -> int:
  from ftjax.data import inspection
  info, builder = _builder(args)
  if not builder.data_path.exists():
    raise DataError(f"{builder.data_path}: not prepared; run `python -m ftjax.data prepare "
                    f"--dataset {args.dataset} ...` first.")
  stats = inspection.summary(builder)
  meta = dict(builder.info.metadata)
  examples = {split: s["count"] for split, s in stats.items()}
  for split, (count, unit) in inspection.groups_per_split(meta, examples).items():
    stats[split]["patients"] = count if unit == "patients" else None
  print(json.dumps({"dataset": info.name, "config": builder.builder_config.name,
                    "splits": stats,
                    "skipped_bad": meta.get("skipped_bad")}, indent=2))
  for warning in inspection.group_lines(meta, examples, args.min_test_groups)[1]:
    print(warning, file=sys.stderr)
  if args.out:
    path = inspection.contact_sheet(builder, args.out, split=args.split)
    print(f"contact sheet: {path}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ftjax.data", description=_HELP[None])
  sub = parser.add_subparsers(dest="command", required=True, metavar="{prepare,inspect}")
  for name in ("prepare", "inspect"):
    p = sub.add_parser(name, help=_HELP[name], description=_HELP[name])
    p.add_argument("--dataset", required=True,
                   help=f"one of: {', '.join(list_datasets())}; your own data: "
                        f"{', '.join(generic_builders())} with --name (then the name)")
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR,
                   help="where prepared datasets live (default: %(default)s, as "
                        "config.data_dir)")
    p.add_argument("--min_test_groups", type=int, default=metrics.MIN_TEST_GROUPS,
                   help="warn when a split has fewer patients (images without patient "
                        "ids) than this; the report's default (%(default)s)")
    p.add_argument("--resize", type=int, default=232, help="shorter side (232 or 256)")
    p.add_argument("--option", action="append", default=[],
                   help="extra config option key=value (unit=image, val_fraction=0.1, "
                        "multilabel=true, allow_one_class_split=true, ...)")
    if name == "prepare":
      p.add_argument("--name", help="the name your own dataset is stored and trained under "
                     "(with --dataset folder / csv / npz), e.g. knee_xr")
      p.add_argument("--manual_dir", help="the dataset as downloaded from its owners")
      p.add_argument("--skip_bad", action="store_true",
                     help="skip (and count) unreadable images instead of stopping")
      p.add_argument("--workers", type=int, default=None, help="decoding processes")
    else:
      p.add_argument("--out", help="contact sheet PNG path")
      p.add_argument("--split", default="train")
  args = parser.parse_args(argv)
  logging_utils.quiet_libraries()  # TFDS warns about every custom config it builds
  try:
    return prepare(args) if args.command == "prepare" else inspect(args)
  except (DataError, ValueError, OSError) as exc:  # OSError: unreadable files, full disk
    print(f"error: {exc}", file=sys.stderr)
    return 2


def cli() -> None:
  """The console script's entry point (pyproject.toml); also `python -m`."""
  sys.exit(main())


if __name__ == "__main__":
  cli()
