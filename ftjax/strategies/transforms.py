"""optax transforms of the strategies: block gate, SP penalties, RGN scaling.

Every transform here works on params dicts keyed by top-level module name and
accepts updates for any *subset* of those names. The train step only
differentiates the trainable modules of its phase and passes just their
gradients, so a frozen module never reaches the optimizer: its parameters and
its optimizer state stay bitwise unchanged.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from ftjax.strategies.partition import HEAD, kernel_mask

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


def reset_blocks(state: GatedState, inner: optax.GradientTransformation, params: Params,
                 names: Sequence[str]) -> GatedState:
  """A fresh inner state for `names` (e.g. to re-create Adam for some blocks)."""
  blocks = dict(state.blocks)
  for name in names:
    blocks[name] = inner.init(params[name])
  return GatedState(blocks)


# ------------------------------------------------------------------------ SP


class SPState(NamedTuple):
  w0: Any  # the starting point (pretrained weights), full params tree


def _sp_terms(name: str, block: Any, w0: Params, alpha: float, beta: float, apply_to: str,
              head: str) -> tuple[float, Any, Any]:
  """(coefficient, reference point, mask of penalised leaves) of one module.

  The head is new: beta pulls all its parameters to 0, whatever apply_to. A
  pretrained module: alpha pulls the apply_to selection to its w0.
  """
  if name == head:
    return (beta, jax.tree_util.tree_map(jnp.zeros_like, block),
            jax.tree_util.tree_map(lambda _: True, block))
  mask = (kernel_mask(block) if apply_to == "kernels"
          else jax.tree_util.tree_map(lambda _: True, block))
  return alpha, w0[name], mask


def sp_regularizer(w0: Params | None = None, alpha: float = 0.01, beta: float = 0.01,
                   norm: str = "l1", apply_to: str = "kernels",
                   head: str = HEAD) -> optax.GradientTransformation:
  """Adds the gradient of the SP penalty (paper eq. 1 and 3) to the updates.

  penalty = alpha * ||w_s - w0_s|| + beta * ||w_head||, with ||.||_1 for
  norm='l1' (subgradient alpha * sign(w - w0), 0 at w = w0) and ||.||_2^2 for
  norm='l2' (gradient 2 * alpha * (w - w0)). w_s are the pretrained modules'
  parameters, w_head *every* parameter of the new classifier (kernel and bias,
  as in the paper's Omega and tllib's L2-SP). apply_to selects the pretrained
  parameters of the alpha term: 'kernels' conv and dense kernels only, 'all'
  every one (BatchNorm and biases too).
  `w0=None` takes the parameters passed to `init` as the starting point. Put
  it before the optimizer in an `optax.chain`: it must see raw gradients.
  """
  if norm not in ("l1", "l2"):
    raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}.")
  if apply_to not in ("kernels", "all"):
    raise ValueError(f"apply_to must be 'kernels' or 'all', got {apply_to!r}.")

  def init_fn(params):
    start = params if w0 is None else w0
    # A copy: the state must not alias the params (both are donated).
    return SPState(jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), dict(start)))

  def penalty_grad(p, ref, coeff):
    diff = p - ref
    return coeff * jnp.sign(diff) if norm == "l1" else 2.0 * coeff * diff

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("sp_regularizer needs params.")
    out = {}
    for name, block in updates.items():
      coeff, ref, mask = _sp_terms(name, params[name], state.w0, alpha, beta, apply_to, head)
      out[name] = jax.tree_util.tree_map(
          lambda g, p, r, m: g + penalty_grad(p, r, coeff).astype(g.dtype) if m else g,
          block, params[name], ref, mask)
    return out, state

  return optax.GradientTransformation(init_fn, update_fn)


def sp_penalty(params: Params, w0: Params, alpha: float, beta: float, norm: str = "l1",
               apply_to: str = "kernels", head: str = HEAD) -> jax.Array:
  """The SP penalty value itself (for logging)."""
  total = jnp.zeros((), jnp.float32)
  for name, block in params.items():
    coeff, ref, mask = _sp_terms(name, block, w0, alpha, beta, apply_to, head)
    for p, r, m in zip(jax.tree_util.tree_leaves(block), jax.tree_util.tree_leaves(ref),
                       jax.tree_util.tree_leaves(mask)):
      if m:
        d = (p - r).astype(jnp.float32)
        total += coeff * (jnp.sum(jnp.abs(d)) if norm == "l1" else jnp.sum(d * d))
  return total


# ----------------------------------------------------------------------- RGN


class RgnState(NamedTuple):
  rgn_weights: Any  # per-tensor lr multipliers, full params tree of f32 scalars


def rgn_scale() -> optax.GradientTransformation:
  """Multiplies each tensor's update by its weight held in the state.

  Placed after Adam in an `optax.chain`, this is Adam with lr * weight per
  tensor. The weights start at 1; `set_rgn_weights` writes new ones.
  """

  def init_fn(params):
    return RgnState(jax.tree_util.tree_map(lambda _: jnp.ones((), jnp.float32),
                                           dict(params)))

  def update_fn(updates, state, params=None):
    del params
    out = {name: jax.tree_util.tree_map(lambda u, w: u * w.astype(u.dtype), block,
                                        state.rgn_weights[name])
           for name, block in updates.items()}
    return out, state

  return optax.GradientTransformation(init_fn, update_fn)


def set_rgn_weights(opt_state: Any, weights: Params) -> Any:
  """opt_state with the RgnState weights replaced (missing modules keep theirs)."""
  current = optax.tree_utils.tree_get(opt_state, "rgn_weights")
  if current is None:
    raise ValueError("This optimizer state has no rgn_scale.")
  merged = {**current, **weights}
  return optax.tree_utils.tree_set(opt_state, rgn_weights=merged)


def rgn_ratios(grads: Params, params: Params) -> Any:
  """Per-tensor ||g||_2 / ||theta||_2 (paper eq. 4) for one batch's gradients.

  Tensors with ||theta|| = 0 get ratio 0 here and weight 1 in `rgn_normalize`
  (the ratio is undefined for them).
  """

  def ratio(g, p):
    gn = jnp.linalg.norm(g.astype(jnp.float32).ravel())
    pn = jnp.linalg.norm(p.astype(jnp.float32).ravel())
    return jnp.where(pn > 0, gn / jnp.where(pn > 0, pn, 1.0), 0.0)

  return jax.tree_util.tree_map(ratio, dict(grads), {k: params[k] for k in grads})


def rgn_normalize(mean_ratios: Params, params: Params, bn_mask: Params | None) -> Any:
  """weights = RGN / max(RGN) over the non-excluded tensors; excluded -> 0.

  `bn_mask` True marks the tensors left out of the optimizer (BatchNorm);
  None excludes nothing. Zero-norm tensors get weight 1.
  """
  keys = list(mean_ratios)
  ratios = {k: mean_ratios[k] for k in keys}
  mask = ({k: bn_mask[k] for k in keys} if bn_mask is not None
          else jax.tree_util.tree_map(lambda _: False, ratios))
  zero = jax.tree_util.tree_map(
      lambda p: jnp.linalg.norm(p.astype(jnp.float32).ravel()) == 0,
      {k: params[k] for k in keys})
  leaves = [jnp.where(m | z, -jnp.inf, r) for r, m, z in zip(
      jax.tree_util.tree_leaves(ratios), jax.tree_util.tree_leaves(mask),
      jax.tree_util.tree_leaves(zero))]
  top = jnp.max(jnp.stack(leaves)) if leaves else jnp.ones(())
  top = jnp.where(jnp.isfinite(top) & (top > 0), top, 1.0)
  return jax.tree_util.tree_map(
      lambda r, m, z: jnp.where(m, 0.0, jnp.where(z, 1.0, r / top)).astype(jnp.float32),
      ratios, mask, zero)


def rgn_weights(grads_list: Sequence[Params], params: Params,
                bn_mask: Params | None) -> Any:
  """Auto-RGN weights: mean over batches of per-batch ratios, over the max.

  Pure and jit-friendly. `grads_list` holds one gradient tree per probe batch
  (any subset of top-level modules, the same in each).
  """
  if not grads_list:
    raise ValueError("rgn_weights needs at least one batch of gradients.")
  per_batch = [rgn_ratios(g, params) for g in grads_list]
  mean = jax.tree_util.tree_map(lambda *r: sum(r) / len(r), *per_batch)
  return rgn_normalize(mean, params, bn_mask)
