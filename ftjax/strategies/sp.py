"""L1-SP and L2-SP: Adam on the loss plus a pull towards the starting point.

penalty = alpha * ||w_s - w0_s|| + beta * ||w_head|| (the paper's eq. 1 and 3),
||.||_1 for l1_sp and ||.||_2^2 for l2_sp. w_s are the pretrained modules'
parameters selected by `apply_to`, w_head *every* parameter of the new
classifier (kernel and bias, as in the paper's Omega and tllib's L2-SP), pulled
to 0. The penalty is written once (`sp_penalty`); the transform adds its
gradient, taken by autodiff, to the loss gradient.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ftjax.strategies import schedules, transforms
from ftjax.strategies.base import Built, Definition, SharedOptions, option
from ftjax.strategies.partition import HEAD, kernel_mask

Params = Mapping[str, Any]
# Which pretrained leaves get alpha: a name, or a mask (a bool tree like the
# params, or a callable params -> such a tree), as optax masks are given.
Mask = str | Any | Callable[[Params], Any]


@dataclasses.dataclass(frozen=True)
class Options(SharedOptions):
  alpha: float = option(0.01, "SP: weight of ||w - w0|| on the pretrained layers",
                        minimum=0.0)
  beta: float = option(0.01, "SP: weight of ||w_head|| (every head parameter)",
                       minimum=0.0)
  sp_apply_to: str = option("kernels", "SP: pretrained parameters under alpha: "
                            "'kernels' (conv / dense) or 'all'", choices=("kernels", "all"))


def _alpha_mask(params: Params, apply_to: Mask) -> Any:
  if apply_to == "kernels":
    return kernel_mask(params)
  if apply_to == "all":
    return jax.tree_util.tree_map(lambda _: True, dict(params))
  if isinstance(apply_to, str):
    raise ValueError(f"apply_to must be 'kernels', 'all' or a mask, got {apply_to!r}.")
  return apply_to(params) if callable(apply_to) else apply_to


def sp_penalty(params: Params, w0: Params, alpha: float, beta: float, norm: str = "l1",
               apply_to: Mask = "kernels", head: str = HEAD) -> jax.Array:
  """The SP penalty of the modules in `params` (any subset of w0's modules)."""
  if norm not in ("l1", "l2"):
    raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}.")
  mask = _alpha_mask(params, apply_to)
  total = jnp.zeros((), jnp.float32)
  for name, block in params.items():
    for p, ref, penalised in zip(jax.tree_util.tree_leaves(block),
                                 jax.tree_util.tree_leaves(w0[name]),
                                 jax.tree_util.tree_leaves(mask[name])):
      if name == head:  # new: every parameter pulled to 0, whatever apply_to
        coeff, diff = beta, p.astype(jnp.float32)
      elif penalised:
        coeff, diff = alpha, (p - ref).astype(jnp.float32)
      else:
        continue
      total += coeff * (_l1(diff) if norm == "l1" else jnp.sum(diff * diff))
  return total


def _l1(diff: jax.Array) -> jax.Array:
  """sum |diff|, whose gradient is sign(diff): 0 at diff = 0, as torch's abs (jax's
  abs has gradient 1 there, which would push every weight off w0 on the first step)."""
  return jnp.sum(diff * jax.lax.stop_gradient(jnp.sign(diff)))


class SPState(NamedTuple):
  w0: Any  # the starting point (pretrained weights), full params tree


def sp_regularizer(w0: Params | None = None, alpha: float = 0.01, beta: float = 0.01,
                   norm: str = "l1", apply_to: Mask = "kernels",
                   head: str = HEAD) -> optax.GradientTransformation:
  """Adds the gradient of `sp_penalty` to the updates (the L1 subgradient is 0 at
  w = w0). `w0=None` takes the parameters passed to `init` as the starting point.
  Put it before the optimizer in an `optax.chain`: it must see raw gradients."""
  if norm not in ("l1", "l2"):
    raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}.")
  if isinstance(apply_to, str) and apply_to not in ("kernels", "all"):
    raise ValueError(f"apply_to must be 'kernels' or 'all', got {apply_to!r}.")

  def init_fn(params):
    start = params if w0 is None else w0
    # A copy: the state must not alias the params (both are donated).
    return SPState(jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), dict(start)))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("sp_regularizer needs params.")
    trained = {name: params[name] for name in updates}
    grads = jax.grad(lambda p: sp_penalty(p, state.w0, alpha, beta, norm, apply_to, head))(
        trained)
    out = jax.tree_util.tree_map(lambda u, g: u + g.astype(u.dtype), dict(updates), grads)
    return out, state

  return optax.GradientTransformation(init_fn, update_fn)


def _build(norm: str):
  def build(arch, options: Options) -> Built:
    def transform(learning_rate):
      return optax.chain(
          sp_regularizer(None, options.alpha, options.beta, norm, options.sp_apply_to),
          transforms.adam(learning_rate, options.adam_eps))
    return Built(transform, schedules.single(schedules.all_modules(arch)))
  return build


DEFINITIONS = (
    Definition("l1_sp", "all modules; Adam on loss + L1 pull to the pretrained weights",
               Options, _build("l1")),
    Definition("l2_sp", "all modules; Adam on loss + L2 pull to the pretrained weights",
               Options, _build("l2")),
)
