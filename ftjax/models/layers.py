"""Building blocks shared by the model families, with torchvision's numerics.

Flax's own BatchNorm keeps the *biased* batch variance in its running average;
PyTorch keeps the unbiased one. Fine-tuning from torchvision weights in train
mode must evolve the running statistics exactly as PyTorch does, so ftjax has
its own small BatchNorm.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# torch.nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu"), untruncated.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_linear_kernel_init() -> nn.initializers.Initializer:
  """nn.Linear's default weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear_bias_init(fan_in: int) -> nn.initializers.Initializer:
  """nn.Linear's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class BatchNorm(nn.Module):
  """BatchNorm2d with PyTorch semantics on NHWC inputs.

  momentum is in Flax's convention (0.9 here is torch's 0.1). In training the
  batch is normalised with the biased variance and the running variance is
  updated with the unbiased one, as torch does. Statistics are computed in
  float32 whatever the compute dtype.
  """

  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)

    x32 = x.astype(jnp.float32)
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x32, axes)
      var = jnp.mean(jnp.square(x32 - mean), axes)  # two-pass: exact for large means
      if not self.is_initializing():
        count = x.size // features
        unbiased = var * (count / max(count - 1, 1))
        ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * unbiased

    mul = scale.astype(jnp.float32) * jax.lax.rsqrt(var + self.epsilon)
    y = (x32 - mean) * mul + bias.astype(jnp.float32)
    return y.astype(self.dtype or x.dtype)


def conv(features: int, kernel: int, stride: int = 1, padding: int = 0, *,
         use_bias: bool = False, dtype: Dtype = jnp.float32,
         param_dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Conv:
  """A square Conv2d with torch's explicit symmetric padding (never 'SAME')."""
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)), use_bias=use_bias,
                 dtype=dtype, param_dtype=param_dtype, kernel_init=conv_kernel_init,
                 name=name)


def max_pool(x: jax.Array, kernel: int, stride: int, padding: int = 0) -> jax.Array:
  """torch MaxPool2d (floor mode): padding counts as -inf, as in torch."""
  return nn.max_pool(x, (kernel, kernel), strides=(stride, stride),
                     padding=((padding, padding), (padding, padding)))


def global_avg_pool(x: jax.Array) -> jax.Array:
  """AdaptiveAvgPool2d((1, 1)) + flatten, accumulated in float32."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)


@functools.lru_cache(maxsize=None)
def _adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  # torch's bins: [floor(i * in / out), ceil((i + 1) * in / out)).
  matrix = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
  """torch AdaptiveAvgPool2d on NHWC, for any input size (bins may overlap)."""
  height, width = x.shape[1:3]
  if (height, width) == tuple(output_size):
    return x
  rows = _adaptive_pool_matrix(height, output_size[0])
  cols = _adaptive_pool_matrix(width, output_size[1])
  y = jnp.einsum("ih,jw,nhwc->nijc", rows, cols, x.astype(jnp.float32),
                 precision=jax.lax.Precision.HIGHEST)
  return y.astype(x.dtype)


def head(num_classes: int, fan_in: int, *, dtype: Dtype = jnp.float32,
         param_dtype: Dtype = jnp.float32) -> nn.Dense:
  """The new classifier: a Dense layer named 'head', initialised like nn.Linear."""
  return nn.Dense(num_classes, dtype=dtype, param_dtype=param_dtype,
                  kernel_init=torch_linear_kernel_init(),
                  bias_init=torch_linear_bias_init(fan_in), name="head")
