"""The optax transforms every strategy shares: the per-module gate and gated Adam.

(A strategy's own transforms live in its module: SP's in sp.py, Auto-RGN's in
auto_rgn.py.) Every transform works on params dicts keyed by top-level module name and
accepts updates for any *subset* of those names. The train step only
differentiates the trainable modules of its phase and passes just their
gradients, so a frozen module never reaches the optimizer: its parameters and
its optimizer state stay bitwise unchanged.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import optax

from ftjax.strategies.base import LR_NAME

Params = Mapping[str, Any]


# --------------------------------------------------------------------------- gate


class GatedState(NamedTuple):
  blocks: dict[str, Any]  # top-level module name -> the inner transform's state


def gated(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """Runs an independent copy of `inner` per top-level module, only when it trains.

  Modules absent from `updates` (frozen in the current phase) get no update
  and their state does not advance. For Adam this is PyTorch's semantics with
  `requires_grad=False` on frozen parameters: a module's moments and step
  count start on the first step it trains, so a block unfrozen at epoch k
  starts with a fresh Adam, and modules that keep training across a phase
  switch keep their moments. (A custom gate rather than
  `optax.multi_transform`: multi_transform needs the full tree at every step,
  which would force gradients, or zeros, for frozen modules.)
  """

  def init_fn(params):
    return GatedState({k: inner.init(v) for k, v in params.items()})

  def update_fn(updates, state, params=None):
    unknown = set(updates) - set(state.blocks)
    if unknown:
      raise ValueError(f"Updates for modules {sorted(unknown)} that the optimizer "
                       f"state does not know ({sorted(state.blocks)}).")
    blocks = dict(state.blocks)
    out = {}
    for name, block_updates in updates.items():
      block_params = None if params is None else params[name]
      out[name], blocks[name] = inner.update(block_updates, blocks[name], block_params)
    return out, GatedState(blocks)

  return optax.GradientTransformation(init_fn, update_fn)


def gated_adam(learning_rate: float, b1: float = 0.9, b2: float = 0.999,
               eps: float = 1e-8) -> optax.GradientTransformation:
  """Adam per top-level module, gated by the phase (torch.optim.Adam defaults)."""
  return gated(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


def adam(learning_rate: Any, eps: float = 1e-8) -> optax.GradientTransformation:
  """Gated Adam without its learning rate, then the learning rate: the same update
  as `gated_adam`, with the rate applied once to every module (so that it can be
  a hyper-parameter in the optimizer state)."""
  return optax.chain(gated(optax.scale_by_adam(b1=0.9, b2=0.999, eps=eps)),
                     optax.scale_by_learning_rate(learning_rate))


def fresh_state(transform: optax.GradientTransformation, params: Params,
                old_state: Any) -> Any:
  """`transform`'s initial state at `params`, keeping the old state's learning rate."""
  state = transform.init(params)
  lr = optax.tree_utils.tree_get(old_state, LR_NAME)
  return state if lr is None else optax.tree_utils.tree_set(state, **{LR_NAME: lr})


def scale_updates(updates: Params, scales: Params) -> dict[str, Any]:
  """Each tensor's update times its factor in `scales` (a full params-like tree of
  scalars; `updates` may hold any subset of its modules)."""
  return {name: jax.tree_util.tree_map(lambda u, s: u * s.astype(u.dtype), block,
                                       scales[name])
          for name, block in updates.items()}
