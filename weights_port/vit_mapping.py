"""ViT state_dicts (torchvision's or timm's keys) <-> ftjax variables.

Both layouts hold the same tensors. timm's keys are ftjax's module names
('blocks.3.attn.qkv.weight' is block3/attn/qkv); torchvision's are renamed
('encoder.layers.encoder_layer_3.self_attention.in_proj_weight'), its fused
q/k/v projection in the same (q | k | v) order. Kernels are transposed to
Flax's layout; the class token and position embedding keep their shapes.

A state dict that does not fit the architecture is described (layout, patch
size, embed dim, depth, MLP width, position grid, LayerScale) and the one
line error names what differs, and the registered arch it matches, if any.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ftjax.models import registry
from weights_port import keys as keys_lib

_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "gamma": "gamma"}
_TORCHVISION_TOP = {"norm": "encoder.ln", "head": "heads.head"}
_TORCHVISION_STEM = {"patch_embed": "conv_proj", "cls_token": "class_token",
                     "pos_embed": "encoder.pos_embedding"}
_TORCHVISION_BLOCK = {"norm1": "ln_1", "norm2": "ln_2", "attn/proj": "self_attention.out_proj",
                      "mlp/fc1": "mlp.0", "mlp/fc2": "mlp.3"}
# torchvision's checkpoints before its MLPBlock version 2 (torchvision renames them too).
_LEGACY_MLP = re.compile(r"^(encoder\.layers\.encoder_layer_\d+\.mlp\.)linear_([12])\.")
_list = keys_lib.listing
_flat = keys_lib.flat
_BLOCK_INDEX = {"timm": re.compile(r"^blocks\.(\d+)\."),
                "torchvision": re.compile(r"^encoder\.layers\.encoder_layer_(\d+)\.")}


def _timm_key(path: tuple[str, ...]) -> str:
  top, *rest = path
  if top == "stem":
    return "patch_embed.proj." + _LEAF[rest[1]] if rest[0] == "patch_embed" else rest[0]
  if top.startswith("block"):
    return ".".join(["blocks", top[len("block"):], *rest[:-1], _LEAF[rest[-1]]])
  return ".".join([top, _LEAF[rest[-1]]])


def _torchvision_key(path: tuple[str, ...]) -> str:
  top, *rest = path
  if top == "stem":
    stem = _TORCHVISION_STEM[rest[0]]
    return stem + "." + _LEAF[rest[1]] if rest[0] == "patch_embed" else stem
  if top.startswith("block"):
    prefix = f"encoder.layers.encoder_layer_{top[len('block'):]}."
    module = "/".join(rest[:-1])
    if module == "attn/qkv":
      return prefix + "self_attention.in_proj_" + _LEAF[rest[-1]]
    return prefix + _TORCHVISION_BLOCK[module] + "." + _LEAF[rest[-1]]
  return _TORCHVISION_TOP[top] + "." + _LEAF[rest[-1]]


def torch_key(arch: registry.Arch, path: tuple[str, ...]) -> str:
  """('block3', 'attn', 'qkv', 'kernel') -> the arch's layout's key of that tensor."""
  return (_timm_key if arch.source == "timm" else _torchvision_key)(path)


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  if len(flax_shape) == 4:  # conv HWIO -> OIHW
    return tuple(flax_shape[i] for i in (3, 2, 0, 1))
  return tuple(reversed(flax_shape)) if len(flax_shape) == 2 else tuple(flax_shape)


def expected_keys(arch: registry.Arch, num_classes: int = 1000):
  """torch key -> (flax path, flax shape, torch shape), in Flax order."""
  params = registry.variable_shapes(arch, num_classes)["params"]
  return {torch_key(arch, path): (path, tuple(leaf.shape), _torch_shape(tuple(leaf.shape)))
          for path, leaf in _flat(dict(params))}


def normalize_keys(state_dict: dict[str, Any]) -> dict[str, Any]:
  """Renames torchvision's legacy 'mlp.linear_1' / 'mlp.linear_2' keys."""
  return {_LEGACY_MLP.sub(lambda m: f"{m.group(1)}{'0' if m.group(2) == '1' else '3'}.", k): v
          for k, v in state_dict.items()}


def layout_of(keys) -> str | None:
  keys = set(keys)
  if "patch_embed.proj.weight" in keys:
    return "timm"
  if "conv_proj.weight" in keys:
    return "torchvision"
  return None


def _shape(state_dict, key) -> tuple[int, ...] | None:
  value = state_dict.get(key)
  return tuple(np.shape(value)) if value is not None else None


def describe(state_dict: dict[str, Any]) -> dict[str, Any] | None:
  """What a ViT state dict holds (None when it is not one)."""
  layout = layout_of(state_dict)
  if layout is None:
    return None
  timm = layout == "timm"
  patch = _shape(state_dict, "patch_embed.proj.weight" if timm else "conv_proj.weight")
  pos = _shape(state_dict, "pos_embed" if timm else "encoder.pos_embedding")
  fc1 = _shape(state_dict, "blocks.0.mlp.fc1.weight" if timm else
               "encoder.layers.encoder_layer_0.mlp.0.weight")
  depth = len({m.group(1) for m in map(_BLOCK_INDEX[layout].match, state_dict) if m})
  return {"layout": layout,
          "patch size": patch[-1] if patch and len(patch) == 4 else None,
          "embed dim": patch[0] if patch else None,
          "depth": depth,
          "MLP width": fc1[0] if fc1 and len(fc1) == 2 else None,
          "position tokens": pos[1] if pos and len(pos) == 3 else None,
          "LayerScale": "blocks.0.ls1.gamma" in state_dict}


def arch_description(arch: registry.Arch) -> dict[str, Any]:
  config = arch.build(0).config
  return {"layout": arch.source, "patch size": config.patch_size,
          "embed dim": config.embed_dim, "depth": config.depth,
          "MLP width": config.mlp_dim,
          "position tokens": 1 + config.grid[0] * config.grid[1],
          "LayerScale": config.layer_scale}


def guess_arch(state_dict: dict[str, Any]) -> str | None:
  """The registered ViT whose description the state dict has, if any."""
  found = describe(normalize_keys(state_dict))
  for arch in registry.ARCHS.values():
    if arch.family == "vit" and found == arch_description(arch):
      return arch.name
  return None


def _differences(arch: registry.Arch, found: dict[str, Any]) -> str:
  wanted = arch_description(arch)
  return ", ".join(f"{what} {found[what]} where {arch.name} has {wanted[what]}"
                   for what in wanted if found[what] != wanted[what])


def _mismatch(arch: registry.Arch, state_dict: dict[str, Any], source: str,
              expected: dict[str, Any], guess_other) -> keys_lib.KeyMismatchError:
  found = describe(state_dict)
  guess = guess_arch(state_dict) if found else guess_other and guess_other(state_dict)
  hint = (f"It looks like a {guess} checkpoint: use --arch {guess}." if guess else
          f"Is --arch right? Valid names: {', '.join(registry.ARCHS)}.")
  differs = found and _differences(arch, found)
  if not found:
    what = f"it is not a ViT state dict (no patch embedding among its {len(state_dict)} keys)"
  elif differs:
    what = differs
  else:
    missing = expected.keys() - state_dict.keys()
    unexpected = state_dict.keys() - expected.keys()
    wrong = [f"{k} {_shape(state_dict, k)} (needs {expected[k][2]})"
             for k in expected.keys() & state_dict.keys()
             if _shape(state_dict, k) != expected[k][2]]
    what = (f"missing ({len(missing)}): {_list(missing) or '-'}; "
            f"unexpected ({len(unexpected)}): {_list(unexpected) or '-'}; "
            f"wrong shapes ({len(wrong)}): {_list(wrong) or '-'}")
  return keys_lib.KeyMismatchError(
      f"{source}: does not match {arch.source}'s {arch.name} ({len(expected)} tensors "
      f"expected, {len(state_dict)} found): {what}. {hint}")


def _head_classes(arch: registry.Arch, state_dict: dict[str, Any]) -> int:
  head = _shape(state_dict, torch_key(arch, ("head", "kernel")))
  return head[0] if head and len(head) == 2 else 0  # DINOv2 files have no head


def _to_flax(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  return value.T if value.ndim == 2 else value


def torch_to_flax(arch: str | registry.Arch, state_dict: dict[str, Any],
                  source: str = "state_dict", guess_other=None) -> dict[str, Any]:
  """A torchvision or timm ViT state dict -> ftjax {'params', 'batch_stats': {}}.

  A state dict without a head (DINOv2's) converts with num_classes 0.
  `guess_other(state_dict)` names the CNN a non-ViT state dict belongs to.
  """
  arch = registry.get_arch(arch) if isinstance(arch, str) else arch
  state_dict = normalize_keys(state_dict)
  expected = expected_keys(arch, _head_classes(arch, state_dict))
  if expected.keys() != state_dict.keys() or any(
      _shape(state_dict, k) != torch_shape for k, (_, _, torch_shape) in expected.items()):
    raise _mismatch(arch, state_dict, source, expected, guess_other)
  params: dict[str, Any] = {}
  for key, (path, _, _) in expected.items():
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    value = _to_flax(np.asarray(state_dict[key]))
    node[path[-1]] = np.ascontiguousarray(value, dtype=np.float32)
  return {"params": params, "batch_stats": {}}


def flax_to_torch(arch: str | registry.Arch, variables: dict[str, Any]) -> dict[str, np.ndarray]:
  """The inverse of `torch_to_flax`, in the arch's layout."""
  arch = registry.get_arch(arch) if isinstance(arch, str) else arch
  out = {}
  for path, value in _flat(dict(variables["params"])):
    value = np.asarray(value)
    value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T if value.ndim == 2 else value
    out[torch_key(arch, path)] = np.ascontiguousarray(value)
  return out

