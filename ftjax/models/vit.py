"""Vision Transformers: torchvision's vit_b_16 / vit_b_32 / vit_l_16 and timm's ViTs.

torchvision's and timm's ViTs compute the same function (pre-norm blocks,
LayerNorm eps 1e-6, exact GELU, class-token pooling, a position embedding
added after the class token is prepended); they differ only in their keys,
which weights_port maps. DINOv2 adds LayerScale (a learned per-channel gain
on each residual branch).

Top-level submodules: stem (patch embedding, class token, position
embedding), block0..block{depth-1}, norm (the final LayerNorm) and head.
Inside, names follow timm ('block3/attn/qkv').

Any input whose height and width are multiples of the patch size works: the
position embedding is resampled as timm does with dynamic_img_size=True
(ftjax.models.pos_embed). Dropout and drop path are options, off by default
(timm's defaults); both draw from the 'dropout' rng.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.models import layers, pos_embed

Dtype = Any
LAYER_NORM_EPS = 1e-6  # both torchvision's and timm's ViTs
LAYER_SCALE_INIT = 1e-5  # timm's init_values of the DINOv2 models


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  patch_size: int
  embed_dim: int
  depth: int
  num_heads: int
  mlp_dim: int
  image_size: int = 224  # the pretrained position embedding's grid is image_size / patch
  layer_scale: bool = False  # DINOv2

  @property
  def grid(self) -> tuple[int, int]:
    side = self.image_size // self.patch_size
    return side, side


def check_input_size(arch_name: str, patch_size: int, height: int, width: int) -> None:
  """ValueError unless both sides are positive multiples of the patch size."""
  if height % patch_size or width % patch_size or min(height, width) < patch_size:
    def fit(n):
      return max(patch_size, round(n / patch_size) * patch_size)
    raise ValueError(
        f"{arch_name} cuts images into {patch_size}x{patch_size} patches, so its input "
        f"must be a multiple of {patch_size} px on each side; got {height}x{width}. Set "
        f"config.crop to a multiple of {patch_size} (e.g. {fit(height)}).")


def _dense(features: int, name: str, dtype: Dtype, param_dtype: Dtype) -> nn.Dense:
  # timm's init: truncated normal(0.02) kernels, zero biases.
  return nn.Dense(features, dtype=dtype, param_dtype=param_dtype,
                  kernel_init=nn.initializers.truncated_normal(0.02), name=name)


def _layer_norm(name: str, dtype: Dtype, param_dtype: Dtype) -> nn.LayerNorm:
  return nn.LayerNorm(LAYER_NORM_EPS, dtype=dtype, param_dtype=param_dtype, name=name)


def drop_path(x: jax.Array, rate: float, deterministic: bool, rng: jax.Array | None):
  """Stochastic depth: drops the whole branch of a sample, scaling the kept ones."""
  if deterministic or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class Stem(nn.Module):
  """Patch embedding, class token and the resampled position embedding."""

  config: ViTConfig
  arch_name: str
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    check_input_size(self.arch_name, cfg.patch_size, *x.shape[1:3])
    p = cfg.patch_size
    x = nn.Conv(cfg.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=self.param_dtype, name="patch_embed")(x)
    batch, rows, cols, dim = x.shape
    cls_token = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, dim),
                           self.param_dtype)
    num_tokens = 1 + cfg.grid[0] * cfg.grid[1]
    pos = self.param("pos_embed", nn.initializers.truncated_normal(0.02),
                     (1, num_tokens, dim), self.param_dtype)
    pos = pos_embed.resample_pos_embed(pos, cfg.grid, (rows, cols))
    cls = jnp.broadcast_to(cls_token.astype(self.dtype), (batch, 1, dim))
    tokens = jnp.concatenate([cls, x.reshape(batch, rows * cols, dim)], axis=1)
    return tokens + pos.astype(self.dtype)


class Attention(nn.Module):
  num_heads: int
  attention_dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    batch, tokens, dim = x.shape
    head_dim = dim // self.num_heads
    qkv = _dense(3 * dim, "qkv", self.dtype, self.param_dtype)(x)
    # torch's layout of the fused projection: (q | k | v), each (head, head_dim).
    q, k, v = jnp.moveaxis(qkv.reshape(batch, tokens, 3, self.num_heads, head_dim), 2, 0)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * head_dim**-0.5, k)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    weights = nn.Dropout(self.attention_dropout_rate, deterministic=not train)(weights)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, tokens, dim)
    return _dense(dim, "proj", self.dtype, self.param_dtype)(out)


class Mlp(nn.Module):
  hidden: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    dim = x.shape[-1]
    x = nn.gelu(_dense(self.hidden, "fc1", self.dtype, self.param_dtype)(x),
                approximate=False)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return _dense(dim, "fc2", self.dtype, self.param_dtype)(x)


class LayerScale(nn.Module):
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    gamma = self.param("gamma", nn.initializers.constant(LAYER_SCALE_INIT), (x.shape[-1],),
                       self.param_dtype)
    return x * gamma.astype(x.dtype)


class EncoderBlock(nn.Module):
  config: ViTConfig
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _branch(self, y: jax.Array, index: int, train: bool) -> jax.Array:
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    if self.config.layer_scale:
      y = LayerScale(self.param_dtype, name=f"ls{index}")(y)
    rng = self.make_rng("dropout") if train and self.drop_path_rate else None
    return drop_path(y, self.drop_path_rate, not train, rng)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = _layer_norm("norm1", **kw)(x)
    y = Attention(self.config.num_heads, self.attention_dropout_rate, name="attn", **kw)(
        y, train)
    x = x + self._branch(y, 1, train)
    y = _layer_norm("norm2", **kw)(x)
    y = Mlp(self.config.mlp_dim, self.dropout_rate, name="mlp", **kw)(y, train)
    return x + self._branch(y, 2, train)


class ViT(nn.Module):
  """A ViT classifier; num_classes=0 returns the class token's features (no head)."""

  config: ViTConfig
  arch_name: str = "vit"
  num_classes: int = 1000
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = Stem(cfg, self.arch_name, name="stem", **kw)(x.astype(self.dtype))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    for i in range(cfg.depth):
      # timm's stochastic depth rule: the rate grows linearly with depth.
      rate = self.drop_path_rate * i / max(cfg.depth - 1, 1)
      x = EncoderBlock(cfg, self.dropout_rate, self.attention_dropout_rate, rate,
                       name=f"block{i}", **kw)(x, train)
    x = _layer_norm("norm", **kw)(x)[:, 0]
    if not self.num_classes:
      return x.astype(jnp.float32)
    logits = layers.head(self.num_classes, x.shape[-1], **kw)(x)
    return logits.astype(jnp.float32)


CONFIGS = {
    # torchvision
    "vit_b_16": ViTConfig(16, 768, 12, 12, 3072),
    "vit_b_32": ViTConfig(32, 768, 12, 12, 3072),
    "vit_l_16": ViTConfig(16, 1024, 24, 16, 4096),
    # timm
    "vit_tiny_patch16_224": ViTConfig(16, 192, 12, 3, 768),
    "vit_small_patch16_224": ViTConfig(16, 384, 12, 6, 1536),
    "vit_base_patch16_224": ViTConfig(16, 768, 12, 12, 3072),
    "vit_small_patch14_dinov2": ViTConfig(14, 384, 12, 6, 1536, 518, layer_scale=True),
    "vit_base_patch14_dinov2": ViTConfig(14, 768, 12, 12, 3072, 518, layer_scale=True),
}
