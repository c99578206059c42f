"""Parameter paths -> block labels, and masks that select parameter kinds.

A label is the top-level submodule name of a parameter ('layer3', 'head'):
the registry's blocks are groups of top-level submodules, so every freezing
decision is a decision about top-level names. BatchNorm parameters are found
by module type rather than by name: only ftjax's BatchNorm owns
'batch_stats', so a params node whose path also exists in 'batch_stats' is a
BatchNorm layer (DenseNet's 'norm*' layers included).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import jax

Params = Mapping[str, Any]

HEAD = "head"


def label_of(path: tuple[Any, ...]) -> str:
  """('layer3', '0', 'conv1', 'kernel') -> 'layer3' (accepts jax key paths too)."""
  first = path[0]
  return str(getattr(first, "key", first))


def labels(params: Params) -> Any:
  """A tree like `params` whose leaves are their top-level module names."""
  return jax.tree_util.tree_map_with_path(lambda p, _: label_of(p), params)


def _has_path(tree: Any, path: Iterable[str]) -> bool:
  node = tree
  for name in path:
    if not isinstance(node, Mapping) or name not in node:
      return False
    node = node[name]
  return True


def bn_mask(params: Params, batch_stats: Params | None) -> Any:
  """True for parameters of BatchNorm layers (their module also has batch_stats)."""
  stats = batch_stats or {}

  def is_bn(path, _):
    names = [str(k.key) for k in path]
    return _has_path(stats, names[:-1])

  return jax.tree_util.tree_map_with_path(is_bn, params)


def kernel_mask(params: Params) -> Any:
  """True for conv / dense kernels (the weights SP penalises by default)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: str(getattr(p[-1], "key", p[-1])) == "kernel", params)


def split(params: Params, trainable: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
  """(trainable, frozen) top-level dicts; every top-level name lands in one."""
  trainable = frozenset(trainable)
  unknown = trainable - set(params)
  if unknown:
    raise ValueError(f"Unknown modules {sorted(unknown)}; the params have "
                     f"{sorted(params)}.")
  train = {k: v for k, v in params.items() if k in trainable}
  frozen = {k: v for k, v in params.items() if k not in trainable}
  return train, frozen


def merge(*parts: Params) -> dict[str, Any]:
  """Inverse of `split`: the union of disjoint top-level dicts."""
  out: dict[str, Any] = {}
  for part in parts:
    out.update(part)
  return out
