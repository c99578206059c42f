"""llrd, bitfit and surgical: their groupings against timm / torchvision, three steps
against PyTorch on ResNet-18 (the tolerance rule of tests/test_step.py), and each
through ftjax.train and the vmapped multirun."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from ftjax.engine import group as multirun
from ftjax.engine import training
from ftjax import run as run_lib
from ftjax.models import get_arch, init_variables, variable_shapes
from ftjax.strategies import get_strategy
from ftjax.strategies.llrd import lr_scales
from ftjax.strategies.partial import bitfit_mask
from tests import torch_reference
from tests import torch_reference_partial as ref
from tests.test_step import (ALL_RESNET, NUM_CLASSES, TORCH_LR, _assert_matches,
                             _run_strategy, _torch_pair, _violations, torch_setup)
from tests.test_train import best_checkpoint, tiny_config
from weights_port import mapping


def _by_torch_name(arch_name, tree):
  """A params-shaped tree as {torch parameter name: leaf} (the weight port's names)."""
  arch = get_arch(arch_name)
  return {mapping.torch_key(arch, "params", tuple(str(k.key) for k in path)): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _meta_model(arch_name):
  with torch.device("meta"):
    return getattr(__import__("torchvision").models, arch_name)(num_classes=NUM_CLASSES)


# ----------------------------------------------------------------------- llrd


@pytest.mark.parametrize("arch_name", ["resnet50", "densenet121"])
@pytest.mark.parametrize("decay", [0.75, 0.6])
def test_llrd_scales_equal_timm_layer_decay(arch_name, decay):
  params = variable_shapes(arch_name, NUM_CLASSES)["params"]
  ours = _by_torch_name(arch_name, lr_scales(get_arch(arch_name).family, params, decay))
  timm = ref.timm_lr_scales(arch_name, decay, NUM_CLASSES)
  assert ours.keys() == timm.keys()
  wrong = {n: (s, timm[n]) for n, s in ours.items() if s != pytest.approx(timm[n], rel=1e-12)}
  assert not wrong, wrong


def test_llrd_scales_vgg_follow_its_layers():
  """VGG (not timm's): a group per convolution with its BatchNorm, then fc1, fc2, head."""
  params = variable_shapes("vgg11_bn", NUM_CLASSES)["params"]
  ours = _by_torch_name("vgg11_bn", lr_scales("vgg", params, 0.75))
  expected = ref.vgg_lr_scales(_meta_model("vgg11_bn"), 0.75)
  assert ours.keys() == expected.keys()
  assert all(ours[n] == pytest.approx(s, rel=1e-12) for n, s in expected.items())
  assert len(set(expected.values())) == 8 + 3  # eight convolutions, fc1, fc2, head


LLRD_DECAY = 0.5  # far from 1: a group's scale error shows within three steps


@functools.lru_cache(maxsize=None)
def _llrd_steps():
  """(setup, ftjax's three llrd steps on ResNet-18)."""
  s = torch_setup("resnet18")
  strategy = get_strategy("llrd", s.arch, {"lr": TORCH_LR, "llrd_decay": LLRD_DECAY})
  return s, _run_strategy(s, strategy, [ALL_RESNET] * 3)


def _llrd_reference(s, scales):
  return _torch_pair(s, lambda model: ref.train_llrd(model, s.batches, TORCH_LR, scales))


def test_llrd_matches_torch_adam_with_timm_groups():
  s, ours = _llrd_steps()
  _assert_matches(s, ours, _llrd_reference(s, ref.timm_lr_scales("resnet18", LLRD_DECAY)))


@pytest.mark.slow
def test_rule_tells_llrd_blocks_from_stages():
  """timm's coarse grouping (one group per layerN) against ftjax's fine one is caught."""
  s, ours = _llrd_steps()
  coarse = ref.timm_lr_scales("resnet18", LLRD_DECAY, coarse=True)
  bad = _violations(ours, *_llrd_reference(s, coarse), s.variables)
  assert any("layer" in m for m in bad), bad


# --------------------------------------------------------------------- bitfit


@pytest.mark.parametrize("arch_name", ["resnet18", "densenet121", "vgg11", "vgg11_bn"])
def test_bitfit_selects_biases_batchnorm_and_head(arch_name):
  params = variable_shapes(arch_name, NUM_CLASSES)["params"]
  ours = {n for n, keep in _by_torch_name(arch_name, bitfit_mask(params)).items() if keep}
  model = _meta_model(arch_name)
  assert ours == ref.bitfit_names(model, torch_reference.head_prefix(arch_name))


@functools.lru_cache(maxsize=None)
def _bitfit_steps():
  s = torch_setup("resnet18")
  strategy = get_strategy("bitfit", s.arch, {"lr": TORCH_LR})
  return s, _run_strategy(s, strategy, [ALL_RESNET] * 3)


def _selected_reference(s, select):
  """PyTorch's three steps with requires_grad on the names `select(model)` gives."""
  return _torch_pair(s, lambda model: ref.train_selected(
      model, s.batches, TORCH_LR, select(model)))


# Slow (PyTorch's float32 and float64 runs, ~30 s on 2 cores, and a compile);
# bitfit's bitwise freezing is checked in the default run by the test below
# and by the end-to-end test.
@pytest.mark.slow
def test_bitfit_matches_torch_requires_grad():
  s, ours = _bitfit_steps()
  # Kernels: bitwise unchanged on both sides (the rule's frozen-tensor check).
  _assert_matches(s, ours, _selected_reference(s, lambda m: ref.bitfit_names(m, "fc")))


@pytest.mark.slow
def test_rule_sees_bitfit_batchnorm_parameters():
  """A reference without the BatchNorm parameters (the head only) is caught."""
  s, ours = _bitfit_steps()
  bad = _violations(ours, *_selected_reference(s, lambda m: ref.names_under(m, ("fc.",))),
                    s.variables)
  assert any("bn" in m and "moved" in m for m in bad), bad


def test_bitfit_keeps_kernel_bits_negative_zero_included():
  """A kernel holding -0.0 and +0.0 keeps its bits; biases and scales move."""
  strategy = get_strategy("bitfit", "resnet18", {"lr": 1e-3})
  kernel = np.array([-0.0, 0.0, 1.5, -2.0], np.float32)
  params = {"stem": {"conv1": {"kernel": jnp.asarray(kernel)},
                     "bn1": {"scale": jnp.ones(4), "bias": jnp.zeros(4)}},
            "head": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)}}
  grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.5), params)

  @jax.jit
  def step(params, opt_state):
    updates, opt_state = strategy.transform.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  new, _ = step(params, strategy.transform.init(params))
  new = jax.device_get(new)
  np.testing.assert_array_equal(new["stem"]["conv1"]["kernel"].view(np.uint32),
                                kernel.view(np.uint32))
  moved = [new["stem"]["bn1"]["scale"] - 1.0, new["stem"]["bn1"]["bias"],
           new["head"]["kernel"] - 1.0, new["head"]["bias"]]
  assert all(np.all(delta != 0) for delta in moved)


# ------------------------------------------------------------------- surgical


@pytest.mark.slow  # its plan is checked below; gated Adam on a plan by tests/test_step.py
@pytest.mark.parametrize("block,torch_prefixes", [("first", ("conv1.", "bn1.", "fc."))])
def test_surgical_matches_torch_requires_grad(block, torch_prefixes):
  s = torch_setup("resnet18")
  strategy = get_strategy("surgical", s.arch, {"lr": TORCH_LR, "surgical_block": block})
  trainable = frozenset(strategy.plan.trainable_at(0))
  ours = _run_strategy(s, strategy, [trainable] * 3)
  _assert_matches(s, ours, _selected_reference(
      s, lambda model: ref.names_under(model, torch_prefixes)))


@pytest.mark.parametrize("arch_name,block,expected", [
    ("resnet18", "first", {"stem", "head"}),
    ("resnet18", "last", {"layer4", "head"}),
    ("resnet18", "layer2", {"layer2", "head"}),
    ("densenet121", "transition2", {"transition2", "head"}),
    ("vgg11", "first", {"stage1", "head"}),
    ("vgg11", "last", {"classifier", "head"}),  # fc1 and fc2
])
def test_surgical_plan_trains_the_block_and_the_head(arch_name, block, expected):
  plan = get_strategy("surgical", arch_name, {"surgical_block": block}).plan
  assert len(plan.phases) == 1 and plan.trainable_at(0) == expected


@pytest.mark.parametrize("block", ["layer5", "head", "fc", ""])
def test_surgical_unknown_block_names_the_valid_ones(block):
  with pytest.raises(ValueError) as error:
    get_strategy("surgical", "resnet18", {"surgical_block": block})
  message = str(error.value)
  assert f"surgical_block {block!r}" in message
  for name in ("'first'", "'last'", "'stem'", "'layer1'", "'layer4'"):
    assert name in message


# ---------------------------------------------------------- train and multirun


def _leaves(params):
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def _kept_by_plan(strategy, params):
  """True where the (single-phase) plan trains the module."""
  trainable = strategy.plan.trainable_at(0)
  return {k: jax.tree_util.tree_map(lambda _: k in trainable, v) for k, v in params.items()}


def _frozen_paths(kept, strategy, params):
  """The parameter paths the strategy must leave bitwise as initialised."""
  return {path for path, keep in _leaves(kept(strategy, params)).items() if not keep}


# Small: the vmapped and the single program's float32 rounding stay within 1e-4.
E2E_LRS = (1e-4, 3e-4)
SLOW = pytest.mark.slow
# (strategy, what it trains or None for everything, marks of the train test):
# bitfit in the default run (its masked optimizer state goes through the
# checkpoints); the others' plans are the freezing strategies' (and
# tests/test_train.py runs every strategy through train).
E2E_CASES = [("llrd", None, SLOW),
             ("bitfit", lambda strategy, params: bitfit_mask(params), ()),
             ("surgical", _kept_by_plan, SLOW)]


def _check_best_checkpoint(workdir, config, kept):
  """Frozen parameters bitwise as initialised in the best checkpoint, others moved."""
  arch = get_arch(config.arch)
  initial_params = jax.device_get(
      init_variables(arch, jax.random.key(config.seed), 4))["params"]
  initial = _leaves(initial_params)
  frozen = set() if kept is None else _frozen_paths(
      kept, get_strategy(config.strategy, arch, config.strategy_options), initial_params)
  assert bool(frozen) == (kept is not None)
  best = _leaves(best_checkpoint(workdir, config)[1]["params"])
  for path in frozen:
    np.testing.assert_array_equal(best[path], initial[path], err_msg=f"{workdir}: {path}")
  assert any(not np.array_equal(best[p], initial[p]) for p in set(best) - frozen), workdir


@pytest.mark.parametrize("strategy,kept", [
    pytest.param(name, kept, marks=marks) for name, kept, marks in E2E_CASES])
def test_train_writes_results_and_keeps_frozen_parameters(strategy, kept, data_dir,
                                                          tmp_path):
  config = tiny_config(data_dir, strategy, lr=E2E_LRS[0])
  results = training.train_and_evaluate(config, tmp_path)
  assert json.loads((tmp_path / "results.json").read_text()) == results
  assert results["strategy"] == strategy and results["epochs_run"] == config.num_epochs
  _check_best_checkpoint(tmp_path, config, kept)


@pytest.mark.slow
@pytest.mark.parametrize("strategy,kept", [case[:2] for case in E2E_CASES])
def test_multirun_group_equals_runs_alone(strategy, kept, data_dir, tmp_path):
  config = tiny_config(data_dir, strategy, lr=E2E_LRS[0])
  group = multirun.train_group(config, E2E_LRS, [config.seed], tmp_path / "group")
  for run_config, result in zip(multirun.run_configs(config, E2E_LRS, [config.seed]), group):
    workdir = tmp_path / "group" / run_lib.relative_path(
        run_config.dataset, run_config.arch, run_config.strategy, run_config.lr,
        run_config.seed)
    assert json.loads((workdir / "results.json").read_text()) == result
    assert result["lr"] == run_config.lr
    _check_best_checkpoint(workdir, run_config, kept)
  alone = training.train_and_evaluate(config, tmp_path / "alone")
  assert group[0]["test"]["loss"] == pytest.approx(alone["test"]["loss"], rel=1e-4)


@pytest.mark.slow
def test_interrupted_bitfit_run_resumes_exactly(data_dir, tmp_path):
  """bitfit's optimizer state (Adam on the selected leaves only) survives a checkpoint."""
  config = tiny_config(data_dir, "bitfit", num_epochs=2)
  straight = training.train_and_evaluate(config, tmp_path / "straight")
  assert training.train_and_evaluate(config, tmp_path / "sliced", max_epochs_this_call=1) is None
  resumed = training.train_and_evaluate(config, tmp_path / "sliced")
  assert {k: resumed[k] for k in ("validation", "test")} == {
      k: straight[k] for k in ("validation", "test")}
  a, b = (_leaves(best_checkpoint(tmp_path / name, config)[1])
          for name in ("straight", "sliced"))
  for path in a:
    np.testing.assert_array_equal(a[path], b[path], err_msg=path)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")
