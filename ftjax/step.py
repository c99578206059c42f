"""The jit-compiled train step, its gradient (which epoch-start hooks such as
Auto-RGN's probe reuse) and the eval step.

The train step differentiates only the trainable modules of the current
phase: params are split by top-level name, and `jax.value_and_grad` sees only
the trainable dict while the frozen one enters as a plain value. LP therefore
has no backward pass through the backbone. The step is compiled once per
phase (the trainable set is static) and donates the state's buffers.

BatchNorm:
  bn_mode='train'  every BN layer normalises with batch statistics and all
                   running statistics update, frozen modules included
                   (PyTorch `model.train()`).
  bn_mode='frozen' BN layers inside frozen modules use and keep their running
                   statistics (PyTorch `model.train()` plus `.eval()` on the
                   frozen modules); trainable modules behave as in 'train'.
                   Implemented by intercepting BatchNorm calls by module path.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ftjax.data import preprocess
from ftjax.models import layers
from ftjax.strategies import partition
from ftjax.strategies.base import Strategy

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """step count, float32 params, BN running stats, optimizer state.

  Strategy-specific data lives in opt_state: the learning rate
  (hyperparams), SP's w0 (SPState), Auto-RGN's per-tensor weights (RgnState).
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def _transform(strategy: Strategy | optax.GradientTransformation):
  return strategy.transform if isinstance(strategy, Strategy) else strategy


def create_train_state(strategy: Strategy | optax.GradientTransformation,
                       variables: dict[str, Any]) -> TrainState:
  """A fresh state; the optimizer (and SP's w0) start from `variables['params']`."""
  # Copies: the step donates the state, which must not delete the caller's arrays.
  copy = functools.partial(jnp.array, copy=True)
  params = jax.tree_util.tree_map(copy, dict(variables["params"]))
  batch_stats = jax.tree_util.tree_map(copy, dict(variables.get("batch_stats", {})))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=_transform(strategy).init(params))


# ---------------------------------------------------------------- losses


def softmax_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def sigmoid_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """BCE, mean over batch and classes (torch BCEWithLogitsLoss)."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype)))


LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "softmax": softmax_loss, "sigmoid": sigmoid_loss}


def _loss(name: str):
  if name not in LOSSES:
    raise ValueError(f"loss must be one of {tuple(LOSSES)}, got {name!r}.")
  return LOSSES[name]


# ---------------------------------------------------------------- forward


def _frozen_bn_interceptor(trainable: frozenset[str]):
  """Makes BatchNorm layers outside `trainable` use (and keep) running stats."""

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if (isinstance(module, layers.BatchNorm) and context.method_name == "__call__"
        and module.path and module.path[0] not in trainable):
      if len(args) >= 2:
        args = (args[0], True) + tuple(args[2:])
      else:
        kwargs = {**kwargs, "use_running_average": True}
    return next_fun(*args, **kwargs)

  return interceptor


def _cast(params, bn, dtype):
  return jax.tree_util.tree_map(
      lambda p, is_bn: p if is_bn or not jnp.issubdtype(p.dtype, jnp.floating)
      else p.astype(dtype), params, bn)


def _head_input_interceptor(captured: list):
  """Records the input of the top-level 'head' module (the backbone's features)."""

  def interceptor(next_fun, args, kwargs, context):
    if context.module.path == (partition.HEAD,) and context.method_name == "__call__":
      captured.append(args[0])
    return next_fun(*args, **kwargs)

  return interceptor


def make_grad_fn(model: nn.Module, trainable: Iterable[str], *, loss: str = "softmax",
                 bn_mode: str = "train", compute_dtype: Any = None,
                 feature_penalty: Callable[[jax.Array], jax.Array] | None = None):
  """(params, batch_stats, batch, rng) -> ((loss, (logits, new_batch_stats)), grads).

  `grads` covers the trainable top-level modules only. `feature_penalty`
  (features -> scalar) is added to the loss, on the head's float32 input
  features (BSS). The returned loss is the objective, penalty included. Not
  jitted.
  """
  trainable = frozenset(trainable)
  loss_fn = _loss(loss)
  if bn_mode not in ("train", "frozen"):
    raise ValueError(f"bn_mode must be 'train' or 'frozen', got {bn_mode!r}.")
  if compute_dtype is not None and hasattr(model, "dtype"):
    model = model.clone(dtype=compute_dtype)

  def forward(train_params, frozen_params, batch_stats, batch, rng):
    params = partition.merge(train_params, frozen_params)
    images = batch["image"]
    if images.dtype == jnp.uint8:
      # Crops travel to the device as uint8 (4x less traffic) and are normalised here.
      images = preprocess.normalize_jnp(images)
    if compute_dtype is not None:
      params = _cast(params, partition.bn_mask(params, batch_stats), compute_dtype)
      images = images.astype(compute_dtype)
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    apply = functools.partial(model.apply, variables, images, train=True,
                              mutable=["batch_stats"], rngs={"dropout": rng})
    captured: list = []
    with contextlib.ExitStack() as stack:
      if bn_mode == "frozen":
        stack.enter_context(nn.intercept_methods(_frozen_bn_interceptor(trainable)))
      if feature_penalty is not None:
        stack.enter_context(nn.intercept_methods(_head_input_interceptor(captured)))
      logits, new_vars = apply()
    logits = logits.astype(jnp.float32)
    value = loss_fn(logits, batch["label"])
    if feature_penalty is not None:
      value = value + feature_penalty(captured[-1].astype(jnp.float32))
    return value, (logits, dict(new_vars).get("batch_stats", batch_stats))

  grad = jax.value_and_grad(forward, has_aux=True)

  def grad_fn(params, batch_stats, batch, rng):
    train_params, frozen_params = partition.split(params, trainable)
    return grad(train_params, frozen_params, batch_stats, batch, rng)

  return grad_fn


# ---------------------------------------------------------------- train step


def grad_fn_factory(model: nn.Module, *, loss: str = "softmax", bn_mode: str = "train",
                    compute_dtype: Any = None) -> Callable[[Iterable[str]], Callable]:
  """`(trainable names) -> make_grad_fn(...)` with the run's loss, BatchNorm mode and
  dtype fixed: what an epoch-start hook (Auto-RGN's probe) is given to differentiate."""
  return functools.partial(make_grad_fn, model, loss=loss, bn_mode=bn_mode,
                           compute_dtype=compute_dtype)


def make_step_fn(model: nn.Module, strategy: Strategy | optax.GradientTransformation,
                 trainable: Iterable[str], *, loss: str = "softmax",
                 bn_mode: str | None = None, compute_dtype: Any = None):
  """The un-jitted `(state, batch, rng) -> (state, metrics)` of one phase
  (`make_train_step` documents the arguments)."""
  trainable = frozenset(trainable)
  tx = _transform(strategy)
  hooks = strategy if isinstance(strategy, Strategy) else None
  before_update = hooks.before_update if hooks else None
  bn_mode = bn_mode or (hooks.bn_mode if hooks else "train")
  grad_fn = make_grad_fn(model, trainable, loss=loss, bn_mode=bn_mode,
                         compute_dtype=compute_dtype,
                         feature_penalty=hooks.feature_penalty if hooks else None)

  def step(state: TrainState, batch: Batch, rng: jax.Array):
    (value, (logits, batch_stats)), grads = grad_fn(
        state.params, state.batch_stats, batch, rng)
    train_params, frozen_params = partition.split(state.params, trainable)
    opt_state = state.opt_state
    metrics = {"loss": value}
    if before_update is not None:
      opt_state = before_update(grads, opt_state, train_params, state.batch_stats)
    updates, opt_state = tx.update(grads, opt_state, train_params)
    train_params = optax.apply_updates(train_params, updates)
    if loss == "softmax":
      metrics["accuracy"] = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    new_state = TrainState(step=state.step + 1,
                           params=partition.merge(train_params, frozen_params),
                           batch_stats=batch_stats, opt_state=opt_state)
    return new_state, metrics

  return step


def make_train_step(model: nn.Module, strategy: Strategy | optax.GradientTransformation,
                    trainable: Iterable[str], *, loss: str = "softmax",
                    bn_mode: str | None = None, compute_dtype: Any = None,
                    compiler_options: dict[str, Any] | None = None,
                    shardings: tuple[Any, Any] | None = None):
  """A jitted `(state, batch, rng) -> (state, metrics)` for one phase.

  batch: {'image': NHWC float32 normalised, or uint8 crops that the step
  normalises with ImageNet's mean and std, 'label': int32 [B] (softmax) or
  float32 [B, C] multi-hot (sigmoid)}. rng is the dropout key of this step.
  bn_mode defaults to the strategy's; the strategy's hooks before_update and
  feature_penalty run inside the step. compute_dtype (e.g. jnp.bfloat16) runs the model in that dtype with
  float32 master params (BatchNorm params stay float32). The state argument
  is donated. compiler_options go to `jax.jit` (e.g. a lower XLA CPU
  optimisation level for short test runs). shardings=(replicated, batch)
  (`ftjax.distributed.DataParallel.shardings()`) pins the state, rng and
  metrics replicated and the batch split over the mesh (data parallelism).
  """
  fn = make_step_fn(model, strategy, trainable, loss=loss, bn_mode=bn_mode,
                    compute_dtype=compute_dtype)

  def step(state: TrainState, batch: Batch, rng: jax.Array):
    return fn(state, batch, rng)

  if shardings is None:
    return jax.jit(step, donate_argnums=(0,), compiler_options=compiler_options)
  replicated, batch = shardings
  return jax.jit(step, donate_argnums=(0,), compiler_options=compiler_options,
                 in_shardings=(replicated, batch, replicated),
                 out_shardings=(replicated, replicated))


# ---------------------------------------------------------------- eval


@functools.lru_cache(maxsize=32)
def _eval_fn(model: nn.Module):
  return jax.jit(lambda variables, images: model.apply(variables, images, train=False))


def eval_step(model: nn.Module, variables: dict[str, Any], images: jax.Array) -> jax.Array:
  """float32 logits in eval mode (running BN statistics, no dropout)."""
  variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats") and v}
  return _eval_fn(model)(variables, images)
