"""Strategies that train a part of the pretrained network, plus the head.

bitfit    (Ben Zaken et al. 2022) every bias and every BatchNorm scale and
          shift, plus the whole head; kernels stay bitwise as loaded. On
          ConvNeXt, which has no BatchNorm, the normalisation scales and
          shifts are its LayerNorms'; its layer scales stay frozen. All
          modules are differentiated (a bias's gradient needs the backward
          pass through the whole network); the kernels' gradients are
          replaced by zeros before Adam, which holds no state for them.
surgical  (Lee et al. 2023) one block of the architecture, plus the head; the
          rest frozen (a plan). 'first' is the paper's choice for input-level
          shifts, 'last' for output-level ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from ftjax.models.registry import Arch
from ftjax.strategies import schedules, transforms
from ftjax.strategies.base import Built, Definition, SharedOptions, option
from ftjax.strategies.partition import HEAD

Params = Mapping[str, Any]
# flax's names of a bias and of a normalisation layer's affine scale (the
# models have no other 'scale'); BatchNorm's shift is its 'bias'.
BITFIT_LEAVES = frozenset({"bias", "scale"})


def _names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", k)) for k in path)


def bitfit_mask(params: Params) -> Any:
  """True for what BitFit trains: biases, normalisation scales, the whole head."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: _names(p)[0] == HEAD or _names(p)[-1] in BITFIT_LEAVES, dict(params))


def zero_unselected(mask) -> optax.GradientTransformation:
  """Zeros the updates where `mask(updates)` is False (set_to_zero on them)."""

  def update_fn(updates, state, params=None):
    del params
    return jax.tree_util.tree_map(lambda u, keep: u if keep else jnp.zeros_like(u),
                                  updates, mask(updates)), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _bitfit(arch: Arch, options: SharedOptions) -> Built:
  def transform(learning_rate):
    # A zero update leaves a kernel bitwise unchanged (w + -0.0 = w after
    # the learning rate's sign), and XLA drops its dead gradient.
    return optax.chain(
        zero_unselected(bitfit_mask),
        optax.masked(transforms.gated(optax.scale_by_adam(eps=options.adam_eps)),
                     bitfit_mask),
        optax.scale_by_learning_rate(learning_rate))
  return Built(transform, schedules.single(schedules.all_modules(arch)))


@dataclasses.dataclass(frozen=True)
class SurgicalOptions(SharedOptions):
  surgical_block: str = option("first", "surgical: the block trained with the head: "
                               "a block name of the arch, 'first' or 'last'")


def surgical_blocks(arch: Arch) -> dict[str, frozenset[str]]:
  """Block name -> its modules other than the head, for the blocks that have some."""
  out = {b.name: frozenset(b.modules) - {HEAD} for b in arch.blocks}
  return {name: modules for name, modules in out.items() if modules}


def surgical_modules(arch: Arch, block: str) -> frozenset[str]:
  """The modules surgical fine-tuning trains: `block`'s and the head."""
  blocks = surgical_blocks(arch)
  names = list(blocks)
  chosen = {"first": names[0], "last": names[-1]}.get(block, block)
  if chosen not in blocks:
    raise ValueError(f"surgical_block {block!r} is not a block of {arch.name}; valid: "
                     f"'first', 'last', {', '.join(repr(n) for n in names)}.")
  return blocks[chosen] | {HEAD}


def _surgical(arch: Arch, options: SurgicalOptions) -> Built:
  plan = schedules.single(surgical_modules(arch, options.surgical_block))
  return Built(lambda learning_rate: transforms.adam(learning_rate, options.adam_eps), plan)


DEFINITIONS = (
    Definition("bitfit", "biases and normalisation scales / shifts (BatchNorm; "
               "LayerNorm on ConvNeXt), plus the head; Adam",
               SharedOptions, _bitfit),
    Definition("surgical", "one block (`surgical_block`, default the first) plus the "
               "head; Adam", SurgicalOptions, _surgical),
)
