"""Flax ResNet / DenseNet / VGG / ViT / ConvNeXt / EfficientNet matching torchvision (and
timm), and their registry."""

from ftjax.models.pretrained import load_pretrained
from ftjax.models.registry import (ARCHS, PAPER_ARCHS, Arch, Block, Preprocessing,
                                   block_param_counts, get_arch, has_batchnorm,
                                   init_variables,
                                   param_count, variable_shapes)

__all__ = ["ARCHS", "PAPER_ARCHS", "Arch", "Block", "Preprocessing", "block_param_counts",
           "get_arch", "has_batchnorm", "init_variables", "load_pretrained", "param_count",
           "variable_shapes"]
