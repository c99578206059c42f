"""The Flax model zoo against torchvision: sizes, partitions, logits, BatchNorm."""

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ftjax.models import pretrained, registry
from tests.helpers import torch_models
from weights_port import mapping

# The paper's CNN families; tests/test_models_vit.py covers the ViTs and
# tests/test_models_convnets.py ConvNeXt and EfficientNet.
ALL_ARCHS = [name for name, arch in registry.ARCHS.items()
             if arch.family not in ("vit", "convnext", "efficientnet")]


def _images(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_param_count_equals_torchvision(arch):
  model = torch_models.random_model(arch)
  expected = sum(p.numel() for p in model.parameters())
  assert registry.param_count(arch) == expected


def test_paper_param_counts():
  # The counts torchvision documents for the paper's three architectures.
  assert registry.param_count("resnet50") == 25_557_032
  assert registry.param_count("densenet121") == 7_978_856
  assert registry.param_count("vgg19") == 143_667_240


@pytest.mark.parametrize("arch,num_blocks", [("resnet50", 6), ("densenet121", 9),
                                             ("vgg19", 6)])
def test_paper_block_partition(arch, num_blocks):
  spec = registry.get_arch(arch)
  assert len(spec.blocks) == num_blocks
  params = registry.variable_shapes(arch)["params"]
  modules = [m for block in spec.blocks for m in block.modules]
  # Every top-level module belongs to exactly one block, and the head is last.
  assert sorted(modules) == sorted(params)
  assert spec.blocks[-1].modules[-1] == "head"
  assert sum(registry.block_param_counts(arch).values()) == registry.param_count(arch)


def test_unknown_arch_lists_valid_names():
  with pytest.raises(ValueError, match="resnet50.*densenet121.*vgg19"):
    registry.get_arch("resnet49")


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_logits_match_torchvision_small_odd_size(arch):
  model = torch_models.random_model(arch, num_classes=7)
  images = _images((2, 3, 49, 67))
  reference, _ = torch_models.forward_with_blocks(model, images, {})
  variables = mapping.torch_to_flax(arch, torch_models.state_dict_numpy(model))
  logits = jax.jit(registry.get_arch(arch).build(7).apply)(
      variables, images.transpose(0, 2, 3, 1))
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  torch_models.assert_matches(logits, reference)


def _block_modules(arch, model):
  family = registry.get_arch(arch).family
  if family == "vgg":
    return torch_models.vgg_block_output_modules(model)
  return torch_models.BLOCK_OUTPUT_MODULES[family]


@pytest.mark.parametrize("arch", registry.PAPER_ARCHS)
def test_block_outputs_match_torchvision_odd_size(arch):
  model = torch_models.random_model(arch, num_classes=5)
  images = _images((2, 3, 97, 131), seed=1)
  block_modules = _block_modules(arch, model)
  reference, blocks = torch_models.forward_with_blocks(model, images, block_modules)
  variables = mapping.torch_to_flax(arch, torch_models.state_dict_numpy(model))
  apply = jax.jit(functools.partial(
      registry.get_arch(arch).build(5).apply,
      capture_intermediates=lambda module, method: len(module.path) == 1,
      mutable=["intermediates"]))
  logits, state = apply(variables, images.transpose(0, 2, 3, 1))
  torch_models.assert_matches(logits, reference)
  for block in block_modules:
    ours = state["intermediates"][block]["__call__"][0]
    assert ours.shape == blocks[block].shape, block
    torch_models.assert_matches(ours, blocks[block])


@pytest.mark.parametrize("arch", ["resnet18", "densenet121", "vgg11_bn"])
def test_train_mode_batchnorm_updates_like_torch(arch):
  model = torch_models.random_model(arch, num_classes=4, seed=3)
  variables = mapping.torch_to_flax(arch, torch_models.state_dict_numpy(model))
  images = _images((4, 3, 64, 48), seed=2) * 2.0 + 0.5
  train_model = copy.deepcopy(model)
  train_model.train()
  for module in train_model.modules():  # the test is about BatchNorm, not dropout
    if isinstance(module, torch.nn.Dropout):
      module.p = 0.0
  with torch.no_grad():
    reference = train_model(torch.from_numpy(images)).numpy()
  expected = mapping.torch_to_flax(arch, torch_models.state_dict_numpy(train_model))

  flax_model = registry.get_arch(arch).build(4).clone(**(
      {"dropout_rate": 0.0} if arch.startswith("vgg") else {}))
  apply = jax.jit(functools.partial(flax_model.apply, train=True, mutable=["batch_stats"]))
  logits, updated = apply(variables, images.transpose(0, 2, 3, 1),
                          rngs={"dropout": jax.random.key(0)})
  # Normalising by statistics of a few values amplifies float32 rounding in deep
  # layers (DenseNet's last block sees 2x1 pixels), hence 1e-3 here.
  torch_models.assert_matches(logits, reference, rel=1e-3)
  flat_ours = jax.tree_util.tree_leaves_with_path(updated["batch_stats"])
  flat_ref = dict(jax.tree_util.tree_leaves_with_path(expected["batch_stats"]))
  assert len(flat_ours) == len(flat_ref) > 0
  for path, value in flat_ours:
    np.testing.assert_allclose(value, flat_ref[path], rtol=1e-5, atol=1e-5,
                               err_msg=jax.tree_util.keystr(path))


def test_batchnorm_running_var_is_unbiased():
  # A hand-checkable case: 2 samples of 1x1 per channel, values 0 and 2.
  x = jnp.array([0.0, 2.0]).reshape(2, 1, 1, 1)
  from ftjax.models.layers import BatchNorm  # pylint: disable=import-outside-toplevel
  bn = BatchNorm()
  variables = bn.init(jax.random.key(0), x, use_running_average=False)
  y, state = bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  # Biased variance 1 normalises to -1, +1; the running variance uses 2 (n - 1 = 1).
  np.testing.assert_allclose(np.ravel(y), [-1.0, 1.0], atol=1e-4)
  np.testing.assert_allclose(state["batch_stats"]["mean"], [0.1 * 1.0], rtol=1e-6)
  np.testing.assert_allclose(state["batch_stats"]["var"], [0.9 * 1.0 + 0.1 * 2.0], rtol=1e-6)


def test_bf16_compute_keeps_float32_params_and_close_logits():
  model = torch_models.random_model("resnet18", num_classes=3)
  variables = mapping.torch_to_flax("resnet18", torch_models.state_dict_numpy(model))
  images = _images((2, 64, 64, 3))
  spec = registry.get_arch("resnet18")
  f32 = jax.jit(spec.build(3).apply)(variables, images)
  bf16 = jax.jit(spec.build(3, dtype=jnp.bfloat16).apply)(variables, images)
  assert bf16.dtype == jnp.float32  # logits leave the model in float32
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))
  # bf16 has an 8-bit mantissa: agreement to a few percent of the logit scale.
  assert np.max(np.abs(bf16 - f32)) < 0.05 * max(1.0, float(np.max(np.abs(f32))))


def test_head_init_matches_torch_linear_bounds():
  params = pretrained.new_head(jax.random.key(0), 512, 10)
  bound = 1.0 / np.sqrt(512)  # nn.Linear(512, 10): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  for leaf in (params["kernel"], params["bias"]):
    assert np.max(np.abs(leaf)) <= bound
  # A uniform draw of 5,120 values fills its range; a normal or zero init would not.
  assert np.max(params["kernel"]) > 0.95 * bound and np.min(params["kernel"]) < -0.95 * bound
  assert abs(float(np.std(params["kernel"])) - bound / np.sqrt(3)) < 0.05 * bound
