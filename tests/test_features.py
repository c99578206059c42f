"""Cached LP features: the head's input, the loader's order, and LP on features
equal to the ordinary LP step (ResNet, and a VGG-like model with dropout)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from ftjax import step
from ftjax.engine import evaluation, features
from ftjax.data.prepared import prepared_builder
from ftjax.data import pipeline
from ftjax.models import layers, registry, vgg
from ftjax.strategies import get_strategy

CROP = 32
BATCH = 16
EVAL_BATCH = 32
LR = 1e-3
# float32 agreement of two XLA programs that compute the same thing in a
# different order (the features outside the step, the step on features).
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  config = demo.get_config()
  config.data_dir = str(tmp_path_factory.mktemp("data"))
  config.dataset_options.num_train = 80
  config.dataset_options.num_test = 16
  config.resize, config.crop = 36, CROP
  arch = registry.get_arch("resnet18")
  info, builder = prepared_builder(config, arch)
  return info, {s: builder.as_data_source(s) for s in ("train", "validation")}


def _variables(arch, num_classes, seed=0):
  """He-normal kernels, small random biases, non-trivial BN running statistics
  (frozen BN uses them); filled from shapes, with no init compile."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(path[-1].key)
    if name == "kernel":
      value = rng.normal(size=leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
    elif name in ("scale", "var"):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:  # bias, mean
      value = 0.1 * rng.normal(size=leaf.shape)
    return jnp.asarray(value, jnp.float32)

  shapes = registry.variable_shapes(arch, num_classes)
  return {k: jax.tree_util.tree_map_with_path(fill, v) for k, v in shapes.items()}


def _stored_ids(source):
  loader = pipeline.make_eval_loader(source, EVAL_BATCH, crop=CROP, keep_ids=True)
  return [i for b in loader for i, m in zip(b["id"].tolist(), b["mask"]) if m]


def _stored_labels(source):
  loader = pipeline.make_eval_loader(source, EVAL_BATCH, crop=CROP)
  return np.concatenate([b["label"][b["mask"]] for b in loader])


def _copy(tree):
  return jax.tree_util.tree_map(lambda x: np.array(x, copy=True), tree)


def _max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0.0))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


# ---------------------------------------------------------------- features


@pytest.mark.parametrize("arch_name", ["resnet18", "densenet121"])
def test_features_are_the_head_input(arch_name, sources):
  info, srcs = sources
  arch = registry.get_arch(arch_name)
  model = arch.build(info.num_classes)
  variables = _variables(arch, info.num_classes)
  assert features.cache_point(model) == ("head",)
  feats, labels = features.extract(model, variables, srcs["validation"],
                                   batch_size=EVAL_BATCH, crop=CROP)
  assert feats.dtype == np.float32 and feats.shape[0] == len(srcs["validation"])
  np.testing.assert_array_equal(labels, _stored_labels(srcs["validation"]))
  head = variables["params"]["head"]
  np.testing.assert_allclose(
      features.predict(model, variables, feats, batch_size=EVAL_BATCH, crop=CROP),
      feats @ np.asarray(head["kernel"]) + np.asarray(head["bias"]), rtol=RTOL, atol=1e-5)
  # Independently: the same backbone under an identity head outputs its input.
  # Its own jit (default XLA options, as every numeric comparison here) may sum
  # the convolutions in another order: float32 rounding relative to the scale.
  dim = feats.shape[1]
  identity = {**variables["params"], "head": {"kernel": jnp.eye(dim, dtype=jnp.float32),
                                              "bias": jnp.zeros(dim, jnp.float32)}}
  probe_model = arch.build(dim)
  probe = jax.jit(lambda v, x: probe_model.apply(v, x, train=False))
  images = np.concatenate([b["image"][b["mask"]] for b in pipeline.make_eval_loader(
      srcs["validation"], EVAL_BATCH, crop=CROP)])
  expected = np.asarray(probe({**variables, "params": identity}, images))
  np.testing.assert_allclose(feats, expected, rtol=RTOL,
                             atol=RTOL * np.abs(expected).max())


# ---------------------------------------------------------------- order


@pytest.mark.parametrize("seed", [0, 3])
def test_batch_order_is_the_training_loaders(seed, sources):
  _, srcs = sources
  source = srcs["train"]
  stored = _stored_ids(source)
  for epoch in (0, 1):
    loader = pipeline.make_loader(source, BATCH, seed=seed, epoch=epoch, shuffle=True,
                                  drop_remainder=True, crop=CROP, keep_ids=True)
    expected = [[stored.index(i) for i in b["id"].tolist()] for b in loader]
    order = features.batch_order(len(source), BATCH, seed=seed, epoch=epoch)
    assert order.dtype == np.int32 and order.shape == (len(source) // BATCH, BATCH)
    assert order.tolist() == expected


@pytest.mark.slow
def test_batch_order_with_worker_processes(sources):
  _, srcs = sources
  source = srcs["train"]
  stored = _stored_ids(source)
  # Workers and a batch size that leave the workers unequal batch counts.
  workers, batch = next((w, b) for w in (3, 5) for b in range(4, 12)
                        if len({len(range(i, len(source), w)) // b for i in range(w)}) > 1)
  loader = pipeline.make_loader(source, batch, seed=1, epoch=2, shuffle=True,
                                drop_remainder=True, crop=CROP, keep_ids=True,
                                num_workers=workers)
  expected = [[stored.index(i) for i in b["id"].tolist()] for b in loader]
  order = features.batch_order(len(source), batch, seed=1, epoch=2, num_workers=workers)
  assert order.tolist() == expected


# ---------------------------------------------------------------- exactness


def test_lp_on_features_equals_ordinary_lp(sources):
  info, srcs = sources
  arch = registry.get_arch("resnet18")
  model = arch.build(info.num_classes)
  strategy = get_strategy("lp", arch, {"lr": LR, "bn_mode": "frozen"})
  features.check_supported(arch, strategy)
  variables = _variables(arch, info.num_classes)
  initial = _copy(variables)
  step_rng = jax.random.key(7)
  seed, epochs = 5, 2

  # Ordinary LP: the train loop's loader, step and dropout keys.
  train_step = step.make_train_step(model, strategy, {"head"})
  state = step.create_train_state(strategy, variables)
  ref_losses = []
  for epoch in range(epochs):
    loader = pipeline.make_loader(srcs["train"], BATCH, seed=seed, epoch=epoch,
                                  shuffle=True, drop_remainder=True, crop=CROP)
    first = int(state.step)
    for i, batch in enumerate(loader):
      batch = {"image": batch["image"], "label": batch["label"].astype(np.int32)}
      state, out = train_step(state, batch, jax.random.fold_in(step_rng, first + i))
      ref_losses.append(float(out["loss"]))

  # The same epochs on cached features.
  feats, labels = features.extract(model, variables, srcs["train"], batch_size=EVAL_BATCH,
                                   crop=CROP)
  feats, labels = jax.device_put(feats), jax.device_put(labels)
  train_epoch = features.make_train_epoch(model, strategy, loss="softmax", crop=CROP)
  cached = step.create_train_state(strategy, variables)
  losses = []
  for epoch in range(epochs):
    order = features.batch_order(len(srcs["train"]), BATCH, seed=seed, epoch=epoch)
    cached, epoch_losses = train_epoch(cached, feats, labels, order, step_rng)
    losses.extend(np.asarray(epoch_losses).tolist())

  assert len(losses) == len(ref_losses) == epochs * (len(srcs["train"]) // BATCH)
  np.testing.assert_allclose(losses, ref_losses, rtol=RTOL, atol=ATOL)
  assert int(cached.step) == int(state.step)
  for name in ("kernel", "bias"):
    np.testing.assert_allclose(cached.params["head"][name], state.params["head"][name],
                               rtol=RTOL, atol=ATOL)
  for a, b in zip(jax.tree_util.tree_leaves(cached.opt_state),
                  jax.tree_util.tree_leaves(state.opt_state)):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-9)
  assert _max_diff(cached.params["head"], initial["params"]["head"]) > 1e-3  # it trained
  for result in (state, cached):
    for key in ("params", "batch_stats"):
      frozen = {k: v for k, v in getattr(result, key).items() if k != "head"}
      expected = {k: v for k, v in initial[key].items() if k != "head"}
      for a, b in zip(jax.tree_util.tree_leaves(frozen), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(a, b)

  # Validation: the metrics on features are the full model's.
  val_feats, val_labels = features.extract(model, variables, srcs["validation"],
                                           batch_size=EVAL_BATCH, crop=CROP)
  full_vars = {"params": state.params, "batch_stats": state.batch_stats}
  ref = evaluation.evaluate(model, full_vars, srcs["validation"], multilabel=False,
                            class_names=info.class_names, batch_size=EVAL_BATCH, crop=CROP)
  got = features.evaluate(model, {"params": cached.params, "batch_stats": cached.batch_stats},
                          val_feats, val_labels, multilabel=False,
                          class_names=info.class_names, batch_size=EVAL_BATCH, crop=CROP)
  assert set(got) == set(ref) and got["count"] == ref["count"] == len(srcs["validation"])
  assert got["loss"] == pytest.approx(ref["loss"], rel=RTOL, abs=ATOL)
  for metric in ("map", "accuracy", "auroc", "kappa", "f1"):
    assert got[metric] == pytest.approx(ref[metric], abs=1e-9), metric


# ---------------------------------------------------------------- dropout (VGG)


class _SmallVGG(nn.Module):
  """VGG's structure (conv stage, 7x7 pool, the real classifier with its two
  dropouts, the head) with one narrow stage, so that it is cheap."""

  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    x = vgg.Stage((4,), False, name="stage1")(x, train)
    x = layers.adaptive_avg_pool(x, (7, 7)).reshape(x.shape[0], -1)
    x = vgg.Classifier(name="classifier")(x, train)
    return layers.head(self.num_classes, x.shape[-1])(x)


def _image_source(n, num_classes, seed=0):
  """An in-memory source of uint8 images with multi-hot labels."""
  rng = np.random.default_rng(seed)
  labels = (rng.uniform(size=(n, num_classes)) < 0.4).astype(np.float32)
  return [{"image": rng.integers(0, 256, (CROP + 4, CROP + 4, 3), np.uint8),
           "label": labels[i], "id": f"x{i}"} for i in range(n)]


def test_lp_with_dropout_replays_the_steps_masks():
  model = _SmallVGG(num_classes=3)
  assert features.cache_point(model) == ("classifier", "Dropout_0")
  assert features.cache_point(model, train=True) == ("classifier", "Dropout_0")
  strategy = get_strategy("lp", "vgg11", {"lr": LR})  # no BN: bn_mode stays 'train'
  source = _image_source(40, 3)
  dummy = jnp.zeros((1, CROP, CROP, 3), jnp.float32)
  variables = {"batch_stats": {}, **model.init(jax.random.key(1), dummy)}
  step_rng = jax.random.key(3)
  batch_size = 8

  train_step = step.make_train_step(model, strategy, {"head"}, loss="sigmoid")
  state = step.create_train_state(strategy, variables)
  ref_losses = []
  for epoch in range(2):
    loader = pipeline.make_loader(source, batch_size, seed=0, epoch=epoch, shuffle=True,
                                  drop_remainder=True, crop=CROP)
    first = int(state.step)
    for i, batch in enumerate(loader):
      state, out = train_step(state, {"image": batch["image"], "label": batch["label"]},
                              jax.random.fold_in(step_rng, first + i))
      ref_losses.append(float(out["loss"]))

  feats, labels = features.extract(model, variables, source, batch_size=16, crop=CROP)
  assert feats.shape == (40, 4096)
  train_epoch = features.make_train_epoch(model, strategy, loss="sigmoid", crop=CROP)
  cached = step.create_train_state(strategy, variables)
  losses = []
  for epoch in range(2):
    order = features.batch_order(len(source), batch_size, seed=0, epoch=epoch)
    cached, epoch_losses = train_epoch(cached, feats, labels, order, step_rng)
    losses.extend(np.asarray(epoch_losses).tolist())
  np.testing.assert_allclose(losses, ref_losses, rtol=RTOL, atol=ATOL)
  for a, b in zip(jax.tree_util.tree_leaves((cached.params, cached.opt_state)),
                  jax.tree_util.tree_leaves((state.params, state.opt_state))):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-9)

  # The masks matter: another key gives other losses.
  other, other_losses = train_epoch(step.create_train_state(strategy, variables), feats,
                                    labels, features.batch_order(40, batch_size, seed=0,
                                                                 epoch=0),
                                    jax.random.key(4))
  del other
  assert np.max(np.abs(np.asarray(other_losses) - np.asarray(losses[:5]))) > 1e-3

  # Eval mode: dropout off, the model's own logits.
  logits = np.asarray(step.eval_step(model, variables, jnp.asarray(
      next(iter(pipeline.make_eval_loader(source, 40, crop=CROP)))["image"])))
  np.testing.assert_allclose(
      features.predict(model, variables, feats, batch_size=16, crop=CROP), logits,
      rtol=RTOL, atol=1e-5)


# ---------------------------------------------------------------- support


def test_check_supported():
  resnet = registry.get_arch("resnet18")
  with pytest.raises(ValueError, match=r"cache_features.*strategy 'lp'.*'ft'"):
    features.check_supported(resnet, get_strategy("ft", resnet, {"bn_mode": "frozen"}))
  with pytest.raises(ValueError, match=r"cache_features.*bn_mode='frozen'"):
    features.check_supported(resnet, get_strategy("lp", resnet))
  with pytest.raises(ValueError, match=r"cache_features.*compute_dtype='float32'"):
    features.check_supported(resnet, get_strategy("lp", resnet, {"bn_mode": "frozen"}),
                             compute_dtype="bfloat16")
  features.check_supported(resnet, get_strategy("lp", resnet, {"bn_mode": "frozen"}),
                           compute_dtype="float32")
  # VGG without BN: dropout is replayed, any bn_mode; with BN it must be frozen.
  features.check_supported("vgg19", get_strategy("lp", "vgg19"))
  with pytest.raises(ValueError, match=r"vgg11_bn.*bn_mode='frozen'"):
    features.check_supported("vgg11_bn", get_strategy("lp", "vgg11_bn"))
  features.check_supported("vgg11_bn", get_strategy("lp", "vgg11_bn", {"bn_mode": "frozen"}))
  assert features.cache_point(registry.get_arch("vgg19").build(2)) == (
      "classifier", "Dropout_0")


# ---------------------------------------------------------------- saved features


def test_saved_features_are_reused_only_for_the_same_frozen_weights(sources, tmp_path,
                                                                     monkeypatch):
  info, srcs = sources
  arch = registry.get_arch("resnet18")
  model = arch.build(info.num_classes)
  variables = _variables(arch, info.num_classes)
  key = {"dataset": info.name, "split": "validation", "arch": arch.name}
  kwargs = dict(batch_size=EVAL_BATCH, crop=CROP)
  first = features.load_or_extract(tmp_path, key, model, variables, srcs["validation"],
                                   **kwargs)
  assert len(list(tmp_path.glob("features-*.npz"))) == 1

  # A new head does not change the features: read back, not recomputed.
  real_extract = features.extract
  monkeypatch.setattr(features, "extract", lambda *a, **k: pytest.fail("recomputed"))
  head = jax.tree_util.tree_map(lambda x: x + 1.0, variables["params"]["head"])
  again = features.load_or_extract(tmp_path, key, model,
                                   {**variables, "params": {**variables["params"],
                                                            "head": head}},
                                   srcs["validation"], **kwargs)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)

  # Other frozen weights, split or crop: another file, recomputed.
  calls = []
  monkeypatch.setattr(features, "extract",
                      lambda *a, **k: calls.append(1) or real_extract(*a, **k))
  stats = jax.tree_util.tree_map(lambda x: x * 1.01, variables["batch_stats"])
  changed = features.load_or_extract(tmp_path, key, model,
                                     {**variables, "batch_stats": stats},
                                     srcs["validation"], **kwargs)
  features.load_or_extract(tmp_path, {**key, "split": "train"}, model, variables,
                           srcs["train"], **kwargs)
  assert len(calls) == 2 and len(list(tmp_path.glob("features-*.npz"))) == 3
  assert not np.allclose(changed[0], first[0])
