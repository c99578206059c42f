"""Layer-wise learning-rate decay (LLRD), as timm's `param_groups_layer_decay`.

Every module trains with Adam; the parameters are split into layer groups
ordered from the input to the output, and group i of n trains at
lr * decay ** (n - 1 - i): the head at lr, each earlier group `decay` times
less. The groups are timm's fine grouping (`group_matcher(coarse=False)`):

  ResNet    stem (conv1, bn1), then one group per residual block
            (layer1.0, layer1.1, ..., layer4.2, downsample included), head.
  DenseNet  stem (conv0, norm0), then one group per dense layer
            (denseblock1.denselayer1, ...); a transition joins the group of
            the dense layer before it; norm5 matches no pattern in timm and
            so joins the head's group (the last).
  VGG       (timm's VGG is not torchvision's) one group per convolution with
            its BatchNorm, in order, then fc1, fc2 and the head.
  ViT       stem (patch embedding, class token, position embedding), then one
            group per transformer block; the final norm joins the last block's
            group, the head is last.
  ConvNeXt  stem, then one group per block (stages.N.blocks.M); a stage's
            downsampling layer joins its first block's group; the
            classifier's LayerNorm (stage4's head_norm) joins the head's.
  EfficientNet  stem (conv_stem, bn1), then one group per MBConv block
            (blocks.N.M); the final 1x1 conv (stage7's conv_head) joins the
            last block's group.

With Adam a group's learning rate is a constant factor on its update, so the
transform is gated Adam, then the per-tensor scale, then the learning rate.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ftjax.models.registry import Arch
from ftjax.strategies import schedules, transforms
from ftjax.strategies.base import Built, Definition, SharedOptions, option

Params = Mapping[str, Any]
Path = tuple[str, ...]
# timm's MATCH_PREV_GROUP: an ordinal ending in it joins the group before it.
JOIN_PREVIOUS = 99999.0
LAST = (math.inf,)  # what matches no pattern: the head's group


@dataclasses.dataclass(frozen=True)
class Options(SharedOptions):
  llrd_decay: float = option(0.75, "LLRD: lr factor per layer group from the head "
                             "towards the input (timm's layer_decay)", minimum=0.0)


def _number(name: str) -> float:
  """The trailing number of a module name ('layer3' -> 3, 'denselayer12' -> 12)."""
  return float(re.search(r"(\d+)$", name).group(1))


def _resnet_ordinal(path: Path) -> tuple[float, ...]:
  top = path[0]
  if top == "stem":
    return (0.0,)
  if top.startswith("layer"):
    return (1.0, _number(top), float(path[1]))
  return LAST


def _densenet_ordinal(path: Path) -> tuple[float, ...]:
  top = path[0]
  if top == "stem":
    return (0.0,)
  if top.startswith("denseblock") and path[1].startswith("denselayer"):
    return (1.0, _number(top), _number(path[1]))
  if top.startswith("transition"):
    return (1.0, _number(top), JOIN_PREVIOUS)
  return LAST  # denseblock4's norm5 and the head


def _vgg_ordinal(path: Path) -> tuple[float, ...]:
  top = path[0]
  if top.startswith("stage"):  # conv<i> and bn<i> are one layer
    return (0.0, _number(top), _number(path[1]))
  if top == "classifier":
    return (1.0, _number(path[1]))
  return LAST


def _vit_ordinal(path: Path) -> tuple[float, ...]:
  top = path[0]
  if top == "stem":
    return (0.0,)
  if top.startswith("block"):
    return (1.0, _number(top))
  if top == "norm":
    return (1.0, JOIN_PREVIOUS)
  return LAST


def _convnext_ordinal(path: Path) -> tuple[float, ...]:
  top = path[0]
  if top == "stem":
    return (0.0,)
  if top.startswith("stage") and path[1].startswith("downsample_"):
    return (1.0, _number(top), 0.0)  # timm's (0,): the group of block 0
  if top.startswith("stage") and path[1].isdigit():
    return (1.0, _number(top), float(path[1]))
  return LAST  # stage4's head_norm and the head


def _efficientnet_ordinal(path: Path) -> tuple[float, ...]:
  top = path[0]
  if top == "stem":
    return (0.0,)
  if top.startswith("stage") and path[1] == "conv_head":
    return (1.0, _number(top), JOIN_PREVIOUS)
  if top.startswith("stage"):
    return (1.0, _number(top), float(path[1]))
  return LAST


ORDINALS: dict[str, Callable[[Path], tuple[float, ...]]] = {
    "resnet": _resnet_ordinal, "densenet": _densenet_ordinal, "vgg": _vgg_ordinal,
    "vit": _vit_ordinal, "convnext": _convnext_ordinal,
    "efficientnet": _efficientnet_ordinal}


def _names(path) -> Path:
  return tuple(str(getattr(k, "key", k)) for k in path)


def layer_groups(family: str, params: Params) -> Any:
  """A tree like `params` of each tensor's layer group (0 at the input).

  The ordinals are sorted and numbered as timm's `group_with_matcher` does:
  one group per distinct ordinal, except that an ordinal ending in
  JOIN_PREVIOUS joins the group before it.
  """
  ordinal_of = ORDINALS[family]
  paths = [_names(p) for p, _ in jax.tree_util.tree_leaves_with_path(dict(params))]
  group_of, group = {}, -1
  for ordinal in sorted({ordinal_of(p) for p in paths}):
    if group < 0 or ordinal[-1] != JOIN_PREVIOUS:
      group += 1
    group_of[ordinal] = group
  return jax.tree_util.tree_map_with_path(
      lambda p, _: group_of[ordinal_of(_names(p))], dict(params))


def lr_scales(family: str, params: Params, decay: float) -> Any:
  """Each tensor's lr factor decay ** (last group - its group)."""
  groups = layer_groups(family, params)
  last = max(jax.tree_util.tree_leaves(groups))
  return jax.tree_util.tree_map(lambda g: decay ** (last - g), groups)


class LayerScaleState(NamedTuple):
  lr_scales: Any  # per-tensor factors, a params tree of f32 scalars


def scale_by_layer(scales_of: Callable[[Params], Any]) -> optax.GradientTransformation:
  """Multiplies each tensor's update by its factor, `scales_of(params)` at init
  (the full tree: updates may hold any subset of its modules)."""

  def init_fn(params):
    return LayerScaleState(jax.tree_util.tree_map(
        lambda s: jnp.asarray(s, jnp.float32), scales_of(params)))

  def update_fn(updates, state, params=None):
    del params
    return transforms.scale_updates(updates, state.lr_scales), state

  return optax.GradientTransformation(init_fn, update_fn)


def _build(arch: Arch, options: Options) -> Built:
  def scales_of(params):
    return lr_scales(arch.family, params, float(options.llrd_decay))

  def transform(learning_rate):
    return optax.chain(transforms.gated(optax.scale_by_adam(eps=options.adam_eps)),
                       scale_by_layer(scales_of),
                       optax.scale_by_learning_rate(learning_rate))

  return Built(transform, schedules.single(schedules.all_modules(arch)))


DEFINITIONS = (
    Definition("llrd", "all modules, Adam; lr decays by `llrd_decay` per layer group "
               "from the head towards the input (timm's layer decay)", Options, _build),
)
