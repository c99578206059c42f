"""Cached backbone features for linear probing (LP).

In LP only the head trains. When the frozen part is deterministic (BatchNorm
on its running statistics: bn_mode='frozen', or an architecture without
BatchNorm) and the images are not augmented (center crop only), what reaches
the head is a fixed function of each image. Computing it once per split turns
an LP epoch into a loop of small matmuls, with the same result as the
ordinary LP step up to float32 rounding.

The cached point is the input of the head (the top-level 'head' module), or,
if the model has dropout, the input of its first active `nn.Dropout` layer
(VGG's classifier is fc1 -> ReLU -> Dropout -> fc2 -> ReLU -> Dropout before
the head: the cached point is relu(fc1(x))). Everything after it is replayed
by the model itself: the model runs on a dummy image with the cached activations
swapped in at that point, so the upstream convolutions are dead code that XLA
removes, and the dropout layers draw their masks from the same key, at the
same module path, as in the ordinary step. VGG's LP (PyTorch keeps dropout
active in the frozen classifier, `model.train()`) is therefore reproduced
draw for draw, at the cost of fc2 (4096 x 4096) per step.

The train loop uses it as:

  check_supported(arch, strategy, compute_dtype=config.compute_dtype)
  train_x, train_y = load_or_extract(directory, key, model, variables, source, ...)
  train_epoch = make_train_epoch(model, strategy, loss=loss_name, crop=config.crop)
  order = batch_order(len(source), config.batch_size, seed=config.seed, epoch=epoch,
                      num_workers=config.num_workers)
  state, losses = train_epoch(state, train_x, train_y, order, step_rng)
  val = evaluate(model, variables, val_x, val_y, multilabel=..., batch_size=...,
                 crop=config.crop)

The premise that each image is seen as one fixed array holds because the
training loader applies the same center crop as evaluation; a random
augmentation would break it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from ftjax import step
from ftjax.engine import evaluation
from ftjax import run as run_lib
from ftjax.data import pipeline
from ftjax.models import registry
from ftjax.strategies import partition
from ftjax.strategies.base import HOOKS
from ftjax.strategies.registry import Strategy

HEAD = partition.HEAD
_FLOAT32 = (None, "float32", jnp.float32, np.float32)


# ---------------------------------------------------------------- cache point


class _CachePoint:
  """Finds the cached point while the model runs: the first active Dropout, else the head.

  The same rule, applied online in the order modules are called, picks the
  same layer when features are extracted (eval mode) and when the rest of the
  model is replayed on them (train or eval mode).
  """

  def __init__(self):
    self.path: tuple[str, ...] | None = None

  def hit(self, context) -> bool:
    if self.path is not None or context.method_name != "__call__":
      return False
    module = context.module
    if (isinstance(module, nn.Dropout) and module.rate > 0) or module.path == (HEAD,):
      self.path = tuple(module.path)
      return True
    return False


def _input(args, kwargs):
  return args[0] if args else kwargs["inputs"]


def _with_input(args, kwargs, value):
  if args:
    return (value,) + tuple(args[1:]), kwargs
  return args, {**kwargs, "inputs": value}


def _capture_interceptor(point: _CachePoint, captured: list):
  def interceptor(next_fun, args, kwargs, context):
    if point.hit(context):
      captured.append(_input(args, kwargs))
    return next_fun(*args, **kwargs)
  return interceptor


def _swap_interceptor(point: _CachePoint, cached: jax.Array):
  """Feeds `cached` to the cached point in place of what the (dead) upstream computed."""

  def interceptor(next_fun, args, kwargs, context):
    if point.hit(context):
      upstream = _input(args, kwargs)
      if upstream.shape[1:] != cached.shape[1:]:
        raise ValueError(f"cached features have shape {cached.shape[1:]} per example, but "
                         f"{'/'.join(point.path)} receives {upstream.shape[1:]}: they were "
                         f"extracted with another model or crop.")
      args, kwargs = _with_input(args, kwargs, cached.astype(upstream.dtype))
    return next_fun(*args, **kwargs)

  return interceptor


def _dummy_images(batch: int, crop: int) -> jax.Array:
  return jnp.zeros((batch, crop, crop, 3), jnp.float32)


def _filter(variables: Mapping[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in variables.items() if k in ("params", "batch_stats") and v}


def cache_point(model: nn.Module, *, train: bool = False, image_size: int = 32
                ) -> tuple[str, ...]:
  """The module path whose input is cached, e.g. ('head',) or ('classifier', 'Dropout_0').

  Traced abstractly (no parameters are allocated).
  """
  point = _CachePoint()
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)

  def run(rng, x):
    variables = model.init(rng, x, train=False)
    with nn.intercept_methods(_capture_interceptor(point, [])):
      if train:
        model.apply(variables, x, train=True, mutable=["batch_stats"],
                    rngs={"dropout": rng})
      else:
        model.apply(variables, x, train=False)

  jax.eval_shape(run, jax.random.key(0), images)
  if point.path is None:
    raise ValueError(f"{type(model).__name__} has no top-level module named {HEAD!r}.")
  return point.path


# ---------------------------------------------------------------- support


def check_supported(arch: str | registry.Arch, strategy: Strategy, *,
                    compute_dtype: Any = None) -> None:
  """Raises ValueError unless cached features give exactly the ordinary LP run.

  Needs: strategy 'lp' (only the head trains); BatchNorm of the frozen
  backbone on running statistics (strategy option bn_mode='frozen') for
  architectures with BatchNorm; float32 compute. Architectures with dropout
  before the head (VGG) are supported: the dropout layers run in the replayed
  part, with the ordinary step's masks (see the module docstring).
  """
  arch = registry.get_arch(arch) if isinstance(arch, str) else arch
  fix = "or set config.cache_features=False"
  head_only = all(phase.trainable == {HEAD} for phase in strategy.plan.phases)
  if not head_only or any(getattr(strategy, hook) is not None for hook in HOOKS):
    raise ValueError(f"config.cache_features=True needs strategy 'lp' or another that "
                     f"trains only the head, with no hooks (the backbone's output is then "
                     f"fixed); got {strategy.name!r}. Use config.strategy='lp', {fix}.")
  if compute_dtype not in _FLOAT32:
    raise ValueError(f"config.cache_features=True needs float32 compute (features are "
                     f"cached in float32); got compute_dtype={compute_dtype!r}. Set "
                     f"config.compute_dtype='float32', {fix}.")
  if registry.has_batchnorm(arch) and strategy.bn_mode != "frozen":
    raise ValueError(f"config.cache_features=True with {arch.name} (BatchNorm) needs "
                     f"config.strategy_options.bn_mode='frozen': with bn_mode="
                     f"{strategy.bn_mode!r} the backbone normalises with each batch's "
                     f"statistics, so its output depends on the batch. Set bn_mode="
                     f"'frozen', {fix}.")
  model = arch.build(2)
  size = 2 * (registry.patch_size(arch) or 16)  # a ViT's input must fit its patches
  eval_point = cache_point(model, image_size=size)
  train_point = cache_point(model, train=True, image_size=size)
  if eval_point != train_point:
    raise ValueError(f"{arch.name}: the cached point differs between eval mode "
                     f"({'/'.join(eval_point)}) and train mode ({'/'.join(train_point)}); "
                     f"features cannot be cached for it; set config.cache_features=False.")


# ---------------------------------------------------------------- extraction


@functools.lru_cache(maxsize=16)
def _extract_fn(model: nn.Module):

  @jax.jit
  def run(variables, images):
    captured = []
    with nn.intercept_methods(_capture_interceptor(_CachePoint(), captured)):
      model.apply(variables, images, train=False)
    return captured[0].astype(jnp.float32)

  return run


def extract(model: nn.Module, variables: Mapping[str, Any], source: Sequence, *,
            batch_size: int, crop: int, num_workers: int = 0, progress: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
  """(features [N, D] float32, labels) of every example of `source`, in stored order.

  The model runs in eval mode (running BN statistics, no dropout); the
  features are the input of the cached point (`cache_point`).
  """
  fn = _extract_fn(model)
  variables = _filter(variables)
  loader = pipeline.make_eval_loader(source, batch_size, crop=crop, num_workers=num_workers)
  total = pipeline.num_batches(len(source), batch_size, num_workers, drop_remainder=False)
  feats, labels = [], []
  for batch in tqdm.tqdm(loader, total=total, disable=None if progress else True,
                         leave=False, desc="features", unit="batch"):
    mask = np.asarray(batch["mask"], bool)
    feats.append(np.asarray(fn(variables, batch["image"]))[mask])
    labels.append(np.asarray(batch["label"])[mask])
  return np.concatenate(feats), np.concatenate(labels)


def frozen_fingerprint(variables: Mapping[str, Any]) -> str:
  """sha256 of every variable but the head's: changes whenever the features may."""
  digest = hashlib.sha256()
  for collection in ("params", "batch_stats"):
    tree = {k: v for k, v in dict(variables.get(collection) or {}).items() if k != HEAD}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      value = np.asarray(jax.device_get(leaf))
      digest.update(f"{collection}{jax.tree_util.keystr(path)}:{value.dtype}"
                    f"{value.shape}".encode())
      digest.update(np.ascontiguousarray(value).tobytes())
  return digest.hexdigest()


def load_or_extract(directory: str | pathlib.Path, key: Mapping[str, Any],
                    model: nn.Module, variables: Mapping[str, Any], source: Sequence, *,
                    batch_size: int, crop: int, num_workers: int = 0,
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """`extract`, saved under `directory` so that a resumed run reads it back.

  key: what the features depend on besides the frozen variables, JSON-able,
  e.g. {'dataset', 'data_config', 'split', 'arch', 'resize', 'crop'}. The file
  is named by a hash of key, crop, the number of examples and
  `frozen_fingerprint(variables)`, and the full description is stored in it
  and compared on load, so a stale file is never used; it is recomputed.
  """
  description = json.dumps({**dict(key), "crop": crop, "num_examples": len(source),
                            "frozen": frozen_fingerprint(variables)}, sort_keys=True)
  name = hashlib.sha256(description.encode()).hexdigest()[:24]
  path = pathlib.Path(directory) / f"features-{name}.npz"
  if path.exists():
    try:
      with np.load(path, allow_pickle=False) as saved:
        if str(saved["description"]) == description:
          return saved["features"], saved["labels"]
    except (OSError, ValueError, KeyError):
      pass  # an unreadable file is recomputed and replaced
  feats, labels = extract(model, variables, source, batch_size=batch_size, crop=crop,
                          num_workers=num_workers, progress=progress)
  if jax.process_index() == 0:
    run_lib.replace_atomically(path, lambda f: np.savez(
        f, features=feats, labels=labels, description=np.asarray(description)))
  return feats, labels


# ---------------------------------------------------------------- batch order


def batch_order(num_records: int, batch_size: int, *, seed: int, epoch: int,
                num_workers: int = 0) -> np.ndarray:
  """int32 [steps, batch_size]: the record indices of each batch of one training epoch.

  The batches of `pipeline.make_loader(source, batch_size, seed=seed,
  epoch=epoch, shuffle=True, drop_remainder=True, num_workers=num_workers)`
  over a source of `num_records` examples, in order: grain's IndexSampler
  (a `MapDataset.range(n).shuffle(seed)`); with workers, worker w takes
  every num_workers-th record from w, batches them, drops its own
  remainder, and the workers' batches are interleaved round-robin.
  """
  keys = grain.MapDataset.range(num_records).shuffle(seed=pipeline.epoch_seed(seed, epoch))
  order = np.fromiter((keys[i] for i in range(num_records)), np.int64, num_records)
  shards = [order] if num_workers <= 1 else [order[w::num_workers]
                                              for w in range(num_workers)]
  per_worker = [s[:len(s) // batch_size * batch_size].reshape(-1, batch_size)
                for s in shards]
  rounds = max(len(b) for b in per_worker)
  batches = [b[r] for r in range(rounds) for b in per_worker if r < len(b)]
  if not batches:
    return np.zeros((0, batch_size), np.int32)
  return np.stack(batches).astype(np.int32)


# ---------------------------------------------------------------- training


def _label_dtype(loss: str):
  return jnp.float32 if loss == "sigmoid" else jnp.int32


def make_train_epoch(model: nn.Module, strategy: Strategy, *, loss: str = "softmax",
                     crop: int = 224) -> Callable[..., tuple[step.TrainState, jax.Array]]:
  """A jitted `(state, features, labels, order, rng) -> (state, losses)`: one LP epoch.

  Step i trains on features[order[i]] with dropout key
  `jax.random.fold_in(rng, state.step + i)`, as the train loop does, through
  the train loop's own step (`step.make_step_fn`: same loss, BatchNorm mode and
  `strategy.transform`), all steps in one `lax.scan` on device. Only
  params['head'] and opt_state change (and step); the other params and
  batch_stats are returned as they came. losses: float32 [steps]. features and
  labels are best passed as device arrays (put them there once); the state is
  donated. crop is the image size the model is traced with (its convolutions
  are then dead code).
  """
  step_fn = step.make_step_fn(model, strategy, {HEAD}, loss=loss, bn_mode=strategy.bn_mode)

  def epoch(state, feats, labels, order, rng):
    def one_step(state, idx):
      batch = {"image": _dummy_images(idx.shape[0], crop),
               "label": jnp.take(labels, idx, axis=0).astype(_label_dtype(loss))}
      cached = jnp.take(feats, idx, axis=0)
      with nn.intercept_methods(_swap_interceptor(_CachePoint(), cached)):
        state, metrics = step_fn(state, batch, jax.random.fold_in(rng, state.step))
      return state, metrics["loss"]

    return jax.lax.scan(one_step, state, jnp.asarray(order, jnp.int32))

  return jax.jit(epoch, donate_argnums=(0,))


# ---------------------------------------------------------------- evaluation


@functools.lru_cache(maxsize=16)
def _logits_fn(model: nn.Module, crop: int):

  @jax.jit
  def run(variables, feats):
    with nn.intercept_methods(_swap_interceptor(_CachePoint(), feats)):
      logits = model.apply(variables, _dummy_images(feats.shape[0], crop), train=False)
    return logits.astype(jnp.float32)

  return run


def predict(model: nn.Module, variables: Mapping[str, Any], features: Any, *,
            batch_size: int, crop: int) -> np.ndarray:
  """Eval-mode logits [N, C] of the model on cached features, in batches of batch_size."""
  fn = _logits_fn(model, crop)
  variables = _filter(variables)
  n = features.shape[0]
  out = []
  for start in range(0, n, batch_size):
    chunk = features[start:start + batch_size]
    count = chunk.shape[0]
    if count < batch_size:  # one compiled shape: pad the last chunk
      chunk = jnp.concatenate([jnp.asarray(chunk),
                               jnp.zeros((batch_size - count,) + chunk.shape[1:],
                                         chunk.dtype)])
    out.append(np.asarray(fn(variables, chunk))[:count])
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def evaluate(model: nn.Module, variables: Mapping[str, Any], features: Any,
             labels: np.ndarray, *, multilabel: bool,
             class_names: Sequence[str] | None = None, batch_size: int,
             crop: int) -> dict[str, float]:
  """`evaluation.evaluate`'s dict (loss, map, accuracy, auroc, kappa, f1, count) from
  cached features, so that validation needs no pass through the backbone."""
  logits = predict(model, variables, features, batch_size=batch_size, crop=crop)
  return evaluation.metrics_from_logits(logits, np.asarray(labels), multilabel,
                                        class_names)
