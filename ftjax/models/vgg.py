"""VGG-11/13/16/19, with and without BatchNorm, as in torchvision.

Top-level submodules: stage1..stage5 (the conv stages, each ending at a
max-pool), classifier (fc1, fc2) and head. The adaptive 7x7 average pool makes
any input of at least 32 px work, as in torchvision.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.models import layers

Dtype = Any

# Conv widths per stage (torchvision's cfgs "A", "B", "D", "E" split at "M").
STAGES = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}

_fc_init = nn.initializers.normal(0.01)  # torchvision's init for VGG's Linear layers


class Stage(nn.Module):
  widths: Sequence[int]
  batch_norm: bool
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for j, width in enumerate(self.widths):
      x = layers.conv(width, 3, 1, 1, use_bias=True, name=f"conv{j}", **kw)(x)
      if self.batch_norm:
        x = layers.BatchNorm(name=f"bn{j}", **kw)(x, not train)
      x = nn.relu(x)
    return layers.max_pool(x, 2, 2)


class Classifier(nn.Module):
  """fc1 -> ReLU -> Dropout -> fc2 -> ReLU -> Dropout (the head is separate)."""

  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for name in ("fc1", "fc2"):
      x = nn.Dense(4096, dtype=self.dtype, param_dtype=self.param_dtype,
                   kernel_init=_fc_init, name=name)(x)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
    return x


class VGG(nn.Module):
  depth: int
  batch_norm: bool = False
  num_classes: int = 1000
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    for i, widths in enumerate(STAGES[self.depth]):
      x = Stage(widths, self.batch_norm, name=f"stage{i + 1}", **kw)(x, train)
    x = layers.adaptive_avg_pool(x, (7, 7))
    # Flattened in (h, w, c) order; the weight port permutes fc1 to match.
    x = x.reshape(x.shape[0], -1)
    x = Classifier(self.dropout_rate, name="classifier", **kw)(x, train)
    logits = layers.head(self.num_classes, x.shape[-1], **kw)(x)
    return logits.astype(jnp.float32)


VGG11 = functools.partial(VGG, depth=11)
VGG13 = functools.partial(VGG, depth=13)
VGG16 = functools.partial(VGG, depth=16)
VGG19 = functools.partial(VGG, depth=19)
