"""Plain PyTorch implementations of the strategies, for comparison with ftjax.

Written the way PyTorch training code does it: model.train(), requires_grad
False on frozen parameters, torch.optim.Adam (state created on a parameter's
first gradient), explicit SP penalty terms in the loss, Adam re-created with
per-parameter-group learning rates for every Auto-RGN epoch.
"""

from __future__ import annotations

import jax
import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from ftjax.models import get_arch
from weights_port import mapping


def build(arch: str, variables, num_classes: int, dtype=torch.float32) -> torch.nn.Module:
  """torchvision's `arch` holding ftjax `variables`, in train mode, dropout off.

  Dropout is off on both sides of a comparison (its masks are framework RNG).
  """
  with torch.device("meta"):  # no init: every tensor comes from `variables`
    model = getattr(torchvision.models, arch)(num_classes=num_classes)
  state = {k: torch.from_numpy(np.array(v)) for k, v in
           mapping.flax_to_torch(arch, variables).items()}
  for key, _ in model.named_buffers():
    if key.endswith("num_batches_tracked"):  # unused: BatchNorm momentum is set
      state[key] = torch.tensor(0)
  model.load_state_dict(state, strict=True, assign=True)
  for module in model.modules():
    if isinstance(module, torch.nn.Dropout):
      module.p = 0.0
  return model.to(dtype).train()


def resnet18(variables, num_classes: int, dtype=torch.float32) -> torch.nn.Module:
  return build("resnet18", variables, num_classes, dtype)


def head_prefix(arch: str) -> str:
  """The torch module name of the new classifier ('fc', 'classifier', 'classifier.6')."""
  return mapping.torch_key(get_arch(arch), "params", ("head", "kernel")).rsplit(".", 1)[0]


def to_flax(model: torch.nn.Module, arch: str = "resnet18"):
  """The model's state as ftjax variables (float64 models stay float64)."""
  state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  return mapping.torch_to_flax(arch, state)


def _batch(batch, dtype=torch.float32):
  images = torch.from_numpy(np.array(batch["image"])).permute(0, 3, 1, 2).contiguous()
  return images.to(dtype), torch.from_numpy(np.array(batch["label"])).long()


def block_of(arch: str, variables) -> dict[str, str]:
  """torch parameter name -> the ftjax top-level block that holds it."""
  a = get_arch(arch)
  return {mapping.torch_key(a, "params", tuple(str(k.key) for k in path)): str(path[0].key)
          for path, _ in jax.tree_util.tree_leaves_with_path(variables["params"])}


def train(model, batches, lr: float, *, blocks: dict[str, str] | None = None,
          phases=None, eps: float = 1e-8, sp: dict | None = None):
  """One Adam step per batch; step i trains the ftjax blocks phases[i] (None: all).

  `blocks` (from `block_of`) maps torch names to ftjax blocks. One optimizer
  over every parameter: frozen ones have no gradient, so Adam skips them and
  their state starts on their first gradient. The batches are cast to the
  model's dtype (float64 for the noise-floor reference).
  """
  dtype = next(model.parameters()).dtype
  opt = torch.optim.Adam(model.parameters(), lr=lr, eps=eps)
  w0 = None if sp is None else {n: p.detach().clone() for n, p in model.named_parameters()}
  for i, batch in enumerate(batches):
    trainable = None if phases is None else phases[i]
    for name, p in model.named_parameters():
      p.requires_grad_(trainable is None or blocks[name] in trainable)
    images, labels = _batch(batch, dtype)
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    if sp is not None:
      loss = loss + sp_penalty(model, w0, **sp)
    loss.backward()
    opt.step()
  return model


def sp_penalty(model, w0, alpha, beta, norm, head="fc", head_bias=True):
  """Paper eq. 1 / 3: alpha * ||w_s - w0_s|| + beta * ||w_head||.

  w_s: the pretrained conv / linear weights (ftjax's sp_apply_to='kernels');
  w_head: every parameter of the new classifier, bias included
  (head_bias=False leaves the bias out, for tests that the comparison sees it).
  """
  total = 0.0
  for module_name, module in model.named_modules():
    if module_name == head:
      terms = [(p, beta) for n, p in module.named_parameters() if head_bias or n != "bias"]
    elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
      terms = [(module.weight - w0[f"{module_name}.weight"], alpha)]
    else:
      continue
    for diff, coeff in terms:
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
    images, labels = _batch(batch, params[0].dtype)
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
      images, labels = _batch(batch, next(model.parameters()).dtype)
      opt.zero_grad(set_to_none=True)
      F.cross_entropy(model(images), labels).backward()
      opt.step()
  return model, weights_log
