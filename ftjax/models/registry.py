"""Architecture registry: name -> module constructor, block partition, preprocessing.

The block partition is the paper's grouping of parameters into the units that
gradual unfreezing releases one at a time. Each block is a tuple of top-level
submodule names of the Flax module, ordered from the input to the output.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ftjax.models import convnext, densenet, efficientnet, resnet, vgg, vit

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # timm's augreg ViTs
INCEPTION_STD = (0.5, 0.5, 0.5)
TORCHVISION_URL = "https://download.pytorch.org/models/"
HF_TIMM_URL = "https://huggingface.co/timm/"


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """Evaluation transform of the torchvision weights (paper 3.4)."""

  resize: int  # shorter side, antialiased bilinear, aspect ratio kept
  crop: int = 224
  mean: tuple[float, float, float] = IMAGENET_MEAN
  std: tuple[float, float, float] = IMAGENET_STD


@dataclasses.dataclass(frozen=True)
class Block:
  name: str
  modules: tuple[str, ...]  # top-level submodule names that form the block


@dataclasses.dataclass(frozen=True)
class Arch:
  name: str
  family: str  # "resnet" | "densenet" | "vgg" | "vit" | "convnext" | "efficientnet"
  module: Callable[..., nn.Module]
  blocks: tuple[Block, ...]
  preprocessing: Preprocessing
  weights_file: str  # the default ImageNet weights' file name for this arch
  source: str = "torchvision"  # "torchvision" | "timm": who publishes the weights
  weights_base: str = TORCHVISION_URL  # weights_url = weights_base + weights_file

  def build(self, num_classes: int = 1000, dtype: Any = jnp.float32,
            param_dtype: Any = jnp.float32) -> nn.Module:
    return self.module(num_classes=num_classes, dtype=dtype, param_dtype=param_dtype)

  @property
  def weights_url(self) -> str:
    return self.weights_base + self.weights_file

  @property
  def block_names(self) -> tuple[str, ...]:
    return tuple(block.name for block in self.blocks)


def _blocks(*groups: str | tuple[str, ...]) -> tuple[Block, ...]:
  return tuple(Block(g, (g,)) if isinstance(g, str) else Block(g[0], g) for g in groups)


_RESNET_BLOCKS = _blocks("stem", "layer1", "layer2", "layer3", "layer4", "head")
_DENSENET_BLOCKS = _blocks("stem", "denseblock1", "transition1", "denseblock2",
                           "transition2", "denseblock3", "transition3", "denseblock4",
                           "head")
# VGG's sixth block is its whole classifier: fc1, fc2 and the new head.
_VGG_BLOCKS = _blocks("stage1", "stage2", "stage3", "stage4", "stage5",
                      ("classifier", "head"))

# ConvNeXt and EfficientNet: stem, stages, head; the last stage owns the
# classifier's LayerNorm (ConvNeXt) or the final 1x1 conv (EfficientNet).
_CONVNEXT_BLOCKS = _blocks("stem", "stage1", "stage2", "stage3", "stage4", "head")
_EFFICIENTNET_BLOCKS = _blocks("stem", *(f"stage{i}" for i in range(1, 8)), "head")

_resize = {"resnet": 232, "densenet": 256, "vgg": 256}


def _arch(name, family, module, blocks, weights_file, resize=None) -> Arch:
  return Arch(name, family, module, blocks, Preprocessing(resize or _resize[family]),
              weights_file)


def _vit_blocks(depth: int) -> tuple[Block, ...]:
  """stem, four equal groups of transformer blocks, head. The final LayerNorm
  joins the last group (as in timm's layer grouping): it feeds the head."""
  size = depth // 4
  groups = [tuple(f"block{i}" for i in range(g * size, (g + 1) * size)) for g in range(4)]
  groups[-1] += ("norm",)
  return (Block("stem", ("stem",)),
          *(Block(f"encoder{g + 1}", modules) for g, modules in enumerate(groups)),
          Block("head", ("head",)))


def _vit(name: str, source: str, weights_file: str, resize: int,
         normalisation: tuple = (IMAGENET_MEAN, IMAGENET_STD), tag: str = "") -> Arch:
  config = vit.CONFIGS[name]
  module = functools.partial(vit.ViT, config=config, arch_name=name)
  base = TORCHVISION_URL if source == "torchvision" else f"{HF_TIMM_URL}{name}.{tag}/resolve/main/"
  return Arch(name, "vit", module, _vit_blocks(config.depth),
              Preprocessing(resize, 224, *normalisation), weights_file, source, base)


def _vgg(depth: int, bn: bool):
  return functools.partial(vgg.VGG, depth=depth, batch_norm=bn)


ARCHS: dict[str, Arch] = {a.name: a for a in [
    # ResNet-18/34 have only the V1 weights, whose recipe resizes to 256;
    # ResNet-50/101/152 default to the V2 weights (resize 232, paper 3.4).
    _arch("resnet18", "resnet", resnet.ResNet18, _RESNET_BLOCKS, "resnet18-f37072fd.pth", 256),
    _arch("resnet34", "resnet", resnet.ResNet34, _RESNET_BLOCKS, "resnet34-b627a593.pth", 256),
    _arch("resnet50", "resnet", resnet.ResNet50, _RESNET_BLOCKS, "resnet50-11ad3fa6.pth"),
    _arch("resnet101", "resnet", resnet.ResNet101, _RESNET_BLOCKS, "resnet101-cd907fc2.pth"),
    _arch("resnet152", "resnet", resnet.ResNet152, _RESNET_BLOCKS, "resnet152-f82ba261.pth"),
    _arch("densenet121", "densenet", densenet.DenseNet121, _DENSENET_BLOCKS,
          "densenet121-a639ec97.pth"),
    _arch("densenet161", "densenet", densenet.DenseNet161, _DENSENET_BLOCKS,
          "densenet161-8d451a50.pth"),
    _arch("densenet169", "densenet", densenet.DenseNet169, _DENSENET_BLOCKS,
          "densenet169-b2777c0a.pth"),
    _arch("densenet201", "densenet", densenet.DenseNet201, _DENSENET_BLOCKS,
          "densenet201-c1103571.pth"),
    _arch("vgg11", "vgg", _vgg(11, False), _VGG_BLOCKS, "vgg11-8a719046.pth"),
    _arch("vgg11_bn", "vgg", _vgg(11, True), _VGG_BLOCKS, "vgg11_bn-6002323d.pth"),
    _arch("vgg13", "vgg", _vgg(13, False), _VGG_BLOCKS, "vgg13-19584684.pth"),
    _arch("vgg13_bn", "vgg", _vgg(13, True), _VGG_BLOCKS, "vgg13_bn-abd245e5.pth"),
    _arch("vgg16", "vgg", _vgg(16, False), _VGG_BLOCKS, "vgg16-397923af.pth"),
    _arch("vgg16_bn", "vgg", _vgg(16, True), _VGG_BLOCKS, "vgg16_bn-6c64b313.pth"),
    _arch("vgg19", "vgg", _vgg(19, False), _VGG_BLOCKS, "vgg19-dcbb9e9d.pth"),
    _arch("vgg19_bn", "vgg", _vgg(19, True), _VGG_BLOCKS, "vgg19_bn-c79401a0.pth"),
    # torchvision's IMAGENET1K_V1 ViT weights (resize as their transforms).
    _vit("vit_b_16", "torchvision", "vit_b_16-c867db91.pth", 256),
    _vit("vit_b_32", "torchvision", "vit_b_32-d86f8d99.pth", 256),
    _vit("vit_l_16", "torchvision", "vit_l_16-852ce7e3.pth", 242),
    # timm's default weights on the Hugging Face hub: AugReg (crop_pct 0.9, mean
    # and std 0.5) and DINOv2 (no head; crop_pct 1.0, ImageNet mean and std).
    _vit("vit_tiny_patch16_224", "timm", "model.safetensors", 248,
         (INCEPTION_MEAN, INCEPTION_STD), "augreg_in21k_ft_in1k"),
    _vit("vit_small_patch16_224", "timm", "model.safetensors", 248,
         (INCEPTION_MEAN, INCEPTION_STD), "augreg_in21k_ft_in1k"),
    _vit("vit_base_patch16_224", "timm", "model.safetensors", 248,
         (INCEPTION_MEAN, INCEPTION_STD), "augreg2_in21k_ft_in1k"),
    _vit("vit_small_patch14_dinov2", "timm", "model.safetensors", 224, tag="lvd142m"),
    _vit("vit_base_patch14_dinov2", "timm", "model.safetensors", 224, tag="lvd142m"),
    # torchvision's resize per recipe; EfficientNet's recipes resize bicubic,
    # ftjax antialiased bilinear (B4's recipe crops 380 px: set config.crop).
    _arch("convnext_tiny", "convnext", convnext.ConvNeXtTiny, _CONVNEXT_BLOCKS,
          "convnext_tiny-983f1562.pth", 236),
    _arch("convnext_small", "convnext", convnext.ConvNeXtSmall, _CONVNEXT_BLOCKS,
          "convnext_small-0c510722.pth", 230),
    _arch("convnext_base", "convnext", convnext.ConvNeXtBase, _CONVNEXT_BLOCKS,
          "convnext_base-6075fbad.pth", 232),
    _arch("efficientnet_b0", "efficientnet", efficientnet.EfficientNetB0,
          _EFFICIENTNET_BLOCKS, "efficientnet_b0_rwightman-7f5810bc.pth", 256),
    _arch("efficientnet_b4", "efficientnet", efficientnet.EfficientNetB4,
          _EFFICIENTNET_BLOCKS, "efficientnet_b4_rwightman-23ab8bcd.pth", 384),
]}

# The three architectures of the paper.
PAPER_ARCHS = ("resnet50", "densenet121", "vgg19")


def get_arch(name: str) -> Arch:
  try:
    return ARCHS[name]
  except KeyError:
    raise ValueError(f"Unknown architecture {name!r}. Valid names: "
                     f"{', '.join(ARCHS)}.") from None


def patch_size(arch: str | Arch) -> int | None:
  """A ViT's patch size (its input sides must be multiples of it); None for CNNs."""
  arch = get_arch(arch) if isinstance(arch, str) else arch
  return arch.build(1).config.patch_size if arch.family == "vit" else None


def _init_size(arch: Arch, image_size: int) -> int:
  """A ViT's variables do not depend on the input size, which must fit its patches."""
  patch = patch_size(arch)
  return patch * max(1, image_size // patch) if patch else image_size


def init_variables(arch: str | Arch, rng: jax.Array | int = 0, num_classes: int = 1000,
                   image_size: int = 64) -> dict[str, Any]:
  """Randomly initialised {'params', 'batch_stats'} (torchvision's init scheme).

  'batch_stats' is present, possibly empty, for every architecture.
  """
  arch = get_arch(arch) if isinstance(arch, str) else arch
  rng = jax.random.key(rng) if isinstance(rng, int) else rng
  image_size = _init_size(arch, image_size)
  dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = jax.jit(arch.build(num_classes).init, static_argnames="train")(rng, dummy)
  return {"batch_stats": {}, **variables}  # uniform across families (VGG has no BN)


def variable_shapes(arch: str | Arch, num_classes: int = 1000) -> dict[str, Any]:
  """The variables' ShapeDtypeStructs, computed without allocating them."""
  arch = get_arch(arch) if isinstance(arch, str) else arch
  size = _init_size(arch, 64)
  dummy = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  shapes = jax.eval_shape(functools.partial(arch.build(num_classes).init, train=False),
                          jax.random.key(0), dummy)
  return {"batch_stats": {}, **shapes}


def _size(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def param_count(arch: str | Arch, num_classes: int = 1000) -> int:
  """Trainable parameters (BatchNorm running statistics excluded, as in torch)."""
  return _size(variable_shapes(arch, num_classes)["params"])


def has_batchnorm(arch: str | Arch) -> bool:
  """False for ConvNeXt and the ViTs (LayerNorm only) and VGG without BN: no running
  statistics."""
  return bool(jax.tree_util.tree_leaves(variable_shapes(arch)["batch_stats"]))


def block_param_counts(arch: str | Arch, num_classes: int = 1000) -> dict[str, int]:
  arch = get_arch(arch) if isinstance(arch, str) else arch
  params = variable_shapes(arch, num_classes)["params"]
  return {b.name: sum(_size(params[m]) for m in b.modules) for b in arch.blocks}
