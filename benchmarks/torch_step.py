"""The ftjax training step written in plain PyTorch, timed for comparison.

Used by `python -m benchmarks.throughput --compare torch`. torch is imported
inside the functions, so the rest of the benchmark runs without it.

The step mirrors `ftjax.step.make_train_step` for a strategy's phase, written
the way PyTorch code does it: a torchvision model (random weights, a
`num_classes` head) in train mode, channels_last; requires_grad False on the
parameters of frozen modules (ftjax's top-level module names are mapped to
torchvision's parameter names through `weights_port.mapping`, so any phase of
any strategy works); cross-entropy (or BCE for multi-label); torch.optim.Adam
with torch's defaults and the strategy's lr and eps; the L1-SP / L2-SP
penalty's gradient added to the gradients before Adam (kernels only, like
ftjax's default); Auto-RGN as Adam with one parameter group per tensor
(lr * weight, BatchNorm tensors left out), its per-epoch probe not timed here.
bf16 autocast on CUDA when the benchmark runs bf16, float32 otherwise (also
on CPU). Eager, and `torch.compile(model)` when asked: a failing compile is
reported in the result, not raised.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Iterable

import numpy as np

from ftjax.models import registry
from weights_port import mapping


def import_torch():
  """torch and torchvision, or an ImportError that says how to get them."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import torchvision  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        f"--compare torch needs torch and torchvision ({e}); install them, e.g. "
        f"pip install -e '.[test]'.") from e
  return torch, torchvision


def default_device() -> str:
  torch, _ = import_torch()
  return "cuda" if torch.cuda.is_available() else "cpu"


def build_model(arch_name: str, num_classes: int, seed: int = 0, device: str = "cpu"):
  """torchvision's model with its own random init, in train mode and channels_last."""
  torch, torchvision = import_torch()
  registry.get_arch(arch_name)  # a clear error for unknown names
  torch.manual_seed(seed)
  model = getattr(torchvision.models, arch_name)(weights=None, num_classes=num_classes)
  return model.to(device=device, memory_format=torch.channels_last).train()


def state_dict_numpy(model) -> dict[str, np.ndarray]:
  """The model's state_dict as numpy (weights_port converts it to ftjax variables)."""
  # Copies: .numpy() of a CPU tensor shares its memory, which the step updates.
  return {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().numpy().copy()
          for k, v in model.state_dict().items()}


def module_of_parameters(arch_name: str, model, num_classes: int) -> dict[str, tuple]:
  """torch parameter name -> its ftjax path ('layer3', '0', 'conv1', 'kernel')."""
  arch = registry.get_arch(arch_name)
  keys = mapping.expected_keys(arch, num_classes)
  out = {}
  for name, _ in model.named_parameters():
    if name not in keys:
      raise KeyError(f"{arch_name}: torch parameter {name!r} has no ftjax counterpart.")
    out[name] = keys[name][1]
  return out


def _bn_parameter_names(model) -> set[str]:
  torch, _ = import_torch()
  return {f"{m_name}.{p_name}" for m_name, m in model.named_modules()
          if isinstance(m, torch.nn.BatchNorm2d)
          for p_name, _ in m.named_parameters(recurse=False)}


def make_step(model, arch_name: str, strategy, trainable: Iterable[str], *,
              num_classes: int, multilabel: bool = False, autocast_bf16: bool = False,
              rgn_weights: dict[str, float] | None = None, forward=None):
  """`step(images, labels) -> loss` (the loss before the update, a 0-d tensor).

  `strategy` is the ftjax Strategy (name and hparams); `trainable` the
  phase's top-level module names. `forward` (default `model`) computes the
  logits: `torch.compile(model)` renames the parameters, so the optimizer and
  the freezing are set up on `model` itself.
  """
  torch, _ = import_torch()
  paths = module_of_parameters(arch_name, model, num_classes)
  trainable = frozenset(trainable)
  named = dict(model.named_parameters())
  train_names = [n for n in named if paths[n][0] in trainable]
  for name, p in named.items():
    p.requires_grad_(name in train_names)
  hp = strategy.hparams
  lr, eps = float(hp["lr"]), float(hp["adam_eps"])
  if strategy.name == "auto_rgn":
    bn = _bn_parameter_names(model)
    weights = rgn_weights or {}
    groups = [{"params": [named[n]], "lr": lr * float(weights.get(n, 1.0))}
              for n in train_names if n not in bn]
    optimizer = torch.optim.Adam(groups, lr=lr, eps=eps)
  else:
    optimizer = torch.optim.Adam([named[n] for n in train_names], lr=lr, eps=eps)

  sp = None
  if strategy.name in ("l1_sp", "l2_sp"):
    penalised = [n for n in train_names
                 if hp["sp_apply_to"] == "all" or paths[n][-1] == "kernel"]
    body = [n for n in penalised if paths[n][0] != "head"]
    head = [n for n in penalised if paths[n][0] == "head"]
    w0 = [named[n].detach().clone() for n in body]
    sp = dict(norm=strategy.name[:2], alpha=float(hp["alpha"]), beta=float(hp["beta"]),
              body=[named[n] for n in body], w0=w0, head=[named[n] for n in head])

  def add_sp_grads():
    """alpha * d||w - w0|| for the pretrained modules, beta * d||w|| for the head."""
    with torch.no_grad():
      terms = [(p, p - ref, sp["alpha"]) for p, ref in zip(sp["body"], sp["w0"])]
      terms += [(p, p, sp["beta"]) for p in sp["head"]]
      for p, diff, coeff in terms:
        if sp["norm"] == "l1":
          p.grad.add_(torch.sign(diff), alpha=coeff)
        else:
          p.grad.add_(diff, alpha=2.0 * coeff)

  loss_fn = (torch.nn.functional.binary_cross_entropy_with_logits if multilabel
             else torch.nn.functional.cross_entropy)
  device_type = next(model.parameters()).device.type
  forward = model if forward is None else forward

  def step(images, labels):
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast_bf16):
      logits = forward(images)
    loss = loss_fn(logits.float(), labels)
    loss.backward()
    if sp is not None:
      add_sp_grads()
    optimizer.step()
    return loss.detach()

  return step


def to_torch_batch(images_nhwc: np.ndarray, labels: np.ndarray, device: str,
                   multilabel: bool = False):
  """NHWC float32 numpy -> NCHW channels_last tensor (the same memory order)."""
  torch, _ = import_torch()
  images = torch.from_numpy(np.ascontiguousarray(images_nhwc, np.float32)).permute(0, 3, 1, 2)
  images = images.to(device).contiguous(memory_format=torch.channels_last)
  labels = torch.from_numpy(np.asarray(labels)).to(device)
  labels = labels.float() if multilabel else labels.long()
  return images, labels


def _sync(device: str) -> None:
  torch, _ = import_torch()
  if device.startswith("cuda"):
    torch.cuda.synchronize()


def time_steps(step, images, labels, *, steps: int, warmup: int, device: str) -> dict[str, Any]:
  """The same method as the ftjax side: a back-to-back loop, then blocked steps."""
  start = time.perf_counter()
  first_loss = float(step(images, labels))  # .item() synchronises
  first_s = time.perf_counter() - start
  for _ in range(max(warmup - 1, 0)):
    step(images, labels)
  _sync(device)
  start = time.perf_counter()
  for _ in range(steps):
    loss = step(images, labels)
  _sync(device)
  loop_s = (time.perf_counter() - start) / steps
  del loss
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step(images, labels)
    _sync(device)
    times.append(time.perf_counter() - start)
  batch = int(images.shape[0])
  return {"images_per_s": batch / loop_s, "ms_per_step": 1e3 * loop_s,
          "ms_per_step_median": 1e3 * statistics.median(times),
          "first_step_s": first_s, "first_loss": first_loss}


def benchmark(arch_name: str, strategy, trainable: Iterable[str], images_nhwc: np.ndarray,
              labels: np.ndarray, *, num_classes: int, steps: int, warmup: int,
              dtype: str = "fp32", multilabel: bool = False, compile: bool | None = None,
              model=None, device: str | None = None) -> dict[str, Any]:
  """torch eager (and compiled) images/s for one configuration, as a flat dict.

  `model` defaults to a fresh `build_model(arch_name, num_classes)`; pass the
  one whose weights the ftjax side was given to compare first-step losses.
  compile=None compiles when CUDA is available.
  """
  torch, torchvision = import_torch()
  device = device or default_device()
  compile = device.startswith("cuda") if compile is None else compile
  autocast_bf16 = dtype == "bf16" and device.startswith("cuda")
  model = model if model is not None else build_model(arch_name, num_classes, device=device)
  images, labels_t = to_torch_batch(images_nhwc, labels, device, multilabel)
  out: dict[str, Any] = {
      "torch_version": torch.__version__, "torchvision_version": torchvision.__version__,
      "torch_device": device, "torch_threads": torch.get_num_threads(),
      "torch_dtype": "bf16 autocast" if autocast_bf16 else "fp32",
      "torch_compile_requested": bool(compile)}
  if device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
  step = make_step(model, arch_name, strategy, trainable, num_classes=num_classes,
                   multilabel=multilabel, autocast_bf16=autocast_bf16)
  eager = time_steps(step, images, labels_t, steps=steps, warmup=warmup, device=device)
  out.update({f"torch_eager_{k}": v for k, v in eager.items()})
  if device.startswith("cuda"):
    out["torch_eager_peak_bytes"] = int(torch.cuda.max_memory_allocated())
  if compile:
    try:
      step = make_step(model, arch_name, strategy, trainable, num_classes=num_classes,
                       multilabel=multilabel, autocast_bf16=autocast_bf16,
                       forward=torch.compile(model))
      result = time_steps(step, images, labels_t, steps=steps, warmup=max(warmup, 2),
                          device=device)
      out.update({f"torch_compile_{k}": v for k, v in result.items()})
    except Exception as e:  # pylint: disable=broad-except
      message = f"{type(e).__name__}: {e}".strip().splitlines()[0]
      out["torch_compile_error"] = message[:300]
  return out
