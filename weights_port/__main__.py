"""python -m weights_port {convert,verify,list}: torchvision / timm ImageNet weights -> ftjax."""

from __future__ import annotations

import argparse
import sys
import time

from ftjax.models import registry

_EPILOG = """\
Where the weights come from: torchvision publishes its ImageNet weights as .pth
files at https://download.pytorch.org/models/<file>; timm publishes its ViTs'
weights as model.safetensors on the Hugging Face hub
(https://huggingface.co/timm/<arch>.<tag>). Download the file for your
architecture once (a browser, curl or wget; `python -m weights_port list` prints
every architecture's file and URL), then convert it. ftjax never downloads
anything at run time, and converting needs no torch. ConvNeXt also converts from
timm's files (the Hugging Face hub's timm/convnext_*, pytorch_model.bin): the
key layout, torchvision's or timm's, is recognised from the file.

The sha256 of torchvision's files starts with the hex digits in their names,
which convert checks. timm's files are all named model.safetensors: convert
prints and records their sha256; pass --sha256 with the one the hub's file
page lists to have it checked.

Examples:
  python -m weights_port convert --arch resnet50 --src resnet50-11ad3fa6.pth --out weights/resnet50
  python -m weights_port verify --arch resnet50 --src resnet50-11ad3fa6.pth --weights weights/resnet50
  python -m weights_port convert --arch vit_small_patch14_dinov2 --src model.safetensors --out weights/vit_small_patch14_dinov2
"""


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m weights_port", description=__doc__, epilog=_EPILOG,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)

  convert = sub.add_parser("convert", help="convert a .pth, .bin or .safetensors file",
                           epilog=_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
  convert.add_argument("--arch", required=True, choices=list(registry.ARCHS),
                       metavar="ARCH", help="architecture: " + ", ".join(registry.ARCHS))
  convert.add_argument("--src", required=True,
                       help="the weights: a .pth file (torchvision), timm's "
                            "pytorch_model.bin, or a .safetensors file (timm, read with the "
                            "safetensors package)")
  convert.add_argument("--out", required=True,
                       help="output directory (e.g. weights/resnet50); configs point "
                            "weights_dir at it or at its parent")
  convert.add_argument("--no-check-hash", dest="check_hash", action="store_false",
                       help="skip comparing the file's sha256 with the hash in its name")
  convert.add_argument("--sha256", default=None, metavar="HEX",
                       help="refuse the file unless its sha256 starts with HEX (e.g. the "
                            "hash the Hugging Face hub lists for a timm file)")
  convert.add_argument("--allow-bad-weights", dest="allow_bad_weights", action="store_true",
                       help="convert even tensors with NaN/Inf values, integer dtypes or "
                            "negative running variance (refused by default)")

  verify = sub.add_parser("verify", help="compare converted weights with torchvision "
                                         "(needs torch and torchvision; timm for timm's "
                                         "files)")
  verify.add_argument("--arch", required=True, choices=list(registry.ARCHS), metavar="ARCH")
  verify.add_argument("--src", required=True, help="the original .pth or .safetensors file")
  verify.add_argument("--weights", required=True, help="the converted directory")
  verify.add_argument("--size", type=int, nargs=2, default=(224, 224),
                      metavar=("H", "W"), help="input size (default 224 224; torchvision's "
                                               "ViTs take 224 224 only)")

  sub.add_parser("list", help="architectures, their weight files and URLs")
  return parser


def _convert(args) -> int:
  from weights_port import convert  # pylint: disable=import-outside-toplevel

  start = time.perf_counter()
  print(f"Converting {args.src} as {args.arch} ...", flush=True)
  manifest = convert.convert_file(args.arch, args.src, args.out, check_hash=args.check_hash,
                                  allow_bad_weights=args.allow_bad_weights,
                                  expected_sha256=args.sha256)
  hashed = ("matches " + ("--sha256" if args.sha256 else "the hash in the file name")
            if manifest["hash_checked"] else
            "recorded, not checked (no hash in the file name); --sha256 checks one"
            if args.check_hash else "recorded, not checked (--no-check-hash)")
  print(f"Found {manifest['layout']}'s key layout. Wrote {args.out}: "
        f"{manifest['param_count']:,} parameters, {manifest['num_classes']} classes, "
        f"sha256 {manifest['source_sha256'][:12]}... {hashed} "
        f"({time.perf_counter() - start:.1f} s)")
  return 0


def _verify(args) -> int:
  try:
    from weights_port import verify  # pylint: disable=import-outside-toplevel
    import timm  # pylint: disable=import-outside-toplevel,unused-import
    import torchvision  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    print("verify needs torch, torchvision and timm: pip install 'ftjax[test]'",
          file=sys.stderr)
    return 2
  try:
    verdict = verify.compare(args.arch, args.weights, args.src, image_size=tuple(args.size))
  except ImportError as error:  # timm, for a file in timm's layout
    print(f"verify needs {error.name} for {args.src}: pip install {error.name}",
          file=sys.stderr)
    return 2
  status = "OK" if verdict.ok else "MISMATCH"
  print(f"{args.arch} at {args.size[0]}x{args.size[1]}: max |logit difference| "
        f"{verdict.max_abs_diff:.3g} (max |logit| {verdict.max_abs_logit:.3g}, tolerance "
        f"{verdict.tolerance:.3g}): {status}")
  return 0 if verdict.ok else 1


def _list(_) -> int:
  print(f"{'arch':<24} {'params':>12}  {'resize':>6}  weights file")
  for arch in registry.ARCHS.values():
    print(f"{arch.name:<24} {registry.param_count(arch):>12,}  "
          f"{arch.preprocessing.resize:>6}  {arch.weights_url}")
  print("ConvNeXt also converts from timm's files in timm's key layout, e.g. "
        "https://huggingface.co/timm/convnext_tiny.fb_in1k (pytorch_model.bin).")
  return 0


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    return {"convert": _convert, "verify": _verify, "list": _list}[args.command](args)
  except (FileNotFoundError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 1


def cli() -> None:
  """The console script's entry point (pyproject.toml); also `python -m`."""
  sys.exit(main())


if __name__ == "__main__":
  cli()
