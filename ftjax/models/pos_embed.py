"""Resampling a ViT's position-embedding grid to another input size, as timm does.

timm (`resample_abs_pos_embed`, models built with dynamic_img_size=True) calls
torch's F.interpolate(mode='bicubic', align_corners=False, antialias=True) on
the grid in float32, keeping the class token's embedding as it is. torch's
antialiased bicubic is PIL's separable filter: cubic coefficient a = -0.5,
support widened by the scale when downsampling, taps outside the grid dropped
and the remaining weights renormalised. The grids are static, so each axis is
one small matrix computed with numpy at trace time.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
  x = np.abs(x)
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
  far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
  return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=None)
def antialiased_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) weights of torch's antialiased bicubic along one axis."""
  scale = in_size / out_size
  support = 2.0 * max(scale, 1.0)
  inv_scale = 1.0 / scale if scale >= 1.0 else 1.0
  matrix = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    center = scale * (i + 0.5)
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), in_size)
    taps = np.arange(lo, hi)
    weights = _cubic((taps - center + 0.5) * inv_scale)
    total = weights.sum()
    matrix[i, lo:hi] = weights / total if total != 0.0 else weights
  return matrix.astype(np.float32)


def resample_grid(grid: jax.Array, new_size: tuple[int, int]) -> jax.Array:
  """(1, H, W, C) -> (1, new_h, new_w, C), float32, rows then columns (as torch)."""
  height, width = grid.shape[1:3]
  if (height, width) == tuple(new_size):
    return grid
  rows = antialiased_bicubic_matrix(height, new_size[0])
  cols = antialiased_bicubic_matrix(width, new_size[1])
  hp = jax.lax.Precision.HIGHEST
  out = jnp.einsum("jw,nhwc->nhjc", cols, grid.astype(jnp.float32), precision=hp)
  return jnp.einsum("ih,nhjc->nijc", rows, out, precision=hp)


def resample_pos_embed(pos_embed: jax.Array, old_grid: tuple[int, int],
                       new_grid: tuple[int, int], num_prefix_tokens: int = 1) -> jax.Array:
  """(1, prefix + old_h * old_w, C) -> (1, prefix + new_h * new_w, C), dtype kept."""
  if tuple(old_grid) == tuple(new_grid):
    return pos_embed
  prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
  channels = pos_embed.shape[-1]
  grid = grid.reshape(1, *old_grid, channels)
  grid = resample_grid(grid, new_grid).astype(pos_embed.dtype)
  return jnp.concatenate([prefix, grid.reshape(1, -1, channels)], axis=1)
