"""The same step in PyTorch (`--compare torch`), from the same weights and batch."""

from __future__ import annotations

from typing import Any


from benchmarks.throughput.step import Settings, bench_step, finite_or_none, synthetic_batch
from ftjax.models import registry
from ftjax.strategies import get_strategy

def compare_torch(arch_name: str, strategy_name: str, phase: int, settings: Settings,
                  torch_compile: bool | None) -> dict[str, Any]:
  """ftjax and PyTorch steps from the same weights and batch; one merged record."""
  from benchmarks import torch_step  # pylint: disable=import-outside-toplevel
  from weights_port import mapping  # pylint: disable=import-outside-toplevel
  s = settings
  arch = registry.get_arch(arch_name)
  device = torch_step.default_device()
  model = torch_step.build_model(arch_name, s.num_classes, seed=s.seed, device=device)
  variables = mapping.torch_to_flax(arch, torch_step.state_dict_numpy(model))
  host = synthetic_batch(s.batch, s.size, s.num_classes, s.multilabel, s.seed)
  record = bench_step(arch_name, strategy_name, phase, s, variables=variables, batch=host)
  strategy = get_strategy(strategy_name, arch, {"lr": s.lr})
  result = torch_step.benchmark(
      arch_name, strategy, strategy.plan.phases[phase].trainable, host["image"], host["label"],
      num_classes=s.num_classes, steps=s.steps, warmup=s.warmup, dtype=s.dtype,
      multilabel=s.multilabel, compile=torch_compile, model=model, device=device)
  record.update(result)
  for mode in ("eager", "compile"):
    rate = result.get(f"torch_{mode}_images_per_s")
    record[f"ftjax_over_torch_{mode}"] = record["images_per_s"] / rate if rate else None
  torch_loss = result["torch_eager_first_loss"]
  record["first_loss_rel_diff"] = finite_or_none(
      abs(record["first_loss"] - torch_loss) / max(abs(torch_loss), 1e-12))
  # VGG's dropout draws different masks in the two frameworks.
  record["first_loss_comparable"] = arch.family != "vgg"
  return record
