"""Strategies: labels, masks, plans, transforms, Auto-RGN weights."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ftjax import step as step_lib
from ftjax.strategies import auto_rgn
from ftjax.models import get_arch, init_variables, variable_shapes
from ftjax.strategies import (bn_mask, gated_adam, get_strategy, kernel_mask, labels,
                              rgn_weights, schedules, sp_regularizer, split)
from ftjax.strategies.registry import STRATEGIES


# ----------------------------------------------------------------- registry


def test_unknown_strategy_lists_valid_names():
  with pytest.raises(ValueError) as err:
    get_strategy("nope", "resnet18")
  for name in ("ft", "lp", "g_lf", "g_fl", "lp_ft", "l1_sp", "l2_sp", "auto_rgn"):
    assert name in str(err.value)


def test_unknown_option_and_bad_choice_raise():
  with pytest.raises(ValueError, match="alpah"):
    get_strategy("l1_sp", "resnet18", {"alpah": 0.1})
  with pytest.raises(ValueError, match="rgn_every"):
    get_strategy("auto_rgn", "resnet18", {"rgn_every": "batch"})
  for key, value in (("alpha", -0.01), ("beta", float("nan")), ("lp_epochs", 0)):
    with pytest.raises(ValueError, match=rf"{key} must be >= \d, got {value!r}"):
      get_strategy("l2_sp", "resnet18", {key: value})


def test_all_strategies_build():
  assert set(STRATEGIES) >= {"ft", "lp", "g_lf", "g_fl", "lp_ft", "l1_sp", "l2_sp",
                             "auto_rgn"}
  for name in STRATEGIES:
    strategy = get_strategy(name, "resnet50")
    assert strategy.plan.phases[-1].epochs is None


# ----------------------------------------------------------------- plans

# Written out from DESIGN.md ("Models and weights" and "Strategies"), one
# entry per epoch with unfreeze_every=1: the module(s) added that epoch.
RESNET_G_LF = [{"head"}, {"layer4"}, {"layer3"}, {"layer2"}, {"layer1"}, {"stem"}]
RESNET_G_FL = [{"head"}, {"stem"}, {"layer1"}, {"layer2"}, {"layer3"}, {"layer4"}]
DENSENET_G_LF = [{"head"}, {"denseblock4"}, {"transition3"}, {"denseblock3"},
                 {"transition2"}, {"denseblock2"}, {"transition1"}, {"denseblock1"},
                 {"stem"}]
DENSENET_G_FL = [{"head"}, {"stem"}, {"denseblock1"}, {"transition1"}, {"denseblock2"},
                 {"transition2"}, {"denseblock3"}, {"transition3"}, {"denseblock4"}]
VGG_G_LF = [{"head"}, {"classifier"}, {"stage5"}, {"stage4"}, {"stage3"}, {"stage2"},
            {"stage1"}]
VGG_G_FL = [{"head"}, {"stage1"}, {"stage2"}, {"stage3"}, {"stage4"}, {"stage5"},
            {"classifier"}]


@pytest.mark.parametrize("arch,name,added", [
    ("resnet50", "g_lf", RESNET_G_LF), ("resnet50", "g_fl", RESNET_G_FL),
    ("densenet121", "g_lf", DENSENET_G_LF), ("densenet121", "g_fl", DENSENET_G_FL),
    ("vgg19", "g_lf", VGG_G_LF), ("vgg19", "g_fl", VGG_G_FL)])
def test_unfreezing_order_per_epoch(arch, name, added):
  plan = get_strategy(name, arch).plan
  expected = set()
  for epoch, new in enumerate(added):
    expected |= new
    assert plan.trainable_at(epoch) == expected, epoch
  # After the last block everything trains until the end.
  assert plan.trainable_at(len(added) + 10) == expected
  assert plan.last_phase_start == len(added) - 1


def test_unfreeze_every_stretches_phases():
  plan = get_strategy("g_lf", "resnet50", {"unfreeze_every": 3}).plan
  assert [plan.trainable_at(e) for e in range(3)] == [{"head"}] * 3
  assert plan.trainable_at(3) == {"head", "layer4"}
  assert plan.trainable_at(15) == {"head", "layer1", "layer2", "layer3", "layer4", "stem"}


def test_lp_ft_lp_and_ft_plans():
  everything = {"stem", "layer1", "layer2", "layer3", "layer4", "head"}
  plan = get_strategy("lp_ft", "resnet50", {"lp_epochs": 2}).plan
  assert [plan.trainable_at(e) for e in range(4)] == [{"head"}] * 2 + [everything] * 2
  assert get_strategy("lp_ft", "resnet50").plan.trainable_at(4) == {"head"}  # default 5
  assert get_strategy("lp_ft", "resnet50").plan.trainable_at(5) == everything
  assert get_strategy("lp", "vgg19").plan.trainable_at(7) == {"head"}
  assert get_strategy("ft", "resnet50").plan.trainable_at(0) == everything
  for name in ("l1_sp", "l2_sp", "auto_rgn"):
    assert get_strategy(name, "resnet50").plan.phases == get_strategy("ft", "resnet50").plan.phases


def test_plan_written_as_data():
  everything = {"stem", "layer1", "layer2", "layer3", "layer4", "head"}
  lp_ft = get_strategy("lp_ft", "resnet50", {"lp_epochs": 3}).plan
  assert get_strategy("scheduled", "resnet50", {"phases": "head:3; all"}).plan == lp_ft
  plan = get_strategy("scheduled", "densenet121",
                      {"phases": "head:2; head+denseblock4:1; all"}).plan
  assert [len(plan.trainable_at(e)) for e in (0, 1, 2, 3)] == [1, 1, 2, 9]
  assert plan.trainable_at(2) == {"head", "denseblock4"}
  assert get_strategy("scheduled", "resnet50", {"phases": "all"}).plan.trainable_at(0) == everything
  for bad, words in (("head:2; layer9", "unknown module 'layer9'"),
                     ("head; all", "every phase but the last"),
                     ("head:2; all:3", "every phase but the last"),
                     ("head:0; all", "epochs must be a whole number"),
                     (" ; all", "names no module")):
    with pytest.raises(ValueError, match=words):
      get_strategy("scheduled", "resnet50", {"phases": bad})


def test_option_defaults_are_the_options_dataclasses():
  from configs import base
  from ftjax.strategies import freezing, sp
  assert base.STRATEGY_OPTIONS["lp_epochs"] == freezing.LpFtOptions().lp_epochs
  assert base.STRATEGY_OPTIONS["alpha"] == sp.Options().alpha
  # A strategy reads its own options and ignores the others' (a sweep shares one dict).
  strategy = get_strategy("l2_sp", "resnet18", {**base.STRATEGY_OPTIONS, "alpha": 0.5})
  assert strategy.options.alpha == 0.5 and not hasattr(strategy.options, "lp_epochs")


def test_plan_validation():
  with pytest.raises(ValueError):
    schedules.Plan((schedules.Phase(frozenset({"head"}), None),
                    schedules.Phase(frozenset({"head"}), None)))
  with pytest.raises(ValueError):
    schedules.Plan((schedules.Phase(frozenset({"head"}), 2),))


# ----------------------------------------------------------------- partition


def test_labels_and_masks_densenet():
  shapes = variable_shapes("densenet121", num_classes=3)
  params, stats = shapes["params"], shapes["batch_stats"]
  lab = labels(params)
  assert lab["transition2"]["conv"]["kernel"] == "transition2"
  assert lab["head"]["bias"] == "head"
  bn = bn_mask(params, stats)
  # DenseNet's BN layers are named norm*, selected by type all the same.
  assert bn["denseblock4"]["norm5"]["scale"] and bn["transition1"]["norm"]["bias"]
  assert bn["stem"]["norm0"]["scale"]
  assert not bn["stem"]["conv0"]["kernel"] and not bn["head"]["kernel"]
  n_bn = sum(jax.tree_util.tree_leaves(bn))
  assert n_bn == 2 * len(jax.tree_util.tree_leaves(stats)) // 2  # scale+bias per mean+var
  kern = kernel_mask(params)
  assert kern["head"]["kernel"] and not kern["head"]["bias"]
  assert not kern["stem"]["norm0"]["scale"]


def test_bn_mask_vgg_without_bn_is_empty():
  variables = variable_shapes("vgg11", num_classes=3)
  assert not any(jax.tree_util.tree_leaves(bn_mask(variables["params"],
                                                   variables.get("batch_stats"))))


def test_split_rejects_unknown_modules():
  with pytest.raises(ValueError, match="layer9"):
    split({"head": 1, "stem": 2}, {"layer9"})


# ----------------------------------------------------------------- transforms


def _toy():
  return {"stem": {"conv": {"kernel": jnp.array([1.0, -2.0, 3.0])},
                   "bn": {"scale": jnp.array([1.0, 1.0])}},
          "head": {"kernel": jnp.array([[0.5, -0.5]]), "bias": jnp.array([0.25, -1.0])}}


def test_gated_adam_leaves_frozen_state_and_starts_fresh():
  params = _toy()
  tx = gated_adam(0.1)
  state = tx.init(params)
  grads = jax.tree_util.tree_map(lambda p: 0.3 * jnp.ones_like(p) + p, params)
  # Two head-only steps: the stem's state must not move.
  for sign in (1.0, -1.0):  # changing gradients, so that Adam's steps differ
    head_grads = jax.tree_util.tree_map(lambda g: sign * g, grads["head"])
    _, state = tx.update({"head": head_grads}, state, {"head": params["head"]})
  stem0 = tx.init(params).blocks["stem"]
  for a, b in zip(jax.tree_util.tree_leaves(state.blocks["stem"]),
                  jax.tree_util.tree_leaves(stem0)):
    np.testing.assert_array_equal(a, b)
  updates, state = tx.update(grads, state, params)
  # The stem's first step is a fresh Adam step: -lr * sign(g) (bias-corrected).
  np.testing.assert_allclose(updates["stem"]["conv"]["kernel"],
                             -0.1 * np.sign(grads["stem"]["conv"]["kernel"]), rtol=1e-5)
  # The head's third step is not a first step.
  assert not np.allclose(updates["head"]["kernel"], -0.1 * np.sign(grads["head"]["kernel"]))


@pytest.mark.parametrize("norm", ["l1", "l2"])
@pytest.mark.parametrize("apply_to", ["kernels", "all"])
def test_sp_penalty_gradient(norm, apply_to):
  w0 = _toy()
  params = jax.tree_util.tree_map(lambda p: p + 0.5 * jnp.sign(p) - 0.1, w0)
  alpha, beta = 0.3, 0.07
  tx = sp_regularizer(w0, alpha, beta, norm, apply_to)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  out, _ = tx.update(zeros, tx.init(params), params)
  np_p = jax.tree_util.tree_map(np.asarray, params)
  np_w0 = jax.tree_util.tree_map(np.asarray, w0)

  def expect(p, ref, c):
    return c * np.sign(p - ref) if norm == "l1" else 2 * c * (p - ref)

  np.testing.assert_allclose(out["stem"]["conv"]["kernel"],
                             expect(np_p["stem"]["conv"]["kernel"],
                                    np_w0["stem"]["conv"]["kernel"], alpha), rtol=1e-6)
  # The new head: beta on every parameter, bias included, in both modes.
  for leaf in ("kernel", "bias"):
    np.testing.assert_allclose(out["head"][leaf], expect(np_p["head"][leaf], 0.0, beta),
                               rtol=1e-6, err_msg=leaf)
  if apply_to == "kernels":
    np.testing.assert_array_equal(out["stem"]["bn"]["scale"], 0.0)
  else:
    np.testing.assert_allclose(out["stem"]["bn"]["scale"],
                               expect(np_p["stem"]["bn"]["scale"],
                                      np_w0["stem"]["bn"]["scale"], alpha), rtol=1e-6)


def test_sp_w0_is_init_params_and_l1_zero_at_start():
  params = _toy()
  tx = sp_regularizer(None, 0.5, 0.5, "l1")
  g = jax.tree_util.tree_map(jnp.ones_like, params)
  out, _ = tx.update(g, tx.init(params), params)
  # w = w0: the subgradient of |w - w0| is 0; the head term is not.
  np.testing.assert_array_equal(out["stem"]["conv"]["kernel"], 1.0)
  np.testing.assert_allclose(out["head"]["kernel"], 1 + 0.5 * np.sign(params["head"]["kernel"]))


# ----------------------------------------------------------------- Auto-RGN


def _np_rgn(grad_list, params, excluded):
  """Reference: mean over batches of ||g_b|| / ||theta||, over the max."""
  flat_p = dict(jax.tree_util.tree_leaves_with_path(params))
  rgn = {}
  for path, p in flat_p.items():
    if excluded(path):
      continue
    ratios = []
    for grads in grad_list:
      g = dict(jax.tree_util.tree_leaves_with_path(grads))[path]
      ratios.append(np.linalg.norm(np.asarray(g, np.float64)) /
                    np.linalg.norm(np.asarray(p, np.float64)))
    rgn[path] = np.mean(ratios)
  top = max(rgn.values())
  return {k: v / top for k, v in rgn.items()}


@pytest.fixture(scope="module")
def rgn_setup():
  arch = get_arch("resnet18")
  model = arch.build(3)
  variables = init_variables(arch, 1, num_classes=3, image_size=32)
  rng = np.random.default_rng(0)
  # Jitter: BN biases start at exactly 0, where ||theta|| = 0 leaves RGN undefined.
  variables["params"] = jax.tree_util.tree_map(
      lambda p: p + 0.05 * rng.normal(size=p.shape).astype(np.float32), variables["params"])
  images = rng.normal(size=(3, 4, 32, 32, 3)).astype(np.float32)
  labels_ = rng.integers(0, 3, size=(3, 4)).astype(np.int32)

  @jax.jit
  def grads_of(params, image, label):
    def loss(p):
      logits, _ = model.apply({"params": p, "batch_stats": variables["batch_stats"]}, image,
                              train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, label).mean()
    return jax.grad(loss)(params)

  grad_list = [jax.device_get(grads_of(variables["params"], images[i], labels_[i]))
               for i in range(3)]
  return model, variables, images, labels_, grad_list


def _is_bn_path(path):
  names = [str(k.key) for k in path]
  return names[-2].startswith("bn") or (names[-2] == "1" and "downsample" in names)


def test_rgn_weights_match_numpy(rgn_setup):
  _, variables, _, _, grad_list = rgn_setup
  params = variables["params"]
  mask = bn_mask(params, variables["batch_stats"])
  weights = jax.device_get(rgn_weights(grad_list, params, mask))
  expected = _np_rgn(grad_list, params, _is_bn_path)
  flat_w = dict(jax.tree_util.tree_leaves_with_path(weights))
  assert len(expected) == 20 + 2  # 20 conv kernels, head kernel and bias (BN excluded)
  for path, value in flat_w.items():
    if _is_bn_path(path):
      assert value == 0.0, path
    else:
      np.testing.assert_allclose(value, expected[path], rtol=1e-5, err_msg=str(path))
  assert max(flat_w.values()) == 1.0


def test_rgn_probe_matches_numpy(rgn_setup):
  model, variables, images, labels_, grad_list = rgn_setup
  strategy = get_strategy("auto_rgn", "resnet18", {"rgn_batches": 3})
  state = step_lib.create_train_state(strategy, variables)
  probe = auto_rgn.make_probe(step_lib.grad_fn_factory(model))
  weights = probe(state, {"image": jnp.asarray(images), "label": jnp.asarray(labels_)})
  expected = _np_rgn(grad_list, variables["params"], _is_bn_path)
  for path, value in jax.tree_util.tree_leaves_with_path(jax.device_get(weights)):
    want = 0.0 if _is_bn_path(path) else expected[path]
    np.testing.assert_allclose(value, want, rtol=1e-4, atol=1e-7, err_msg=str(path))
  # rgn_bn='include' (no mask): BN tensors get their own RGN, the max over all.
  with_bn = jax.device_get(rgn_weights(grad_list, variables["params"], None))
  expected_all = _np_rgn(grad_list, variables["params"], lambda path: False)
  for path, value in jax.tree_util.tree_leaves_with_path(with_bn):
    np.testing.assert_allclose(value, expected_all[path], rtol=1e-5, err_msg=str(path))


def test_readme_strategy_table_is_the_registry():
  import pathlib
  from ftjax.strategies.registry import markdown_table
  readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
  assert markdown_table() in readme, "README's strategy table: python -m ftjax.strategies"
