"""torchvision state_dict <-> ftjax variables: key names, layouts, checks.

Every Flax variable has exactly one torchvision key. The mapping is derived
from the Flax variable tree (so it cannot drift from the models), and the
conversion fails, naming the keys, unless both sides match one to one.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import numpy as np

from ftjax.models import registry, vgg
from weights_port import keys as keys_lib
from weights_port import vit_mapping
from weights_port.keys import KeyMismatchError, ShapeMismatchError  # re-exported
from weights_port import convnet_mapping

# torchvision counts BatchNorm updates in this buffer; ftjax has no use for it.
IGNORED_SUFFIXES = (".num_batches_tracked",)
_LEAF = {("params", "kernel"): "weight", ("params", "bias"): "bias",
         ("params", "scale"): "weight", ("batch_stats", "mean"): "running_mean",
         ("batch_stats", "var"): "running_var"}
# Old DenseNet checkpoints name 'denselayer1.norm.1.weight' what is now 'norm1.weight'
# (torchvision rewrites them the same way when it loads them).
_LEGACY_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


_flat = keys_lib.flat
_list = keys_lib.listing


@functools.lru_cache(maxsize=None)
def _vgg_feature_index(depth: int, batch_norm: bool) -> dict[tuple[str, str], int]:
  """(stage, layer) -> index in torchvision's `features` Sequential."""
  index, idx = {}, 0
  for s, widths in enumerate(vgg.STAGES[depth]):
    for j in range(len(widths)):
      index[(f"stage{s + 1}", f"conv{j}")] = idx
      if batch_norm:
        index[(f"stage{s + 1}", f"bn{j}")] = idx + 1
      idx += 3 if batch_norm else 2  # conv, [bn], relu
    idx += 1  # max-pool
  return index


def _module_path(arch: registry.Arch, modules: tuple[str, ...]) -> list[str]:
  top, rest = modules[0], list(modules[1:])
  if arch.family == "resnet":
    return rest if top == "stem" else ["fc"] if top == "head" else [top, *rest]
  if arch.family == "densenet":
    if top == "head":
      return ["classifier"]
    if rest and rest[0] == "norm5":
      return ["features", "norm5"]
    return ["features", *rest] if top == "stem" else ["features", top, *rest]
  # vgg
  if top == "head":
    return ["classifier", "6"]
  if top == "classifier":
    return ["classifier", {"fc1": "0", "fc2": "3"}[rest[0]]]
  depth = int(re.match(r"vgg(\d+)", arch.name).group(1))
  return ["features", str(_vgg_feature_index(depth, "_bn" in arch.name)[(top, rest[0])])]


def torch_key(arch: registry.Arch, collection: str, path: tuple[str, ...],
              layout: str = convnet_mapping.TORCHVISION) -> str:
  """('params', ('layer1', '0', 'conv1', 'kernel')) -> 'layer1.0.conv1.weight'."""
  if arch.family in convnet_mapping.FAMILIES:
    return convnet_mapping.torch_key(arch, collection, path, layout)
  return ".".join(_module_path(arch, path[:-1]) + [_LEAF[(collection, path[-1])]])


def expected_keys(arch: registry.Arch, num_classes: int = 1000,
                  layout: str = convnet_mapping.TORCHVISION):
  """torch key -> (collection, flax path, flax shape), in Flax order."""
  shapes = registry.variable_shapes(arch, num_classes)
  return {torch_key(arch, collection, path, layout): (collection, path, leaf.shape)
          for collection in ("params", "batch_stats")
          for path, leaf in _flat(dict(shapes.get(collection, {})))}


def _to_flax(arch: registry.Arch, path: tuple[str, ...], value: np.ndarray,
             flax_shape: tuple[int, ...]) -> np.ndarray:
  if path[-1] == "layer_scale" and value.size == flax_shape[0]:
    return value.reshape(-1)  # torchvision's (C, 1, 1), timm's (C,)
  if path[-1] != "kernel":
    return value
  if value.ndim == 4:  # conv OIHW -> HWIO
    return value.transpose(2, 3, 1, 0)
  if arch.family == "vgg" and path[:2] == ("classifier", "fc1"):
    # torch flattens (c, h, w); ftjax flattens NHWC as (h, w, c).
    out_features, in_features = value.shape
    channels = flax_shape[0] // 49
    if in_features != flax_shape[0]:
      return value.T  # let the shape check report it
    return value.reshape(out_features, channels, 7, 7).transpose(2, 3, 1, 0).reshape(
        in_features, out_features)
  return value.T


def rename_legacy_keys(state_dict: dict[str, Any]) -> dict[str, Any]:
  """'denselayer1.norm.1.weight' -> 'denselayer1.norm1.weight'; other keys unchanged."""
  out = {}
  for key, value in state_dict.items():
    match = _LEGACY_DENSENET.match(key)
    out[match.group(1) + match.group(2) if match else key] = value
  return out


def normalize_keys(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drops ignored buffers and renames legacy DenseNet keys."""
  return {key: value for key, value in rename_legacy_keys(state_dict).items()
          if not key.endswith(IGNORED_SUFFIXES)}


def _head_key(arch: registry.Arch, layout: str) -> str:
  return torch_key(arch, "params", ("head", "kernel"), layout)


def layout_of(arch: str | registry.Arch, keys) -> str:
  """Whose names a state dict uses: 'torchvision', or 'timm' (ViTs and ConvNeXt)."""
  arch = registry.get_arch(arch) if isinstance(arch, str) else arch
  if arch.family == "vit":
    return vit_mapping.layout_of(keys) or arch.source
  return convnet_mapping.detect_layout(arch, keys)


def guess_arch(keys) -> str | None:
  """The registered architecture whose torch keys are exactly `keys`, if any."""
  keys = set(keys)
  for arch in registry.ARCHS.values():
    # The classifier's key rules out most architectures without computing shapes.
    if arch.family != "vit" and any(
        _head_key(arch, layout) in keys and set(expected_keys(arch, layout=layout)) == keys
        for layout in convnet_mapping.layouts(arch)):
      return arch.name
  return None


def torch_to_flax(arch: str | registry.Arch, state_dict: dict[str, np.ndarray],
                  source: str = "state_dict") -> dict[str, Any]:
  """Converts a torchvision state_dict to ftjax {'params', 'batch_stats'} (numpy).

  The number of classes is read from the classifier's weight, so fine-tuned
  torchvision checkpoints convert too.
  """
  arch = registry.get_arch(arch) if isinstance(arch, str) else arch
  if arch.family == "vit":
    return vit_mapping.torch_to_flax(
        arch, state_dict, source,
        guess_other=lambda sd: guess_arch(normalize_keys(sd).keys()))
  state_dict = normalize_keys(state_dict)
  layout = layout_of(arch, state_dict)
  head = state_dict.get(_head_key(arch, layout))
  num_classes = int(head.shape[0]) if head is not None and head.ndim == 2 else 1000
  expected = expected_keys(arch, num_classes, layout)
  missing = expected.keys() - state_dict.keys()
  unexpected = state_dict.keys() - expected.keys()
  if missing or unexpected:
    guess = vit_mapping.guess_arch(state_dict) or guess_arch(state_dict.keys())
    hint = (f"It looks like a {guess} checkpoint: use --arch {guess}." if guess else
            f"Is --arch right? Valid names: {', '.join(registry.ARCHS)}.")
    raise KeyMismatchError(
        f"{source}: does not match {layout}'s {arch.name} ({len(expected)} tensors "
        f"expected, {len(state_dict)} found). Missing ({len(missing)}): "
        f"{_list(missing) or '-'}. Unexpected ({len(unexpected)}): "
        f"{_list(unexpected) or '-'}. {hint}")

  variables: dict[str, Any] = {"params": {}, "batch_stats": {}}
  for key, (collection, path, shape) in expected.items():
    value = _to_flax(arch, path, np.asarray(state_dict[key]), shape)
    if value.shape != tuple(shape):
      raise ShapeMismatchError(
          f"{source}: {key} has shape {tuple(state_dict[key].shape)}, but {arch.name} "
          f"needs {tuple(shape)} after conversion (Flax layout). Is --arch right?")
    node = variables[collection]
    for name in path[:-1]:
      node = node.setdefault(name, {})
    dtype = np.float32 if np.issubdtype(value.dtype, np.floating) else value.dtype
    node[path[-1]] = np.ascontiguousarray(value, dtype=dtype)
  return variables


def flax_to_torch(arch: str | registry.Arch, variables: dict[str, Any],
                  layout: str = convnet_mapping.TORCHVISION) -> dict[str, np.ndarray]:
  """The inverse of `torch_to_flax`: a torchvision (or timm) state_dict as numpy arrays."""
  arch = registry.get_arch(arch) if isinstance(arch, str) else arch
  if arch.family == "vit":
    return vit_mapping.flax_to_torch(arch, variables)
  out = {}
  for collection in ("params", "batch_stats"):
    for path, value in _flat(dict(variables.get(collection, {}))):
      value = np.asarray(value)
      if path[-1] == "kernel" and value.ndim == 4:
        value = value.transpose(3, 2, 0, 1)
      elif path[-1] == "kernel" and arch.family == "vgg" and path[:2] == ("classifier", "fc1"):
        in_features, out_features = value.shape
        value = value.reshape(7, 7, in_features // 49, out_features).transpose(3, 2, 0, 1)
        value = value.reshape(out_features, in_features)
      elif path[-1] == "kernel":
        value = value.T
      elif path[-1] == "layer_scale":
        value = convnet_mapping.layer_scale_to_torch(value, layout)
      out[torch_key(arch, collection, path, layout)] = np.ascontiguousarray(value)
  return out
