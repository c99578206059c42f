"""torchvision models with random but non-trivial weights: the reference side of parity tests."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torchvision

torch.set_num_threads(2)

# torch hook target for each ftjax top-level block (its output is the block's output).
BLOCK_OUTPUT_MODULES = {
    "resnet": {"stem": "maxpool", "layer1": "layer1", "layer2": "layer2",
               "layer3": "layer3", "layer4": "layer4"},
    "densenet": {"stem": "features.pool0", "denseblock1": "features.denseblock1",
                 "transition1": "features.transition1",
                 "denseblock2": "features.denseblock2",
                 "transition2": "features.transition2",
                 "denseblock3": "features.denseblock3",
                 "transition3": "features.transition3", "denseblock4": "features.norm5"},
}


def vgg_block_output_modules(model: torchvision.models.VGG) -> dict[str, str]:
  pools = [i for i, m in enumerate(model.features) if isinstance(m, torch.nn.MaxPool2d)]
  out = {f"stage{s + 1}": f"features.{i}" for s, i in enumerate(pools)}
  out["classifier"] = "classifier.5"
  return out


@functools.lru_cache(maxsize=None)
def random_model(arch: str, num_classes: int = 1000, seed: int = 0,
                 source: str = "torchvision") -> torch.nn.Module:
  """torchvision's (or timm's) init plus random normalisation layers and layer scales.

  Freshly initialised BatchNorm and LayerNorm layers are the identity in eval
  mode and ConvNeXt's layer scales start at 1e-6, which would hide a wrong
  mapping of their tensors.
  """
  torch.manual_seed(seed)
  if source == "timm":
    import timm  # pylint: disable=import-outside-toplevel
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
  else:
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.1)
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0.0, 0.1)
        module.running_var.uniform_(0.5, 1.5)
    for name, param in model.named_parameters():
      if name.endswith(("layer_scale", "gamma")):  # torchvision's and timm's names
        param.uniform_(0.2, 1.0)
  return model.eval()


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def forward_with_blocks(model: torch.nn.Module, images_nchw: np.ndarray,
                        block_modules: dict[str, str]) -> tuple[np.ndarray, dict]:
  """Logits and each block's output (NHWC numpy) from one eval forward pass."""
  outputs, handles = {}, []
  modules = dict(model.named_modules())
  for block, name in block_modules.items():
    # clone: torchvision applies in-place ReLUs to some of these outputs afterwards.
    hook = lambda _m, _i, out, block=block: outputs.__setitem__(block, out.clone())
    handles.append(modules[name].register_forward_hook(hook))
  try:
    with torch.no_grad():
      logits = model(torch.from_numpy(images_nchw)).numpy()
  finally:
    for handle in handles:
      handle.remove()
  nhwc = {k: (v.numpy().transpose(0, 2, 3, 1) if v.ndim == 4 else v.numpy())
          for k, v in outputs.items()}
  return logits, nhwc


def assert_matches(actual, reference: np.ndarray, rel: float = 1e-4) -> None:
  """|difference| <= rel * max(1, max |reference|): the float32 parity criterion."""
  diff = float(np.max(np.abs(np.asarray(actual) - reference)))
  bound = rel * max(1.0, float(np.max(np.abs(reference))))
  assert diff <= bound, f"max |diff| {diff:.3g} > {bound:.3g}"
