"""ConvNeXt and EfficientNet: ftjax variable paths <-> torchvision / timm keys.

ConvNeXt state dicts come in two layouts with the same tensors: torchvision's
('features.1.0.block.0.weight', 'features.1.0.layer_scale' of shape (C, 1, 1),
'classifier.2.weight') and timm's ('stages.0.blocks.0.conv_dw.weight',
'stages.0.blocks.0.gamma' of shape (C,), 'head.fc.weight'). The layout is
recognised from the keys. EfficientNet has torchvision's layout only.
"""

from __future__ import annotations

from typing import Iterable

from ftjax.models import efficientnet, registry

FAMILIES = frozenset({"convnext", "efficientnet"})
TORCHVISION, TIMM = "torchvision", "timm"
LAYOUTS = {"convnext": (TORCHVISION, TIMM), "efficientnet": (TORCHVISION,)}
_TIMM_PREFIXES = ("stem.", "stages.", "head.")

_LEAF = {("params", "kernel"): "weight", ("params", "bias"): "bias",
         ("params", "scale"): "weight", ("batch_stats", "mean"): "running_mean",
         ("batch_stats", "var"): "running_var"}
# ConvNeXt block submodules: torchvision's index in CNBlock.block, timm's name.
_CN_BLOCK = {"dwconv": ("block.0", "conv_dw"), "norm": ("block.2", "norm"),
             "pwconv1": ("block.3", "mlp.fc1"), "pwconv2": ("block.5", "mlp.fc2")}


def layouts(arch: registry.Arch) -> tuple[str, ...]:
  return LAYOUTS.get(arch.family, (TORCHVISION,))


def detect_layout(arch: registry.Arch, keys: Iterable[str]) -> str:
  """'timm' for a ConvNeXt state dict in timm's names, else 'torchvision'."""
  if TIMM in layouts(arch) and any(k.startswith(_TIMM_PREFIXES) for k in keys):
    return TIMM
  return TORCHVISION


def _convnext_path(modules: tuple[str, ...], layout: str) -> list[str]:
  top, rest = modules[0], list(modules[1:])
  timm = layout == TIMM
  if top == "head":
    return ["head", "fc"] if timm else ["classifier", "2"]
  if top == "stem":
    return ["stem" if timm else "features.0", {"conv": "0", "norm": "1"}[rest[0]]]
  stage = int(top[len("stage"):])
  if rest[0] == "head_norm":
    return ["head", "norm"] if timm else ["classifier", "0"]
  if rest[0].startswith("downsample_"):
    index = {"downsample_norm": "0", "downsample_conv": "1"}[rest[0]]
    return ([f"stages.{stage - 1}.downsample", index] if timm
            else [f"features.{2 * stage - 2}", index])
  block = (f"stages.{stage - 1}.blocks.{rest[0]}" if timm
           else f"features.{2 * stage - 1}.{rest[0]}")
  if len(rest) == 1:  # the block's own parameter: its layer scale
    return [block]
  return [block, _CN_BLOCK[rest[1]][1 if timm else 0]]


def _efficientnet_path(modules: tuple[str, ...]) -> list[str]:
  top, rest = modules[0], list(modules[1:])
  if top == "head":
    return ["classifier", "1"]
  bn_or_conv = {"conv": "0", "bn": "1"}
  if top == "stem":
    return ["features.0", bn_or_conv[rest[0]]]
  stage = int(top[len("stage"):])
  if rest[0] == "conv_head":
    return ["features.8", bn_or_conv[rest[1]]]
  # MBConv.block: [expand], depthwise, squeeze-excitation, project.
  offset = 1 if efficientnet.BASE_STAGES[stage - 1].expand_ratio != 1 else 0
  index = {"expand": 0, "depthwise": offset, "se": offset + 1, "project": offset + 2}
  layer = f"features.{stage}.{rest[0]}.block.{index[rest[1]]}"
  if rest[1] == "se":
    return [layer, rest[2]]
  return [layer, bn_or_conv[rest[2]]]


def torch_key(arch: registry.Arch, collection: str, path: tuple[str, ...],
              layout: str = TORCHVISION) -> str:
  """('params', ('stage1', '0', 'dwconv', 'kernel')) -> 'features.1.0.block.0.weight'."""
  modules = path[:-1]
  names = (_convnext_path(modules, layout) if arch.family == "convnext"
           else _efficientnet_path(modules))
  if path[-1] == "layer_scale":
    return ".".join(names + ["gamma" if layout == TIMM else "layer_scale"])
  return ".".join(names + [_LEAF[(collection, path[-1])]])


def layer_scale_to_torch(value, layout: str):
  """ftjax's (C,) layer scale as torchvision's (C, 1, 1) or timm's (C,)."""
  return value if layout == TIMM else value.reshape(-1, 1, 1)
