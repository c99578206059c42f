"""ConvNeXt-T/S/B as in torchvision (and timm's `convnext_tiny`, the same network).

Top-level submodules are the parameter blocks: stem (4x4 patchify conv,
LayerNorm), stage1..stage4 and head. Stages 2-4 start with their
downsampling layer (LayerNorm, 2x2 stride-2 conv), as in timm; stage4 ends
with the global average pool and the classifier's LayerNorm ('head_norm'),
as DenseNet's last block owns norm5, so the head is the Dense layer alone.

ConvNeXt has no BatchNorm: 'batch_stats' is empty. Stochastic depth (a
whole residual branch dropped per sample, torchvision's StochasticDepth
'row') is an `nn.Dropout` over all but the batch axis, so it draws from the
'dropout' rng; it is off by default (torchvision trains with 0.1 to 0.5).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.models import layers

Dtype = Any

# torchvision's init for ConvNeXt's Conv2d and Linear layers (trunc_normal_ std
# 0.02 with bounds at +-2, i.e. +-100 standard deviations: a plain normal).
_init = nn.initializers.normal(0.02)
_EPS = 1e-6  # LayerNorm epsilon of torchvision and timm
LAYER_SCALE_INIT = 1e-6


def layer_norm(name: str, dtype: Dtype, param_dtype: Dtype) -> nn.LayerNorm:
  """LayerNorm over channels (NHWC's last axis), statistics in float32."""
  return nn.LayerNorm(epsilon=_EPS, dtype=dtype, param_dtype=param_dtype,
                      use_fast_variance=False, name=name)


def drop_path(rate: float, name: str | None = None) -> nn.Dropout:
  """Stochastic depth: the branch of a whole sample is zeroed with probability `rate`."""
  return nn.Dropout(rate, broadcast_dims=(1, 2, 3), name=name)


class CNBlock(nn.Module):
  """dwconv 7x7 -> LayerNorm -> Linear 4C -> GELU -> Linear C, times layer scale."""

  features: int
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    c = self.features
    y = nn.Conv(c, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=c,
                kernel_init=_init, name="dwconv", **kw)(x)
    y = layer_norm("norm", **kw)(y)
    y = nn.Dense(4 * c, kernel_init=_init, name="pwconv1", **kw)(y)
    y = nn.gelu(y, approximate=False)  # torch's nn.GELU() is the exact erf form
    y = nn.Dense(c, kernel_init=_init, name="pwconv2", **kw)(y)
    gamma = self.param("layer_scale", nn.initializers.constant(LAYER_SCALE_INIT), (c,),
                       self.param_dtype)
    y = y * gamma.astype(y.dtype)
    if self.drop_path_rate > 0:
      y = drop_path(self.drop_path_rate)(y, deterministic=not train)
    return x + y


class Stem(nn.Module):
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    del train
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Conv(self.features, (4, 4), strides=(4, 4), padding="VALID",
                kernel_init=_init, name="conv", **kw)(x)
    return layer_norm("norm", **kw)(x)


class Stage(nn.Module):
  features: int
  num_blocks: int
  downsample: bool
  drop_path_rates: Sequence[float]
  final_norm: bool = False  # the last stage pools and owns the classifier's LayerNorm
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.downsample:
      x = layer_norm("downsample_norm", **kw)(x)
      x = nn.Conv(self.features, (2, 2), strides=(2, 2), padding="VALID",
                  kernel_init=_init, name="downsample_conv", **kw)(x)
    for i in range(self.num_blocks):
      x = CNBlock(self.features, self.drop_path_rates[i], name=str(i), **kw)(x, train)
    if self.final_norm:
      x = layer_norm("head_norm", **kw)(layers.global_avg_pool(x))
    return x


def drop_path_rates(depths: Sequence[int], rate: float) -> list[list[float]]:
  """torchvision's linear schedule: block k of n gets rate * k / (n - 1)."""
  total = sum(depths)
  rates = [rate * k / max(total - 1, 1) for k in range(total)]
  out, start = [], 0
  for depth in depths:
    out.append(rates[start:start + depth])
    start += depth
  return out


class ConvNeXt(nn.Module):
  depths: Sequence[int]
  widths: Sequence[int]
  num_classes: int = 1000
  stochastic_depth: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = Stem(self.widths[0], name="stem", **kw)(x.astype(self.dtype), train)
    rates = drop_path_rates(self.depths, self.stochastic_depth)
    last = len(self.depths) - 1
    for i, (depth, width) in enumerate(zip(self.depths, self.widths)):
      x = Stage(width, depth, downsample=i > 0, drop_path_rates=rates[i],
                final_norm=i == last, name=f"stage{i + 1}", **kw)(x, train)
    logits = layers.head(self.num_classes, x.shape[-1], **kw)(x)
    return logits.astype(jnp.float32)


ConvNeXtTiny = functools.partial(ConvNeXt, depths=(3, 3, 9, 3), widths=(96, 192, 384, 768))
ConvNeXtSmall = functools.partial(ConvNeXt, depths=(3, 3, 27, 3),
                                  widths=(96, 192, 384, 768))
ConvNeXtBase = functools.partial(ConvNeXt, depths=(3, 3, 27, 3),
                                 widths=(128, 256, 512, 1024))
