"""Compare converted weights with torchvision or timm on random input (needs torch).

The reference model is timm's for timm's archs (ViT-Ti/S/B, DINOv2) and for state
dicts in timm's key layout (ConvNeXt), torchvision's otherwise.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from ftjax.models import pretrained, registry
from weights_port import mapping, safetensors_file, vit_mapping


@dataclasses.dataclass(frozen=True)
class Verdict:
  max_abs_diff: float
  max_abs_logit: float

  @property
  def tolerance(self) -> float:
    # float32 accumulation-order differences scale with the logits' magnitude.
    return 1e-4 * max(1.0, self.max_abs_logit)

  @property
  def ok(self) -> bool:
    return self.max_abs_diff <= self.tolerance


def torch_logits(arch: registry.Arch, state_dict, images_nchw: np.ndarray) -> np.ndarray:
  import torch  # pylint: disable=import-outside-toplevel
  import torchvision  # pylint: disable=import-outside-toplevel

  layout = mapping.layout_of(arch, state_dict)
  num_classes = state_dict[_head_weight_key(arch, layout)].shape[0]
  if layout == "timm":
    import timm  # pylint: disable=import-outside-toplevel
    model = timm.create_model(arch.name, pretrained=False, num_classes=num_classes)
  else:
    model = getattr(torchvision.models, arch.name)(weights=None, num_classes=num_classes)
  model.load_state_dict(state_dict)
  model.eval()
  with torch.no_grad():
    return model(torch.from_numpy(images_nchw)).numpy()


def timm_logits(arch: registry.Arch, state_dict, images_nchw: np.ndarray) -> np.ndarray:
  """timm's model, its position embedding resampled to the input (dynamic_img_size)."""
  import timm  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  head = state_dict.get("head.weight")
  model = timm.create_model(arch.name, pretrained=False, dynamic_img_size=True,
                            num_classes=0 if head is None else head.shape[0])
  model.load_state_dict(state_dict)
  model.eval()
  with torch.no_grad():
    return model(torch.from_numpy(images_nchw)).numpy()


def _reference_logits(arch: registry.Arch, state_dict, images_nchw: np.ndarray) -> np.ndarray:
  if arch.source == "timm":
    return timm_logits(arch, state_dict, images_nchw)
  if arch.family == "vit" and images_nchw.shape[2:] != (224, 224):
    raise ValueError(f"--size {images_nchw.shape[2]} {images_nchw.shape[3]}: torchvision's "
                     f"{arch.name} takes 224x224 only (it does not resample its position "
                     f"embedding); verify it with --size 224 224.")
  return torch_logits(arch, state_dict, images_nchw)


def _load_torch(src) -> dict:
  import torch  # pylint: disable=import-outside-toplevel

  if safetensors_file.is_safetensors(src):
    from safetensors.torch import load_file  # pylint: disable=import-outside-toplevel
    return load_file(src)
  state_dict = torch.load(src, map_location="cpu", weights_only=True)
  return vit_mapping.normalize_keys(mapping.rename_legacy_keys(state_dict))


def _head_weight_key(arch: registry.Arch, layout: str) -> str:
  if arch.family == "vit":
    return "heads.head.weight"  # torchvision's ViTs (timm's go through timm_logits)
  return mapping.torch_key(arch, "params", ("head", "kernel"), layout)


def compare(arch: str | registry.Arch, weights_dir: str | os.PathLike,
            src: str | os.PathLike, *, image_size: tuple[int, int] = (224, 224),
            batch: int = 2, seed: int = 0) -> Verdict:
  """Logits of the converted Flax model vs torchvision / timm loading `src` with torch."""
  arch = registry.get_arch(arch) if isinstance(arch, str) else arch
  state_dict = _load_torch(src)
  images = np.random.default_rng(seed).standard_normal(
      (batch, 3, *image_size), dtype=np.float32)
  reference = _reference_logits(arch, state_dict, images)
  variables, manifest = pretrained.load_converted(arch, weights_dir)
  model = arch.build(manifest["num_classes"])
  logits = jax.jit(model.apply)(variables, images.transpose(0, 2, 3, 1))
  return Verdict(float(np.max(np.abs(np.asarray(logits) - reference))),
                 float(np.max(np.abs(reference))))
