"""Conversion entry points: a .pth or .safetensors file, or a live torch model -> ftjax."""

from __future__ import annotations

import datetime
import os
import pathlib
import re
from typing import Any

import jax
import numpy as np

from ftjax.models import pretrained, registry
from weights_port import mapping, pth, safetensors_file

CONVERTER_VERSION = "1"
# torchvision names its files '<arch>-<first hex digits of the sha256>.pth'.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth$")


class HashMismatchError(ValueError):
  pass


def check_file_hash(src: pathlib.Path, sha256: str, expected: str | None = None) -> bool:
  """Refuses a file whose content does not match the hash in its name (torchvision's
  files) or `expected` (a prefix of the sha256 the publisher lists, e.g. the
  Hugging Face hub's file page: timm's files have no hash in their name).

  Returns whether there was a hash to check: without one (timm's files, no
  --sha256) the sha256 is only recorded in the manifest.
  """
  if expected and not sha256.startswith(expected.lower()):
    raise HashMismatchError(
        f"{src}: its sha256 is {sha256[:16]}..., but --sha256 says it starts with "
        f"{expected}: the download is incomplete or corrupt, or the hash is another "
        f"file's. Download it again.")
  match = _HASH_IN_NAME.search(src.name)
  if match and not sha256.startswith(match.group(1)):
    raise HashMismatchError(
        f"{src}: its sha256 is {sha256[:16]}..., but the name says it starts with "
        f"{match.group(1)}: the download is incomplete or corrupt. Download it again "
        f"(or pass --no-check-hash if you renamed a file you trust).")
  return bool(match or expected)


class BadWeightsError(ValueError):
  pass


def check_weights(source: str, state_dict: dict[str, Any]) -> None:
  """Refuses values no trained network holds, naming the tensor: integer or boolean
  tensors where floats belong, NaN / Inf, negative BatchNorm running variance."""
  for name, value in state_dict.items():
    if name.endswith("num_batches_tracked"):
      continue  # an integer counter, unused by ftjax
    value = np.asarray(value)
    problem = None
    if not np.issubdtype(value.dtype, np.floating) and value.dtype.name != "bfloat16":
      problem = f"is {value.dtype}, where a float tensor belongs"
    else:
      bad = int(np.size(value) - np.count_nonzero(np.isfinite(value.astype(np.float32))))
      if bad:
        problem = f"holds {bad} NaN or infinite value(s) of {np.size(value)}"
      elif name.endswith("running_var") and np.any(value < 0):
        problem = f"holds {int(np.sum(value < 0))} negative running variance(s)"
    if problem:
      raise BadWeightsError(
          f"{source}: tensor {name} {problem}: these are not usable weights (training on "
          f"them would diverge). Download the file again, or pass --allow-bad-weights to "
          f"convert it anyway.")


def convert_state_dict(arch: str | registry.Arch, state_dict: dict[str, Any],
                       out_dir: str | os.PathLike, *, source: str = "state_dict",
                       sha256: str | None = None, hash_checked: bool = False,
                       allow_bad_weights: bool = False) -> dict[str, Any]:
  """Checks the values, converts, checks the keys and shapes, writes; returns the manifest."""
  arch = registry.get_arch(arch) if isinstance(arch, str) else arch
  if not allow_bad_weights:
    check_weights(source, state_dict)
  variables = mapping.torch_to_flax(arch, state_dict, source=source)
  head = variables["params"].get("head")  # DINOv2's files have none
  num_classes = int(head["kernel"].shape[-1]) if head else 0
  manifest = {
      "arch": arch.name,
      "num_classes": num_classes,
      "param_count": int(sum(np.size(v) for v in jax.tree_util.tree_leaves(variables["params"]))),
      "source": source,
      "source_sha256": sha256,
      # Whether sha256 was compared with the hash in the file's name (torchvision's).
      "hash_checked": hash_checked,
      # Whose key names the source uses: 'torchvision', or 'timm' (ConvNeXt).
      "layout": mapping.layout_of(arch, state_dict),
      # The torchvision weight name, when the source is one of torchvision's files.
      "torchvision_weights": source if _HASH_IN_NAME.search(source) else None,
      "converter_version": CONVERTER_VERSION,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }
  pretrained.save_converted(out_dir, variables, manifest)
  return manifest


def _max_total_bytes(src: pathlib.Path) -> int:
  """The .pth reader's cap on all storages: its default, or the file's size where that
  is more (vit_l_16's file, 1.1 GiB, is over the default). Stored storages are never
  larger than the file; counting the arch's parameters instead would start JAX, which
  a converter under a memory limit cannot afford."""
  return max(pth.DEFAULT_MAX_TOTAL_BYTES, src.stat().st_size)


def convert_file(arch: str | registry.Arch, src: str | os.PathLike,
                 out_dir: str | os.PathLike, *, check_hash: bool = True,
                 allow_bad_weights: bool = False,
                 expected_sha256: str | None = None) -> dict[str, Any]:
  """Reads a .pth or .safetensors file without torch and writes the ftjax checkpoint."""
  src = pathlib.Path(src)
  arch = registry.get_arch(arch) if isinstance(arch, str) else arch
  if not src.is_file():
    raise FileNotFoundError(
        f"{src}: no such file. Download {arch.source}'s {arch.name} weights from "
        f"{arch.weights_url} and pass that file to --src.")
  sha256 = pth.sha256_of(src)
  hash_checked = check_hash and check_file_hash(src, sha256, expected_sha256)
  if safetensors_file.is_safetensors(src):
    state_dict = safetensors_file.read_state_dict(src)
  else:
    state_dict = pth.read_state_dict(src, max_total_bytes=_max_total_bytes(src))
  return convert_state_dict(arch, state_dict, out_dir, source=src.name, sha256=sha256,
                            hash_checked=hash_checked, allow_bad_weights=allow_bad_weights)


def convert_torch(arch: str | registry.Arch, model_or_state_dict: Any,
                  out_dir: str | os.PathLike) -> dict[str, Any]:
  """Converts a live torch nn.Module or state_dict (needs torch installed)."""
  state_dict = (model_or_state_dict.state_dict()
                if hasattr(model_or_state_dict, "state_dict") else model_or_state_dict)
  arrays = {key: value.detach().cpu().numpy() for key, value in state_dict.items()}
  return convert_state_dict(arch, arrays, out_dir, source=type(model_or_state_dict).__name__)

