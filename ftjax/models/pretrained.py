"""Converted ImageNet weights on disk, and models built from them with a new head.

A converted directory holds an orbax checkpoint of {'params', 'batch_stats'}
('variables/') and 'manifest.json' (arch, num_classes, source file, sha256,
converter version, parameter count). `weights_port convert` writes it.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ftjax.models import layers, registry

MANIFEST = "manifest.json"
CHECKPOINT = "variables"


def _checkpointer():
  import orbax.checkpoint as ocp  # deferred: orbax is slow to import
  return ocp.StandardCheckpointer()


def convert_command(arch: registry.Arch, out_dir: str | pathlib.Path) -> str:
  return (f"python -m weights_port convert --arch {arch.name} "
          f"--src {arch.weights_file} --out {out_dir}")


def save_converted(out_dir: str | pathlib.Path, variables: dict[str, Any],
                   manifest: dict[str, Any]) -> pathlib.Path:
  """Writes the checkpoint and then the manifest (its presence marks completion)."""
  out_dir = pathlib.Path(out_dir).absolute()
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / MANIFEST).unlink(missing_ok=True)
  checkpointer = _checkpointer()
  checkpointer.save(out_dir / CHECKPOINT, jax.device_get(variables), force=True)
  checkpointer.wait_until_finished()
  (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
  return out_dir


def resolve_weights_dir(arch: registry.Arch, weights_dir: str | pathlib.Path) -> pathlib.Path:
  """Accepts the converted directory itself or a parent holding `<arch>/`."""
  weights_dir = pathlib.Path(weights_dir).absolute()
  for candidate in (weights_dir, weights_dir / arch.name):
    if (candidate / MANIFEST).is_file():
      return candidate
  raise FileNotFoundError(
      f"No converted {arch.name} weights in {weights_dir} (looked for {MANIFEST} there "
      f"and in {weights_dir / arch.name}). Download {arch.weights_url} and convert it "
      f"once: {convert_command(arch, weights_dir / arch.name)}")


def load_converted(arch: str | registry.Arch,
                   weights_dir: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
  """Returns (variables as numpy, manifest) of a converted directory."""
  arch = registry.get_arch(arch) if isinstance(arch, str) else arch
  path = resolve_weights_dir(arch, weights_dir)
  manifest = json.loads((path / MANIFEST).read_text())
  if manifest.get("arch") != arch.name:
    raise ValueError(
        f"{path / MANIFEST}: these weights are for {manifest.get('arch')!r}, not "
        f"{arch.name!r}. Point weights_dir at the {arch.name} conversion, or convert it: "
        f"{convert_command(arch, path.parent / arch.name)}")
  shapes = registry.variable_shapes(arch, manifest["num_classes"])
  target = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), shapes)
  variables = _checkpointer().restore(path / CHECKPOINT, target)
  return dict(variables), manifest


def new_head(rng: jax.Array, fan_in: int, num_classes: int) -> dict[str, jax.Array]:
  """Parameters of a fresh classifier, initialised like torch's nn.Linear."""
  dense = layers.head(num_classes, fan_in)
  return dense.init(rng, jnp.zeros((1, fan_in), jnp.float32))["params"]


def _head_fan_in(arch: registry.Arch) -> int:
  """The classifier's input width (also for converted files without a head)."""
  return int(registry.variable_shapes(arch, 1)["params"]["head"]["kernel"].shape[0])


def load_pretrained(arch: str | registry.Arch, weights_dir: str | pathlib.Path,
                    num_classes: int, *, rng: jax.Array | int = 0,
                    dtype: Any = jnp.float32,
                    param_dtype: Any = jnp.float32) -> tuple[nn.Module, dict[str, Any]]:
  """The model for `num_classes` and its variables: ImageNet backbone, new head.

  The head is replaced by a randomly initialised Dense layer (the paper's
  setting, section 3.5), drawn from `rng`.
  """
  arch = registry.get_arch(arch) if isinstance(arch, str) else arch
  variables, _ = load_converted(arch, weights_dir)
  rng = jax.random.key(rng) if isinstance(rng, int) else rng
  params = dict(variables["params"])
  params["head"] = new_head(rng, _head_fan_in(arch), num_classes)
  variables = {"params": params, "batch_stats": variables["batch_stats"]}
  variables = jax.tree_util.tree_map(
      lambda x: jnp.asarray(x, param_dtype if np.issubdtype(x.dtype, np.floating) else None),
      variables)
  # Running statistics stay float32 whatever the parameter dtype.
  variables["batch_stats"] = jax.tree_util.tree_map(
      lambda x: x.astype(jnp.float32), variables["batch_stats"])
  return arch.build(num_classes, dtype=dtype, param_dtype=param_dtype), variables
