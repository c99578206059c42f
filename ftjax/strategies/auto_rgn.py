"""Auto-RGN (Lee et al. 2023 via the paper): Adam with per-tensor learning rates.

At every epoch start the relative gradient norm ||g|| / ||theta|| of every
tensor is averaged over the epoch's first `rgn_batches` minibatches (paper
eq. 4); each tensor's learning rate becomes lr * RGN / max RGN, and Adam is
re-created (moments reset) with those rates. BatchNorm tensors are left out
of the optimizer (rgn_bn='exclude', as the reference code does by type) or get
their own RGN ('include'). On an architecture without BatchNorm (ConvNeXt,
whose LayerNorm tensors get their own RGN as every other tensor; VGG without
BN) there is nothing to exclude, and 'include' is refused as an option that
cannot apply. rgn_every='step' recomputes the weights from every
batch's own gradients instead (Adam still re-created each epoch).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from ftjax.strategies import schedules, transforms
from ftjax.strategies.base import Built, Definition, SharedOptions, option
from ftjax.strategies.partition import bn_mask

Params = Mapping[str, Any]
# (trainable module names) -> grad_fn(params, batch_stats, batch, key) -> (aux, grads)
GradFnOf = Callable[[frozenset], Callable]


@dataclasses.dataclass(frozen=True)
class Options(SharedOptions):
  rgn_batches: int = option(5, "Auto-RGN: minibatches averaged at each epoch start",
                            minimum=1)
  rgn_every: str = option("epoch", "Auto-RGN: weights recomputed every 'epoch' or 'step'",
                          choices=("epoch", "step"))
  rgn_bn: str = option("exclude", "Auto-RGN: BatchNorm params 'exclude'd from the "
                       "optimizer or 'include'd", choices=("exclude", "include"))




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
    return transforms.scale_updates(updates, state.rgn_weights), state

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


# ----------------------------------------------------------------------- probe


def _probe_parts(grad_fn_of: GradFnOf, *, rgn_bn: str):
  """(ratios(state, batch, key), finish(total, state, count)) of the probe."""
  if rgn_bn not in ("exclude", "include"):
    raise ValueError(f"rgn_bn must be 'exclude' or 'include', got {rgn_bn!r}.")

  def ratios(state, batch, key):
    grad_fn = grad_fn_of(frozenset(state.params))
    _, grads = grad_fn(state.params, state.batch_stats, batch, key)
    return rgn_ratios(grads, state.params)

  def finish(total, state, count: int):
    mean = jax.tree_util.tree_map(lambda t: t / count, total)
    mask = bn_mask(state.params, state.batch_stats) if rgn_bn == "exclude" else None
    return rgn_normalize(mean, state.params, mask)

  return ratios, finish


def _run_probe(ratios, add, finish, state, batches, rng):
  """Sums `ratios` over the leading (minibatch) axis of `batches`, then `finish`es."""
  count = jax.tree_util.tree_leaves(batches)[0].shape[0]
  keys = jax.random.split(rng, count)
  total = None
  for i in range(count):
    batch = jax.tree_util.tree_map(lambda x, i=i: x[i], batches)
    value = ratios(state, batch, keys[i])
    total = value if total is None else add(total, value)
  return finish(total, state, count)


def _tree_add(a: Any, b: Any) -> Any:
  return jax.tree_util.tree_map(jnp.add, a, b)


def probe_fn(grad_fn_of: GradFnOf, *, rgn_bn: str = "exclude"):
  """The probe of `make_probe` as one traceable `(state, batches, rng) -> weights`
  (for `jax.vmap` over runs). The minibatch loop is unrolled: XLA's CPU backend
  runs convolutions inside a while loop several times slower."""
  ratios, finish = _probe_parts(grad_fn_of, rgn_bn=rgn_bn)
  return functools.partial(_run_probe, ratios, _tree_add, finish)


def make_probe(grad_fn_of: GradFnOf, *, rgn_bn: str = "exclude",
               compiler_options: dict[str, Any] | None = None):
  """A `(state, batches, rng=None) -> weights` (paper eq. 4).

  grad_fn_of: `(trainable names) -> grad_fn`, the train step's own gradient
  (`ftjax.step.grad_fn_factory`), so the probe sees the loss, BatchNorm mode and
  compute dtype the run trains with.

  batches: a batch dict whose arrays have a leading axis of `rgn_batches`
  minibatches (the epoch's first ones). For each minibatch the gradient of
  the loss w.r.t. every parameter is taken at the current params (train-mode
  BatchNorm, running statistics left unchanged), giving per-tensor
  ||g_b|| / ||theta||; RGN is the mean over minibatches, and the weights are
  RGN / max RGN. BatchNorm tensors get weight 0 (frozen) with
  rgn_bn='exclude', or their own RGN with 'include'. Returns the full
  weights tree (log it: it is the per-layer RGN plot). One jitted gradient
  call per minibatch (compiled once), summed on the device: no host round trip.
  """
  ratios, finish = _probe_parts(grad_fn_of, rgn_bn=rgn_bn)
  probe = functools.partial(_run_probe, jax.jit(ratios, compiler_options=compiler_options),
                            jax.jit(_tree_add), jax.jit(finish, static_argnums=(2,)))

  def call(state, batches, rng=None):
    return probe(state, batches, jax.random.key(0) if rng is None else rng)

  return call


def start_epoch(state, transform: optax.GradientTransformation, weights: Any):
  """The epoch start: Adam re-created at the current params (moments reset, the
  run's learning rate kept) with the new weights (None: keep them at 1)."""
  opt_state = transforms.fresh_state(transform, state.params, state.opt_state)
  if weights is not None:
    opt_state = set_rgn_weights(opt_state, weights)
  return state.replace(opt_state=opt_state)


@dataclasses.dataclass(frozen=True)
class EpochStart:
  """The `base.EpochStart` hook: probe (unless rgn_every='step'), then a fresh Adam."""
  batches: int  # 0: no probe
  bn: str
  log_name: str = "rgn"

  def _start(self, probe, strategy):
    def start(state, batches, key):
      weights = None if probe is None else probe(state, batches, key)
      return start_epoch(state, strategy.transform, weights), weights
    return start

  def jitted(self, grad_fn_of: GradFnOf, strategy):
    probe = self.batches and make_probe(grad_fn_of, rgn_bn=self.bn)
    return self._start(probe or None, strategy)

  def traceable(self, grad_fn_of: GradFnOf, strategy):
    probe = self.batches and probe_fn(grad_fn_of, rgn_bn=self.bn)
    return self._start(probe or None, strategy)


def _per_step_weights(bn: str):
  """rgn_every='step': the weights from this batch's gradients, before the update."""
  def before_update(grads, opt_state, train_params, batch_stats):
    mask = bn_mask(train_params, batch_stats) if bn == "exclude" else None
    return set_rgn_weights(opt_state, rgn_weights([grads], train_params, mask))
  return before_update


def _build(arch, options: Options) -> Built:
  def transform(learning_rate):
    return optax.chain(transforms.adam(learning_rate, options.adam_eps), rgn_scale())
  per_step = options.rgn_every == "step"
  return Built(transform, schedules.single(schedules.all_modules(arch)),
               epoch_start=EpochStart(0 if per_step else int(options.rgn_batches),
                                      options.rgn_bn),
               before_update=_per_step_weights(options.rgn_bn) if per_step else None)


DEFINITIONS = (
    Definition("auto_rgn", "all modules; Adam with per-tensor lr x RGN / max RGN, "
               "re-created every epoch", Options, _build),
)
