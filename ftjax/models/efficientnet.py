"""EfficientNet-B0/B4 as in torchvision (MBConv, squeeze-excitation, SiLU).

Top-level submodules are the parameter blocks: stem (3x3 stride-2 conv, BN),
stage1..stage7 (torchvision's features.1..7) and head. stage7 ends with the
final 1x1 conv to 4x the channels with its BatchNorm and SiLU ('conv_head',
torchvision's features.8), as DenseNet's last block owns norm5.

BatchNorm is ftjax's (torch's eps 1e-5 and momentum 0.1, which torchvision
uses up to B4). Dropout before the head is torchvision's (0.2 for B0, 0.4
for B4), active in train mode only; stochastic depth is an option, off by
default (torchvision trains with 0.2): the residual branch of a whole sample
dropped, torchvision's StochasticDepth 'row', drawn from the 'dropout' rng.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.models import layers
from ftjax.models.convnext import drop_path

Dtype = Any


class StageConfig(NamedTuple):
  expand_ratio: int
  kernel: int
  stride: int
  in_channels: int
  out_channels: int
  num_layers: int


# torchvision's B0 setting, scaled by width and depth multipliers for the others.
BASE_STAGES = (StageConfig(1, 3, 1, 32, 16, 1), StageConfig(6, 3, 2, 16, 24, 2),
               StageConfig(6, 5, 2, 24, 40, 2), StageConfig(6, 3, 2, 40, 80, 3),
               StageConfig(6, 5, 1, 80, 112, 3), StageConfig(6, 5, 2, 112, 192, 4),
               StageConfig(6, 3, 1, 192, 320, 1))


def make_divisible(value: float, divisor: int = 8) -> int:
  """torchvision's _make_divisible: round to a multiple, never 10% down."""
  new = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * value else new


def scaled_stages(width: float, depth: float) -> tuple[StageConfig, ...]:
  return tuple(s._replace(in_channels=make_divisible(s.in_channels * width),
                          out_channels=make_divisible(s.out_channels * width),
                          num_layers=int(math.ceil(s.num_layers * depth)))
               for s in BASE_STAGES)


class ConvBN(nn.Module):
  """Conv (no bias, 'same' padding for odd kernels) -> BatchNorm -> optional SiLU."""

  features: int
  kernel: int = 1
  stride: int = 1
  groups: int = 1
  act: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    pad = (self.kernel - 1) // 2
    x = nn.Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride),
                padding=((pad, pad), (pad, pad)), feature_group_count=self.groups,
                use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                kernel_init=layers.conv_kernel_init, name="conv")(x)
    x = layers.BatchNorm(dtype=self.dtype, param_dtype=self.param_dtype,
                         name="bn")(x, use_running_average=not train)
    return nn.silu(x) if self.act else x


class SqueezeExcitation(nn.Module):
  squeeze: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype,
              kernel_init=layers.conv_kernel_init)
    s = layers.global_avg_pool(x)[:, None, None, :]
    s = nn.silu(nn.Conv(self.squeeze, (1, 1), name="fc1", **kw)(s))
    s = nn.sigmoid(nn.Conv(x.shape[-1], (1, 1), name="fc2", **kw)(s))
    return x * s


class MBConv(nn.Module):
  """[expand 1x1] -> depthwise kxk -> squeeze-excitation -> project 1x1 (+ residual)."""

  config: StageConfig
  stride: int
  in_channels: int
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    cfg = self.config
    expanded = make_divisible(self.in_channels * cfg.expand_ratio)
    y = x
    if expanded != self.in_channels:
      y = ConvBN(expanded, name="expand", **kw)(y, train)
    y = ConvBN(expanded, cfg.kernel, self.stride, groups=expanded, name="depthwise",
               **kw)(y, train)
    y = SqueezeExcitation(max(1, self.in_channels // 4), name="se", **kw)(y)
    y = ConvBN(cfg.out_channels, act=False, name="project", **kw)(y, train)
    if self.stride != 1 or self.in_channels != cfg.out_channels:
      return y
    if self.drop_path_rate > 0:
      y = drop_path(self.drop_path_rate)(y, deterministic=not train)
    return x + y


class Stage(nn.Module):
  config: StageConfig
  drop_path_rates: Sequence[float]
  head_features: int = 0  # > 0: the last stage's final 1x1 conv to this width
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    cfg = self.config
    for i in range(cfg.num_layers):
      x = MBConv(cfg, cfg.stride if i == 0 else 1,
                 cfg.in_channels if i == 0 else cfg.out_channels,
                 self.drop_path_rates[i], name=str(i), **kw)(x, train)
    if self.head_features:
      x = ConvBN(self.head_features, name="conv_head", **kw)(x, train)
    return x


def drop_path_rates(stages: Sequence[StageConfig], rate: float) -> list[list[float]]:
  """torchvision's schedule: block k of n gets rate * k / n."""
  total = sum(s.num_layers for s in stages)
  out, k = [], 0
  for stage in stages:
    out.append([rate * (k + j) / total for j in range(stage.num_layers)])
    k += stage.num_layers
  return out


class EfficientNet(nn.Module):
  width: float
  depth: float
  dropout_rate: float
  num_classes: int = 1000
  stochastic_depth: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    stages = scaled_stages(self.width, self.depth)
    x = ConvBN(stages[0].in_channels, 3, 2, name="stem", **kw)(x.astype(self.dtype), train)
    rates = drop_path_rates(stages, self.stochastic_depth)
    for i, stage in enumerate(stages):
      head_features = 4 * stage.out_channels if i == len(stages) - 1 else 0
      x = Stage(stage, rates[i], head_features, name=f"stage{i + 1}", **kw)(x, train)
    x = layers.global_avg_pool(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = layers.head(self.num_classes, x.shape[-1], **kw)(x)
    return logits.astype(jnp.float32)


EfficientNetB0 = functools.partial(EfficientNet, width=1.0, depth=1.0, dropout_rate=0.2)
EfficientNetB4 = functools.partial(EfficientNet, width=1.4, depth=1.8, dropout_rate=0.4)
