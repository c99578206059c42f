"""Compare converted weights with torchvision (or timm) on random input (needs torch).

The reference model is timm's when the state dict uses timm's key layout
(ConvNeXt), torchvision's otherwise.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from ftjax.models import pretrained, registry
from weights_port import mapping


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
  num_classes = state_dict[mapping.torch_key(arch, "params", ("head", "kernel"), layout)].shape[0]
  if layout == "timm":
    import timm  # pylint: disable=import-outside-toplevel
    model = timm.create_model(arch.name, pretrained=False, num_classes=num_classes)
  else:
    model = getattr(torchvision.models, arch.name)(weights=None, num_classes=num_classes)
  model.load_state_dict(state_dict)
  model.eval()
  with torch.no_grad():
    return model(torch.from_numpy(images_nchw)).numpy()


def compare(arch: str | registry.Arch, weights_dir: str | os.PathLike,
            src: str | os.PathLike, *, image_size: tuple[int, int] = (224, 224),
            batch: int = 2, seed: int = 0) -> Verdict:
  """Logits of the converted Flax model vs torchvision loading `src` with torch."""
  import torch  # pylint: disable=import-outside-toplevel

  arch = registry.get_arch(arch) if isinstance(arch, str) else arch
  state_dict = mapping.rename_legacy_keys(
      torch.load(src, map_location="cpu", weights_only=True))
  images = np.random.default_rng(seed).standard_normal(
      (batch, 3, *image_size), dtype=np.float32)
  reference = torch_logits(arch, state_dict, images)
  variables, manifest = pretrained.load_converted(arch, weights_dir)
  model = arch.build(manifest["num_classes"])
  logits = jax.jit(model.apply)(variables, images.transpose(0, 2, 3, 1))
  return Verdict(float(np.max(np.abs(np.asarray(logits) - reference))),
                 float(np.max(np.abs(reference))))
