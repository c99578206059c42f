"""Image preprocessing of paper 3.4 with torchvision's numerics.

The shorter-side resize runs once at prepare time (PIL antialiased bilinear,
which is what torchvision's ``Resize`` does on PIL images). Center crop and
ImageNet normalisation run in the input pipeline (numpy) or on device (jnp).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
  """(width, height) with the shorter side = size, as torchvision computes it."""
  short, long = (width, height) if width <= height else (height, width)
  if short == size:
    return width, height
  new_short, new_long = size, int(size * long / short)  # truncation, like torchvision
  return (new_short, new_long) if width <= height else (new_long, new_short)


def to_rgb_uint8(image: Image.Image | np.ndarray) -> Image.Image:
  """Any PIL mode or 2-D/3-D array -> 8-bit RGB PIL image (gray replicated)."""
  if isinstance(image, np.ndarray):
    array = image
    if array.ndim == 3 and array.shape[-1] == 1:
      array = array[..., 0]
    if array.dtype != np.uint8:
      array = scale_to_uint8(array)
    image = Image.fromarray(array)
  if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
    image = Image.fromarray(scale_to_uint8(np.asarray(image)))
  if image.mode != "RGB":
    image = image.convert("RGB")
  return image


def scale_to_uint8(array: np.ndarray) -> np.ndarray:
  """Min-max scale a high-bit-depth or float image to uint8 (MRI int16, 16-bit PNG).

  A constant image has no range to stretch: its value is kept, rounded and
  clipped to 0..255 (as skimage's rescale_intensity does), so a blank 0 stays
  black and a constant 200.0 is 200, not 0. Values must be finite
  (``validate.check_pixels``).
  """
  array = np.asarray(array, np.float64)
  lo, hi = float(array.min()), float(array.max())
  if hi <= lo:
    return np.clip(np.round(array), 0, 255).astype(np.uint8)
  return np.round((array - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def resize_shorter(image: Image.Image, size: int) -> np.ndarray:
  """Antialiased bilinear resize of the shorter side to ``size``; uint8 HxWx3."""
  image = to_rgb_uint8(image)
  new = resized_size(image.width, image.height, size)
  if new != image.size:
    image = image.resize(new, Image.BILINEAR, reducing_gap=None)
  return np.asarray(image, np.uint8)


def crop_offsets(height: int, width: int, crop: int) -> tuple[int, int]:
  """torchvision CenterCrop's top/left offsets (round half to even)."""
  if height < crop or width < crop:
    raise ValueError(f"image {height}x{width} is smaller than the {crop} px crop; "
                     "prepare the dataset with a resize >= crop")
  return int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))


def center_crop(image: np.ndarray, crop: int = 224) -> np.ndarray:
  """Center crop of an HxWxC array (uint8 stays uint8)."""
  top, left = crop_offsets(image.shape[0], image.shape[1], crop)
  return image[top:top + crop, left:left + crop]


def normalize(image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
  """uint8 HxWx3 (or NxHxWx3) -> float32 (x/255 - mean) / std, like ToTensor+Normalize."""
  x = np.asarray(image, np.float32) / np.float32(255.0)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def crop_normalize(image: np.ndarray, crop: int = 224,
                   mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
  """Center crop + normalise one prepared image (numpy, for the pipeline)."""
  return normalize(center_crop(image, crop), mean, std)


def normalize_jnp(images, mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD, dtype=None):
  """On-device normalise of uint8 NxHxWx3 crops (jit-friendly)."""
  import jax.numpy as jnp  # local: the prepare path must not need jax
  x = images.astype(jnp.float32) / 255.0
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x if dtype is None else x.astype(dtype)


def crop_normalize_jnp(images, crop: int = 224,
                       mean: Sequence[float] = IMAGENET_MEAN,
                       std: Sequence[float] = IMAGENET_STD, dtype=None):
  """On-device center crop + normalise of a uint8 NxHxWx3 batch of equal-size images."""
  height, width = images.shape[-3], images.shape[-2]
  top, left = crop_offsets(height, width, crop)
  return normalize_jnp(images[..., top:top + crop, left:left + crop, :], mean, std, dtype)
