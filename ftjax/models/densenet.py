"""DenseNet-121/161/169/201 as in torchvision (bn_size 4, no dropout).

Top-level submodules are the paper's nine blocks: stem (conv0, norm0),
denseblock1, transition1, ..., denseblock4 (which owns norm5) and head.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.models import layers

Dtype = Any


class DenseLayer(nn.Module):
  growth_rate: int
  bn_size: int = 4
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = nn.relu(layers.BatchNorm(name="norm1", **kw)(x, not train))
    y = layers.conv(self.bn_size * self.growth_rate, 1, name="conv1", **kw)(y)
    y = nn.relu(layers.BatchNorm(name="norm2", **kw)(y, not train))
    y = layers.conv(self.growth_rate, 3, 1, 1, name="conv2", **kw)(y)
    # New features are appended after the old ones, as torch.cat(..., dim=1).
    return jnp.concatenate([x, y], axis=-1)


class DenseBlock(nn.Module):
  num_layers: int
  growth_rate: int
  bn_size: int = 4
  final_norm: bool = False  # the last block owns norm5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i in range(self.num_layers):
      x = DenseLayer(self.growth_rate, self.bn_size, self.dtype, self.param_dtype,
                     name=f"denselayer{i + 1}")(x, train)
    if self.final_norm:
      x = layers.BatchNorm(dtype=self.dtype, param_dtype=self.param_dtype,
                           name="norm5")(x, not train)
    return x


class Transition(nn.Module):
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.relu(layers.BatchNorm(name="norm", **kw)(x, not train))
    x = layers.conv(self.features, 1, name="conv", **kw)(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Stem(nn.Module):
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.conv(self.features, 7, 2, 3, name="conv0", **kw)(x)
    x = nn.relu(layers.BatchNorm(name="norm0", **kw)(x, not train))
    return layers.max_pool(x, 3, 2, 1)


class DenseNet(nn.Module):
  growth_rate: int
  block_config: Sequence[int]
  num_init_features: int
  bn_size: int = 4
  num_classes: int = 1000
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = Stem(self.num_init_features, name="stem", **kw)(x.astype(self.dtype), train)
    features = self.num_init_features
    last = len(self.block_config) - 1
    for i, num_layers in enumerate(self.block_config):
      x = DenseBlock(num_layers, self.growth_rate, self.bn_size, final_norm=i == last,
                     name=f"denseblock{i + 1}", **kw)(x, train)
      features += num_layers * self.growth_rate
      if i != last:
        features //= 2
        x = Transition(features, name=f"transition{i + 1}", **kw)(x, train)
    x = layers.global_avg_pool(nn.relu(x))
    logits = layers.head(self.num_classes, x.shape[-1], **kw)(x)
    return logits.astype(jnp.float32)


DenseNet121 = functools.partial(DenseNet, growth_rate=32, block_config=(6, 12, 24, 16),
                                num_init_features=64)
DenseNet161 = functools.partial(DenseNet, growth_rate=48, block_config=(6, 12, 36, 24),
                                num_init_features=96)
DenseNet169 = functools.partial(DenseNet, growth_rate=32, block_config=(6, 12, 32, 32),
                                num_init_features=64)
DenseNet201 = functools.partial(DenseNet, growth_rate=32, block_config=(6, 12, 48, 32),
                                num_init_features=64)
