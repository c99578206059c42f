"""Plain PyTorch implementations of the strategies, for comparison with ftjax.

Written the way PyTorch training code does it: model.train(), requires_grad
False on frozen parameters, torch.optim.Adam (state created on a parameter's
first gradient), explicit SP penalty terms in the loss, Adam re-created with
per-parameter-group learning rates for every Auto-RGN epoch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from weights_port import mapping


def resnet18(variables, num_classes: int) -> torch.nn.Module:
  torch.manual_seed(0)
  model = torchvision.models.resnet18(num_classes=num_classes)
  state = {k: torch.from_numpy(np.array(v)) for k, v in
           mapping.flax_to_torch("resnet18", variables).items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
  return model.train()


def to_flax(model: torch.nn.Module):
  state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  return mapping.torch_to_flax("resnet18", state)


def _batch(batch):
  images = torch.from_numpy(np.array(batch["image"])).permute(0, 3, 1, 2).contiguous()
  return images, torch.from_numpy(np.array(batch["label"])).long()


def _set_trainable(model, head_only: bool):
  for name, p in model.named_parameters():
    p.requires_grad_(name.startswith("fc.") or not head_only)


def train(model, batches, lr: float, *, eps: float = 1e-8, head_only_steps: int = 0,
          all_head_only=False, sp: dict | None = None):
  """Adam steps over `batches`; the first `head_only_steps` train fc only.

  One optimizer over every parameter: frozen ones have no gradient, so Adam
  skips them and their state starts on their first gradient.
  """
  opt = torch.optim.Adam(model.parameters(), lr=lr, eps=eps)
  w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
  for i, batch in enumerate(batches):
    _set_trainable(model, all_head_only or i < head_only_steps)
    images, labels = _batch(batch)
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    if sp is not None:
      loss = loss + sp_penalty(model, w0, **sp)
    loss.backward()
    opt.step()
  return model


def sp_penalty(model, w0, alpha, beta, norm):
  """alpha * ||w_s - w0_s|| + beta * ||w_fc|| over conv / linear weights."""
  total = 0.0
  for module_name, module in model.named_modules():
    if not isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
      continue
    name = f"{module_name}.weight"
    w = module.weight
    diff, coeff = (w, beta) if module_name == "fc" else (w - w0[name], alpha)
    total = total + coeff * (diff.abs().sum() if norm == "l1" else (diff * diff).sum())
  return total


def _bn_param_names(model):
  return {f"{m_name}.{p_name}" for m_name, m in model.named_modules()
          if isinstance(m, torch.nn.BatchNorm2d) for p_name, _ in m.named_parameters()}


def rgn_weights(model, batches):
  """get_lr_weights: mean over batches of ||g|| / ||p||, BN by type left out, / max."""
  buffers = {k: v.clone() for k, v in model.state_dict().items()}
  excluded = _bn_param_names(model)
  names = [n for n, _ in model.named_parameters()]
  params = [p for _, p in model.named_parameters()]
  ratios = {n: [] for n in names if n not in excluded}
  for batch in batches:
    images, labels = _batch(batch)
    loss = F.cross_entropy(model(images), labels)
    grads = torch.autograd.grad(loss, params)
    for n, p, g in zip(names, params, grads):
      if n in ratios:
        ratios[n].append((torch.norm(g) / torch.norm(p)).item())
  model.load_state_dict(buffers)  # the probe leaves running statistics alone
  rgn = {n: float(np.mean(v)) for n, v in ratios.items()}
  top = max(rgn.values())
  return {n: v / top for n, v in rgn.items()}


def train_auto_rgn(model, epochs, lr: float, eps: float = 1e-8):
  """`epochs`: (probe batches, train batches) per epoch; Adam re-created each epoch."""
  named = dict(model.named_parameters())
  weights_log = []
  for probe_batches, batches in epochs:
    weights = rgn_weights(model, probe_batches)
    weights_log.append(weights)
    opt = torch.optim.Adam([{"params": [named[n]], "lr": lr * w} for n, w in weights.items()],
                           lr=lr, eps=eps)
    for batch in batches:
      images, labels = _batch(batch)
      opt.zero_grad(set_to_none=True)
      F.cross_entropy(model(images), labels).backward()
      opt.step()
  return model, weights_log
