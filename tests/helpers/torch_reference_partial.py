"""Plain PyTorch versions of llrd, bitfit and surgical fine-tuning.

Written the way PyTorch code does them, from torch parameter names and module
types only: timm's `param_groups_layer_decay` on a timm model (whose
parameter names are torchvision's) for the per-group learning rates, a
hand-written grouping for torchvision's VGG (timm's VGG is another network),
requires_grad for what trains, torch.optim.Adam.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from timm.models import group_parameters
from timm.optim._param_groups import param_groups_layer_decay

from tests.helpers import torch_reference


def timm_lr_scales(arch: str, decay: float, num_classes: int = 3,
                   coarse: bool = False) -> dict[str, float]:
  """torch parameter name -> timm's lr_scale for `arch` (ResNet / DenseNet).

  coarse=True: the same decay over timm's coarse groups (one per stage), a
  deliberately wrong grouping for tests of the tests.
  """
  model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
  if coarse:
    layer_of = group_parameters(model, model.group_matcher(coarse=True), reverse=True)
    last = max(layer_of.values())
    return {n: decay ** (last - layer_of.get(n, last)) for n, _ in model.named_parameters()}
  name_of = {id(p): n for n, p in model.named_parameters()}
  groups = param_groups_layer_decay(model, weight_decay=0.0, layer_decay=decay)
  return {name_of[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}


def vgg_lr_scales(model: torch.nn.Module, decay: float) -> dict[str, float]:
  """torchvision VGG: a group per Conv2d (its BatchNorm joins it), one per Linear."""
  group_of, group = {}, -1
  for module_name, module in model.named_modules():
    if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
      group += 1
    for param_name, _ in module.named_parameters(recurse=False):
      group_of[f"{module_name}.{param_name}"] = group
  return {n: decay ** (group - g) for n, g in group_of.items()}


def train_llrd(model, batches, lr: float, scales: dict[str, float], eps: float = 1e-8):
  """One Adam step per batch, each parameter in a group of lr * its scale."""
  groups = [{"params": [p], "lr": lr * scales[n]} for n, p in model.named_parameters()]
  return _adam_steps(model, batches, torch.optim.Adam(groups, lr=lr, eps=eps))


def _adam_steps(model, batches, opt):
  """One step of `opt` on the cross-entropy of each batch (cast to the model's dtype)."""
  dtype = next(model.parameters()).dtype
  for batch in batches:
    images, labels = torch_reference._batch(batch, dtype)
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
    opt.step()
  return model


def bitfit_names(model: torch.nn.Module, head: str) -> set[str]:
  """Every bias, every BatchNorm weight and bias, every parameter of the head."""
  out = set()
  for module_name, module in model.named_modules():
    for param_name, _ in module.named_parameters(recurse=False):
      name = f"{module_name}.{param_name}"
      if (param_name == "bias" or isinstance(module, torch.nn.BatchNorm2d)
          or module_name == head):
        out.add(name)
  return out


def train_selected(model, batches, lr: float, trainable: set[str], eps: float = 1e-8):
  """One Adam step per batch with requires_grad only on the `trainable` names."""
  for name, p in model.named_parameters():
    p.requires_grad_(name in trainable)
  opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr,
                         eps=eps)
  return _adam_steps(model, batches, opt)


def names_under(model: torch.nn.Module, prefixes: tuple[str, ...]) -> set[str]:
  """The parameter names that start with one of `prefixes` ('layer3.', 'fc.')."""
  return {n for n, _ in model.named_parameters() if n.startswith(prefixes)}
