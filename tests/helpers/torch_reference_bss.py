"""Plain PyTorch batch spectral shrinkage, written as tllib's fine-tuning example does.

The features are the classifier's input, caught by a forward pre-hook on the
head; the penalty is tllib's BatchSpectralShrinkage (torch.svd of the transposed
feature matrix, the k smallest singular values squared); loss = CE + weight *
penalty; torch.optim.Adam over every parameter.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def bss_penalty(features: torch.Tensor, k: int) -> torch.Tensor:
  """tllib's BatchSpectralShrinkage.forward."""
  _, singular, _ = torch.svd(features.t())
  num = singular.size(0)
  result = 0
  for i in range(k):
    result = result + torch.pow(singular[num - 1 - i], 2)
  return result


def _batch(batch, dtype):
  images = torch.from_numpy(np.array(batch["image"])).permute(0, 3, 1, 2).contiguous()
  return images.to(dtype), torch.from_numpy(np.array(batch["label"])).long()


def train_bss(model, batches, lr: float, *, head: str, k: int, weight: float,
              eps: float = 1e-8):
  """One Adam step per batch on CE + weight * BSS of the input of module `head`."""
  dtype = next(model.parameters()).dtype
  captured = []
  hook = model.get_submodule(head).register_forward_pre_hook(
      lambda module, args: captured.append(args[0]))
  opt = torch.optim.Adam(model.parameters(), lr=lr, eps=eps)
  for batch in batches:
    images, labels = _batch(batch, dtype)
    captured.clear()
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    if weight:
      loss = loss + weight * bss_penalty(captured[-1], k)
    loss.backward()
    opt.step()
  hook.remove()
  return model
