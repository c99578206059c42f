"""ResNet-18/34/50/101/152 (torchvision v1.5: stride on the 3x3 of bottlenecks).

Top-level submodules are the paper's parameter blocks: stem (conv1, bn1),
layer1..layer4 and head. Inside, names follow torchvision ('layer1.0.conv1'),
so the weight port is a rename plus a transpose.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.models import layers

Dtype = Any


class _Block(nn.Module):
  planes: int
  stride: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _conv(self, *args, **kwargs):
    return layers.conv(*args, dtype=self.dtype, param_dtype=self.param_dtype, **kwargs)

  def _bn(self, name: str):
    return layers.BatchNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  def _shortcut(self, x: jax.Array, out_features: int, train: bool) -> jax.Array:
    if self.stride == 1 and x.shape[-1] == out_features:
      return x
    return _Downsample(out_features, self.stride, self.dtype, self.param_dtype,
                       name="downsample")(x, train)


class _Downsample(nn.Module):
  """torchvision's Sequential(conv1x1, BatchNorm): submodules '0' and '1'."""

  features: int
  stride: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = layers.conv(self.features, 1, self.stride, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="0")(x)
    return layers.BatchNorm(dtype=self.dtype, param_dtype=self.param_dtype,
                            name="1")(x, use_running_average=not train)


class BasicBlock(_Block):
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    ra = not train
    y = self._conv(self.planes, 3, self.stride, 1, name="conv1")(x)
    y = nn.relu(self._bn("bn1")(y, ra))
    y = self._conv(self.planes, 3, 1, 1, name="conv2")(y)
    y = self._bn("bn2")(y, ra)
    return nn.relu(y + self._shortcut(x, self.planes, train))


class Bottleneck(_Block):
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    ra = not train
    y = self._conv(self.planes, 1, name="conv1")(x)
    y = nn.relu(self._bn("bn1")(y, ra))
    y = self._conv(self.planes, 3, self.stride, 1, name="conv2")(y)
    y = nn.relu(self._bn("bn2")(y, ra))
    y = self._conv(self.planes * 4, 1, name="conv3")(y)
    y = self._bn("bn3")(y, ra)
    return nn.relu(y + self._shortcut(x, self.planes * 4, train))


class Stem(nn.Module):
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = layers.conv(64, 7, 2, 3, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="conv1")(x)
    x = layers.BatchNorm(dtype=self.dtype, param_dtype=self.param_dtype,
                         name="bn1")(x, use_running_average=not train)
    return layers.max_pool(nn.relu(x), 3, 2, 1)


class Stage(nn.Module):
  block: type[_Block]
  planes: int
  num_blocks: int
  stride: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i in range(self.num_blocks):
      x = self.block(self.planes, self.stride if i == 0 else 1, self.dtype,
                     self.param_dtype, name=str(i))(x, train)
    return x


class ResNet(nn.Module):
  block: type[_Block]
  stage_sizes: Sequence[int]
  num_classes: int = 1000
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = Stem(self.dtype, self.param_dtype, name="stem")(x.astype(self.dtype), train)
    for i, num_blocks in enumerate(self.stage_sizes):
      x = Stage(self.block, 64 * 2**i, num_blocks, 1 if i == 0 else 2, self.dtype,
                self.param_dtype, name=f"layer{i + 1}")(x, train)
    x = layers.global_avg_pool(x)
    logits = layers.head(self.num_classes, x.shape[-1], dtype=self.dtype,
                         param_dtype=self.param_dtype)(x)
    return logits.astype(jnp.float32)


ResNet18 = functools.partial(ResNet, block=BasicBlock, stage_sizes=(2, 2, 2, 2))
ResNet34 = functools.partial(ResNet, block=BasicBlock, stage_sizes=(3, 4, 6, 3))
ResNet50 = functools.partial(ResNet, block=Bottleneck, stage_sizes=(3, 4, 6, 3))
ResNet101 = functools.partial(ResNet, block=Bottleneck, stage_sizes=(3, 4, 23, 3))
ResNet152 = functools.partial(ResNet, block=Bottleneck, stage_sizes=(3, 8, 36, 3))
