"""Prepared + pipelined pixels match torchvision's evaluation transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from ftjax.data import preprocess
from ftjax.data.pipeline import CenterCrop, CropNormalize
from ftjax.models.registry import get_arch
from tests.helpers.data_trees import bach_tree, prepare, records


def _source(size, mode, seed=0):
  rng = np.random.default_rng(seed)
  w, h = size
  # smooth image + noise: like a photo, with detail the antialiasing must handle
  yy, xx = np.mgrid[0:h, 0:w]
  base = 128 + 60 * np.sin(xx / 17.0)[..., None] * np.cos(yy / 23.0)[..., None]
  img = np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
  image = Image.fromarray(img, "RGB")
  return image.convert("L") if mode == "L" else image


def _torchvision(image, resize, crop=224):
  tf = T.Compose([T.Resize(resize, antialias=True), T.CenterCrop(crop), T.ToTensor()])
  x = tf(image)
  if x.shape[0] == 1:  # the model sees grayscale replicated to 3 channels
    x = x.repeat(3, 1, 1)
  x = T.Normalize(preprocess.IMAGENET_MEAN, preprocess.IMAGENET_STD)(x)
  return x.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("arch", ["resnet50", "densenet121"])
@pytest.mark.parametrize("size,mode", [((517, 389), "RGB"), ((301, 640), "RGB"),
                                       ((450, 333), "L"), ((233, 700), "RGB")])
def test_matches_torchvision(arch, size, mode):
  pre = get_arch(arch).preprocessing
  image = _source(size, mode)
  ours = preprocess.crop_normalize(preprocess.resize_shorter(image, pre.resize), pre.crop,
                                   pre.mean, pre.std)
  ref = _torchvision(image, pre.resize, pre.crop)
  assert ours.shape == ref.shape == (224, 224, 3)
  # 1/255 in pixel units is 1/(255*std) in normalised units
  tol = 1.0 / (255.0 * min(pre.std))
  assert np.abs(ours - ref).mean() < tol
  assert np.abs(ours - ref).max() < 3 * tol


def test_resized_size_follows_torchvision():
  for w, h in [(517, 389), (301, 640), (232, 232), (1000, 233), (233, 1000)]:
    new = preprocess.resized_size(w, h, 232)
    ref = T.Resize(232)(Image.new("RGB", (w, h))).size
    assert new == ref


def test_jnp_matches_numpy():
  import jax.numpy as jnp
  image = preprocess.resize_shorter(_source((300, 260), "RGB"), 232)
  crop = CenterCrop(224).map({"image": image, "label": 0})["image"]
  np_out = CropNormalize(224).map({"image": image, "label": 0})["image"]
  assert crop.dtype == np.uint8
  np.testing.assert_allclose(np.asarray(preprocess.normalize_jnp(jnp.asarray(crop[None])))[0],
                             np_out, atol=1e-5)
  np.testing.assert_allclose(
      np.asarray(preprocess.crop_normalize_jnp(jnp.asarray(image[None]), 224))[0], np_out,
      atol=1e-5)


def test_high_bit_depth_and_gray_arrays_become_rgb():
  arr = np.arange(12, dtype=np.int16).reshape(3, 4) * 300 - 500
  out = preprocess.resize_shorter(arr, 3)
  assert out.shape == (3, 4, 3) and out.dtype == np.uint8
  assert out.min() == 0 and out.max() == 255
  assert (out[..., 0] == out[..., 1]).all()


def test_builder_output_matches_torchvision_end_to_end(tmp_path):
  root = bach_tree(tmp_path / "m", per_class=3, size=(260, 240))
  b = prepare("bach", root, tmp_path / "d", resize=232, test_fraction=0.34, val_fraction=0.5)
  rec = records(b, "train")[0]
  folder, stem = rec["id"].decode().split("/")
  src = root / "ICIAR2018_BACH_Challenge" / "Photos" / folder / f"{stem}.tif"
  ours = CropNormalize(224).map(rec)["image"]
  ref = _torchvision(Image.open(src), 232)
  assert ours.shape == ref.shape
  assert np.abs(ours - ref).mean() < 1.0 / (255.0 * 0.225)
