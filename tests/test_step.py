"""The train step: freezing, gated Adam, BN modes, LP's missing backward,
and agreement with plain PyTorch training of torchvision's ResNet-18."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ftjax import step as step_lib
from ftjax.models import get_arch, variable_shapes
from ftjax.strategies import get_strategy, set_rgn_weights
from weights_port import mapping

LR = 1e-3
NUM_CLASSES = 3
ALL_RESNET = frozenset({"stem", "layer1", "layer2", "layer3", "layer4", "head"})
# Short XLA CPU compiles: these tests compile many steps and run each a few times.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _random_variables(arch, seed=0):
  """He-normal kernels, small random biases and BN params; no init compile."""
  rng = np.random.default_rng(seed)
  shapes = variable_shapes(arch, NUM_CLASSES)

  def fill(path, leaf):
    name = str(path[-1].key)
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      value = rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)
    elif name in ("scale", "var"):
      value = 1.0 + 0.1 * rng.uniform(-1, 1, leaf.shape)
    else:  # bias, mean
      value = 0.1 * rng.normal(size=leaf.shape)
    return value.astype(np.float32)

  return {k: jax.tree_util.tree_map_with_path(fill, v) for k, v in shapes.items()}


def _batches(n, seed=0, size=32):
  rng = np.random.default_rng(seed)
  return [{"image": jnp.asarray(rng.normal(size=(4, size, size, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, NUM_CLASSES, 4), jnp.int32)}
          for _ in range(n)]


class Setup:
  """One architecture's model, initial variables and compiled steps by phase."""

  def __init__(self, arch_name):
    self.arch = get_arch(arch_name)
    self.model = self.arch.build(NUM_CLASSES)
    self.variables = _random_variables(self.arch)
    self.batches = _batches(3)
    # Every gradual plan uses the same gated Adam, so one compiled step per
    # trainable set serves lp, ft, g_lf, g_fl and lp_ft alike.
    self.strategy = get_strategy("ft", self.arch, {"lr": LR})
    self._steps = {}

  def step(self, trainable, **kwargs):
    key = (frozenset(trainable), tuple(sorted(kwargs.items())))
    if key not in self._steps:
      self._steps[key] = step_lib.make_train_step(self.model, self.strategy, trainable,
                                                  compiler_options=FAST, **kwargs)
    return self._steps[key]

  def state(self):
    return step_lib.create_train_state(self.strategy, self.variables)

  def run(self, phases, state=None, **kwargs):
    """phases: a list of trainable sets, one step each, on batches 0, 1, 2, ...

    Returns the host states before the first and after every step.
    """
    state = state or self.state()
    states = [jax.device_get(state)]
    for i, trainable in enumerate(phases):
      state, _ = self.step(trainable, **kwargs)(
          state, self.batches[i % len(self.batches)], jax.random.key(i))
      states.append(jax.device_get(state))
    return states


@functools.lru_cache(maxsize=None)
def setup(arch_name):
  return Setup(arch_name)


def _assert_frozen_and_trained(before, after, trainable):
  for name in before:
    leaves_b = jax.tree_util.tree_leaves(before[name])
    leaves_a = jax.tree_util.tree_leaves(after[name])
    if name in trainable:
      assert any(not np.array_equal(a, b) for a, b in zip(leaves_a, leaves_b)), name
    else:
      for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(a, b, err_msg=name)  # bitwise


# ------------------------------------------------------------------ 1. freezing


@pytest.mark.parametrize("arch_name,phases", [
    ("resnet18", [{"head"}, {"head"}, {"head", "layer4"}]),     # lp / lp_ft / g_lf
    ("resnet18", [{"head"}, {"head", "stem"}]),                 # g_fl
    ("densenet121", [{"head"}, {"head", "denseblock4"}]),       # lp / g_lf
    pytest.param("densenet121", [{"head"}, {"head", "stem"}],   # g_fl
                 marks=pytest.mark.slow),
    ("vgg11", [{"head"}, {"head", "classifier"}]),              # lp / g_lf
    ("vgg11", [{"head"}, {"head", "stage1"}]),                  # g_fl
])
def test_frozen_modules_bitwise_unchanged(arch_name, phases):
  s = setup(arch_name)
  states = s.run(phases)
  for before, after, trainable in zip(states, states[1:], phases):
    _assert_frozen_and_trained(before.params, after.params, trainable)


@pytest.mark.parametrize("name,arch_name,expected", [
    ("lp", "resnet18", [{"head"}, {"head"}]),
    ("lp_ft", "resnet18", [{"head"}, {"head"}]),
    ("g_lf", "resnet18", [{"head"}, {"head", "layer4"}]),
    ("g_fl", "resnet18", [{"head"}, {"head", "stem"}]),
    ("g_lf", "densenet121", [{"head"}, {"head", "denseblock4"}]),
    ("g_fl", "densenet121", [{"head"}, {"head", "stem"}]),
    ("g_lf", "vgg11", [{"head"}, {"head", "classifier"}]),
    ("g_fl", "vgg11", [{"head"}, {"head", "stage1"}]),
])
def test_freezing_phases_above_are_the_plans(name, arch_name, expected):
  plan = get_strategy(name, arch_name).plan
  assert [plan.trainable_at(e) for e in range(2)] == expected


# ------------------------------------------------------------------ 3. gated Adam


def test_newly_unfrozen_block_gets_a_fresh_adam():
  s = setup("resnet18")
  state = s.run([{"head"}, {"head"}])[-1]     # g_lf epoch 0 (2 steps)
  batch = s.batches[2]

  @jax.jit
  def grads_of(params, batch_stats):
    def loss(p):
      logits, _ = s.model.apply({"params": p, "batch_stats": batch_stats}, batch["image"],
                                train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return jax.grad(loss)(params)

  grads = grads_of(state.params, state.batch_stats)
  adam = optax.adam(LR)
  fresh, _ = adam.update(grads["layer4"], adam.init(state.params["layer4"]))
  expected = optax.apply_updates(state.params["layer4"], fresh)
  new = jax.device_get(s.step({"head", "layer4"})(
      jax.device_put(state), batch, jax.random.key(2)))[0]

  def check(new_p, old_p, want_p, g):
    # A fresh Adam's first step is -lr * g / (|g| + eps): magnitude lr for any
    # non-negligible g. Where |g| is at float32 noise level the two programs'
    # gradients may differ in sign, so exact agreement is asserted on the
    # elements with |g| > 1e-4 max|g| and the lr bound on all of them; a
    # stale Adam (count > 0 or old moments) breaks both.
    delta = new_p - old_p
    assert np.all(np.abs(delta) <= LR * 1.001)  # slack: float32 rounding of p + delta
    big = np.abs(g) > 1e-4 * np.abs(g).max()
    assert big.sum() >= min(g.size, 100)  # (3x3 taps off a 1x1 map have g = 0)
    np.testing.assert_allclose(new_p[big], want_p[big], rtol=0, atol=1e-6)

  jax.tree_util.tree_map(check, new.params["layer4"], state.params["layer4"],
                         jax.device_get(expected), jax.device_get(grads["layer4"]))
  # The head continues its own Adam (third step): not a fresh first step.
  head_fresh, _ = adam.update(grads["head"], adam.init(state.params["head"]))
  assert not np.allclose(new.params["head"]["kernel"] - state.params["head"]["kernel"],
                         head_fresh["kernel"], atol=1e-6)


# ------------------------------------------------------------------ BN modes


def test_bn_mode_train_updates_frozen_running_stats():
  s = setup("resnet18")
  after = s.run([{"head"}])[-1]
  assert not np.array_equal(after.batch_stats["stem"]["bn1"]["mean"],
                            s.variables["batch_stats"]["stem"]["bn1"]["mean"])


def test_bn_mode_frozen_is_a_linear_model_on_eval_features():
  s = setup("resnet18")
  state = s.state()
  batch = s.batches[0]
  after, metrics = s.step({"head"}, bn_mode="frozen")(state, batch, jax.random.key(0))
  after = jax.device_get(after)
  for a, b in zip(jax.tree_util.tree_leaves(after.batch_stats),
                  jax.tree_util.tree_leaves(s.variables["batch_stats"])):
    np.testing.assert_array_equal(a, b)
  logits = step_lib.eval_step(s.model, s.variables, batch["image"])
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
  np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)


def test_sigmoid_loss_is_mean_bce_over_batch_and_classes():
  s = setup("resnet18")
  batch = dict(s.batches[0])
  batch["label"] = jnp.asarray([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]], jnp.float32)
  _, metrics = s.step({"head"}, bn_mode="frozen", loss="sigmoid")(
      s.state(), batch, jax.random.key(0))
  z = np.asarray(step_lib.eval_step(s.model, s.variables, batch["image"]), np.float64)
  y = np.asarray(batch["label"], np.float64)
  bce = np.mean(np.logaddexp(0, z) - y * z)  # -y log s(z) - (1 - y) log(1 - s(z))
  np.testing.assert_allclose(metrics["loss"], bce, rtol=1e-5)
  with pytest.raises(ValueError, match="loss"):
    step_lib.make_train_step(s.model, s.strategy, {"head"}, loss="hinge")


def test_bn_mode_frozen_trains_bn_of_trainable_modules_only():
  s = setup("resnet18")
  after = s.run([{"head", "layer4"}], bn_mode="frozen")[-1]
  before = s.variables["batch_stats"]
  for name in ("stem", "layer1", "layer2", "layer3"):
    for a, b in zip(jax.tree_util.tree_leaves(after.batch_stats[name]),
                    jax.tree_util.tree_leaves(before[name])):
      np.testing.assert_array_equal(a, b, err_msg=name)
  assert not np.array_equal(after.batch_stats["layer4"]["0"]["bn1"]["mean"],
                            before["layer4"]["0"]["bn1"]["mean"])


# ------------------------------------------------------------------ 6. LP has no backbone backward


def test_lp_step_has_no_backbone_backward():
  s = setup("resnet18")
  state, batch, rng = s.state(), s.batches[0], jax.random.key(0)

  def convs(trainable):
    jaxpr = s.step(trainable).trace(state, batch, rng).jaxpr
    return str(jaxpr).count("conv_general_dilated")

  forward = str(jax.make_jaxpr(
      lambda v, x: s.model.apply(v, x, train=True, mutable=["batch_stats"]))(
          s.variables, batch["image"])).count("conv_general_dilated")
  assert forward == 20  # resnet18: 17 convs + 3 downsample convs
  assert convs({"head"}) == forward
  assert convs(ALL_RESNET) > 2 * forward  # input and kernel gradients
  grad_fn = step_lib.make_grad_fn(s.model, {"head"})
  _, grads = jax.eval_shape(grad_fn, s.variables["params"], s.variables["batch_stats"],
                            batch, rng)
  assert set(grads) == {"head"}


def test_rgn_every_step_uses_this_batch_gradients():
  s = setup("resnet18")
  strategy = get_strategy("auto_rgn", s.arch, {"lr": LR, "rgn_every": "step"})
  state = step_lib.create_train_state(strategy, s.variables)
  batch = s.batches[0]
  train_step = step_lib.make_train_step(s.model, strategy, ALL_RESNET, compiler_options=FAST)
  after, _ = train_step(state, batch, jax.random.key(0))
  weights = jax.device_get(optax.tree_utils.tree_get(after.opt_state, "rgn_weights"))

  def loss(p):
    logits, _ = s.model.apply({"params": p, "batch_stats": s.variables["batch_stats"]},
                              batch["image"], train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

  grads = jax.device_get(jax.jit(jax.grad(loss))(s.variables["params"]))
  ratios = {}
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    names = [str(k.key) for k in path]
    if "bn" in names[-2] or names[-3:-1] == ["downsample", "1"]:
      continue
    p = dict(jax.tree_util.tree_leaves_with_path(s.variables["params"]))[path]
    ratios[path] = np.linalg.norm(g) / np.linalg.norm(p)
  top = max(ratios.values())
  for path, w in jax.tree_util.tree_leaves_with_path(weights):
    np.testing.assert_allclose(w, ratios[path] / top if path in ratios else 0.0, rtol=1e-4,
                               err_msg=jax.tree_util.keystr(path))


def test_bf16_compute_keeps_float32_params():
  s = setup("resnet18")
  after, metrics = s.step({"head", "layer4"}, compute_dtype=jnp.bfloat16)(
      s.state(), s.batches[0], jax.random.key(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(after.params))
  logits = step_lib.eval_step(s.model, s.variables, s.batches[0]["image"])
  assert np.isfinite(metrics["loss"])
  assert abs(float(metrics["loss"]) - float(optax.softmax_cross_entropy_with_integer_labels(
      logits, s.batches[0]["label"]).mean())) < 1.0


# ------------------------------------------------------------------ 4. vs PyTorch

torch = pytest.importorskip("torch")
torch_reference = pytest.importorskip("tests.torch_reference")


@pytest.fixture(scope="module")
def torch_setup():
  torch.use_deterministic_algorithms(True)
  torch.set_num_threads(1)
  s = Setup("resnet18")
  s.strategy = get_strategy("ft", s.arch, {"lr": TORCH_LR})
  return s


# lr 1e-5 (the smallest of the paper's grid) for the PyTorch comparisons. The
# same float32 model in two frameworks gives gradients that agree to ~1e-4
# relative (summation order). Adam's first step moves *every* element by +-lr
# whatever |g|, so elements whose gradient is at that noise level may move in
# opposite directions, and the following steps see slightly different
# networks. At lr 1e-3 on this tiny random ResNet-18 that cascade is chaotic:
# two PyTorch runs from weights 1e-6 apart already disagree on 20% of the
# elements after 3 steps. At lr 1e-5 the same experiment gives 0.02% of
# elements off by more than lr / 10 and a 1% difference in the global change,
# which sets the tolerances below (5x margin); any real difference (a frozen
# block moving, a stale Adam, a wrong penalty or lr scale) moves a large
# fraction of elements by ~lr.
TORCH_LR = 1e-5


def _compare(jax_vars, torch_model, label, lr=TORCH_LR, head_rtol=1e-3):
  """Params and running stats after a few Adam steps, ftjax vs PyTorch."""
  torch_vars = torch_reference.to_flax(torch_model)
  init = _random_variables(get_arch("resnet18"))
  far = count = 0
  diff2 = change2 = 0.0
  for collection in ("params", "batch_stats"):
    flat_j = dict(jax.tree_util.tree_leaves_with_path(jax_vars[collection]))
    flat_t = dict(jax.tree_util.tree_leaves_with_path(torch_vars[collection]))
    flat_0 = dict(jax.tree_util.tree_leaves_with_path(init[collection]))
    assert flat_j.keys() == flat_t.keys()
    for path, j in flat_j.items():
      j, t, w0 = np.asarray(j), np.asarray(flat_t[path]), np.asarray(flat_0[path])
      where = f"{label} {collection} {jax.tree_util.keystr(path)}"
      if collection == "batch_stats":
        np.testing.assert_allclose(j, t, rtol=1e-3, atol=1e-4, err_msg=where)
        continue
      if np.array_equal(t, w0):  # frozen in PyTorch: bitwise frozen in ftjax
        np.testing.assert_array_equal(j, w0, err_msg=where)
        continue
      assert np.all(np.abs(j - t) <= 10 * lr), where  # 3 steps of at most lr each way
      far += int(np.sum(np.abs(j - t) > 0.1 * lr))
      count += j.size
      diff2 += float(np.sum((j - t) ** 2))
      change2 += float(np.sum((t - w0) ** 2))
      if path[0].key == "head":  # no BatchNorm behind it: well conditioned
        rel = np.linalg.norm(j - t) / np.linalg.norm(t - w0)
        assert rel <= head_rtol, (where, rel)
  assert far <= 1e-3 * count, (label, far / count)
  assert diff2 <= 0.05 ** 2 * change2, (label, (diff2 / change2) ** 0.5)


def _torch_run(s, **kwargs):
  model = torch_reference.resnet18(s.variables, NUM_CLASSES)
  return torch_reference.train(model, s.batches, TORCH_LR, **kwargs)


def _run_strategy(s, strategy, phases):
  steps = {}
  state = step_lib.create_train_state(strategy, s.variables)
  for i, trainable in enumerate(phases):
    if trainable not in steps:
      steps[trainable] = step_lib.make_train_step(s.model, strategy, trainable,
                                                  compiler_options=FAST)
    state, _ = steps[trainable](state, s.batches[i], jax.random.key(i))
  state = jax.device_get(state)
  return {"params": state.params, "batch_stats": state.batch_stats}


def test_ft_matches_torch(torch_setup):
  s = torch_setup
  after = s.run([ALL_RESNET] * 3)[-1]
  _compare({"params": after.params, "batch_stats": after.batch_stats}, _torch_run(s), "ft")


def test_lp_matches_torch(torch_setup):
  s = torch_setup
  after = s.run([{"head"}] * 3)[-1]
  _compare({"params": after.params, "batch_stats": after.batch_stats},
           _torch_run(s, all_head_only=True), "lp")


def test_lp_ft_matches_torch_across_the_switch(torch_setup):
  s = torch_setup
  plan = get_strategy("lp_ft", "resnet18", {"lp_epochs": 2}).plan
  phases = [plan.trainable_at(epoch) for epoch in range(3)]  # one step per epoch
  assert phases == [{"head"}, {"head"}, ALL_RESNET]
  after = s.run(phases)[-1]
  _compare({"params": after.params, "batch_stats": after.batch_stats},
           _torch_run(s, head_only_steps=2), "lp_ft")


# Coefficients large enough to matter within 3 steps of lr 1e-5 (L2's
# gradient 2 alpha (w - w0) is ~alpha * 1e-5), and alpha != beta.
@pytest.mark.parametrize("name,norm,alpha,beta", [("l1_sp", "l1", 0.01, 0.02),
                                                  ("l2_sp", "l2", 100.0, 0.5)])
def test_sp_matches_torch(torch_setup, name, norm, alpha, beta):
  s = torch_setup
  strategy = get_strategy(name, "resnet18", {"lr": TORCH_LR, "alpha": alpha, "beta": beta})
  ours = _run_strategy(s, strategy, [ALL_RESNET] * 3)
  _compare(ours, _torch_run(s, sp=dict(alpha=alpha, beta=beta, norm=norm)), name)
  # The penalty changes the result: plain FT is far from it.
  with pytest.raises(AssertionError):
    _compare(ours, _torch_run(s), name)


def test_auto_rgn_matches_torch_across_an_epoch(torch_setup):
  s = torch_setup
  strategy = get_strategy("auto_rgn", "resnet18", {"lr": TORCH_LR, "rgn_batches": 2})
  train_step = step_lib.make_train_step(s.model, strategy, ALL_RESNET,
                                        compiler_options=FAST)
  probe = step_lib.make_rgn_probe(s.model, compiler_options=FAST)
  b = s.batches
  # (probe batches, train batches) per epoch: 3 steps, the third after the
  # epoch-1 probe and Adam's re-creation.
  epochs = [([b[0], b[1]], [b[0], b[1]]), ([b[2], b[0]], [b[2]])]
  state = step_lib.create_train_state(strategy, s.variables)
  jax_weights = []
  for probe_batches, train_batches in epochs:
    weights = probe(state, jax.tree_util.tree_map(lambda *x: jnp.stack(x), *probe_batches))
    jax_weights.append(jax.device_get(weights))
    state = step_lib.start_rgn_epoch(state, strategy, weights)
    for i, batch in enumerate(train_batches):
      state, _ = train_step(state, batch, jax.random.key(i))
  state = jax.device_get(state)
  model = torch_reference.resnet18(s.variables, NUM_CLASSES)
  model, torch_weights = torch_reference.train_auto_rgn(model, epochs, TORCH_LR)
  # Weights: flax paths -> torch names through the weight port's key mapping.
  arch = get_arch("resnet18")
  for jw, tw in zip(jax_weights, torch_weights):
    flat = {mapping.torch_key(arch, "params", tuple(str(k.key) for k in path)): float(v)
            for path, v in jax.tree_util.tree_leaves_with_path(jw)}
    for name, value in tw.items():
      np.testing.assert_allclose(flat[name], value, rtol=1e-3, err_msg=name)
    assert {k for k, v in flat.items() if v == 0.0} >= {
        k for k in flat if "bn" in k or "downsample.1" in k}
  # The head's lr carries its RGN weight, which agrees to ~1e-4..1e-3.
  _compare({"params": state.params, "batch_stats": state.batch_stats}, model, "auto_rgn",
           head_rtol=5e-3)

