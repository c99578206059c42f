"""ConvNeXt and EfficientNet against torchvision and timm: logits and block outputs through
the converter and the loader, BatchNorm updates, bf16, stochastic depth, the converter's
errors, and what the strategies make of them."""

import copy
import functools
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from ftjax.models import convnext, efficientnet, load_pretrained, registry
from ftjax.strategies import get_strategy
from ftjax.strategies.llrd import lr_scales
from ftjax.strategies.partial import bitfit_mask
from tests.helpers import torch_models
from weights_port import __main__ as cli
from weights_port import mapping

ROOT = pathlib.Path(__file__).resolve().parents[1]
slow = pytest.mark.slow

# torch module whose output is each ftjax block's output, per (family, layout).
BLOCK_OUTPUTS = {
    ("convnext", "torchvision"): {"stem": "features.0", "stage1": "features.1",
                                  "stage2": "features.3", "stage3": "features.5",
                                  "stage4": "classifier.1"},
    ("convnext", "timm"): {"stem": "stem", "stage1": "stages.0", "stage2": "stages.1",
                           "stage3": "stages.2", "stage4": "head.flatten"},
    ("efficientnet", "torchvision"): {"stem": "features.0",
                                      **{f"stage{i}": f"features.{i}" for i in range(1, 7)},
                                      "stage7": "features.8"},
}


def _images(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _give_torch_the_head(model, arch, layout, head):
  """Replaces the torch classifier by a Linear holding ftjax's new head."""
  name = mapping.torch_key(arch, "params", ("head", "kernel"), layout).rpartition(".")[0]
  new = torch.nn.Linear(*head["kernel"].shape)
  with torch.no_grad():
    new.weight.copy_(torch.from_numpy(np.array(head["kernel"]).T))
    new.bias.copy_(torch.from_numpy(np.array(head["bias"])))
  parent, _, leaf = name.rpartition(".")
  setattr(model.get_submodule(parent), leaf, new)


def _convert_with_cli(model, arch, src_name, tmp_path, capsys):
  src = tmp_path / src_name
  torch.save(model.state_dict(), src)
  assert cli.main(["convert", "--arch", arch, "--src", str(src),
                   "--out", str(tmp_path / "weights" / arch)]) == 0
  os.remove(src)  # the converted directory must stand on its own
  return capsys.readouterr().out


# .pth -> CLI -> orbax -> load_pretrained with a new head, then the whole network and
# every block's output must agree with the torch model given the same head.
@pytest.mark.parametrize("arch,source,size", [
    ("convnext_tiny", "torchvision", (45, 70)),
    ("convnext_tiny", "timm", (45, 70)),  # the same size: one compilation (cached)
    ("efficientnet_b0", "torchvision", (45, 70)),
    pytest.param("convnext_small", "torchvision", (97, 131), marks=slow),
    pytest.param("convnext_base", "torchvision", (224, 224), marks=slow),
    pytest.param("convnext_small", "timm", (131, 97), marks=slow),
    pytest.param("efficientnet_b4", "torchvision", (97, 131), marks=slow),
    pytest.param("efficientnet_b0", "torchvision", (224, 224), marks=slow),
])
def test_converted_weights_match_torch_logits_and_blocks(arch, source, size, tmp_path,
                                                         capsys):
  model = copy.deepcopy(torch_models.random_model(arch, source=source))
  src_name = "pytorch_model.bin" if source == "timm" else f"{arch}.pth"
  out = _convert_with_cli(model, arch, src_name, tmp_path, capsys)
  assert f"Found {source}'s key layout" in out
  flax_model, variables = load_pretrained(arch, tmp_path / "weights", num_classes=3,
                                          rng=jax.random.key(7))
  _give_torch_the_head(model, registry.get_arch(arch), source, variables["params"]["head"])
  images = _images((2, 3, *size))
  family = registry.get_arch(arch).family
  reference, blocks = torch_models.forward_with_blocks(model, images,
                                                       BLOCK_OUTPUTS[(family, source)])
  apply = jax.jit(functools.partial(
      flax_model.apply, capture_intermediates=lambda module, _: len(module.path) == 1,
      mutable=["intermediates"]))
  logits, state = apply(variables, images.transpose(0, 2, 3, 1))
  assert logits.shape == (2, 3) and logits.dtype == jnp.float32
  torch_models.assert_matches(logits, reference)
  for block, expected in blocks.items():
    ours = state["intermediates"][block]["__call__"][0]
    assert ours.shape == expected.shape, block
    torch_models.assert_matches(ours, expected)


@pytest.mark.parametrize("arch", ["convnext_tiny", "efficientnet_b0",
                                  *[pytest.param(a, marks=slow) for a in
                                    ("convnext_small", "convnext_base", "efficientnet_b4")]])
def test_param_count_and_blocks(arch):
  with torch.device("meta"):
    expected = sum(p.numel() for p in getattr(torchvision.models, arch)().parameters())
  assert registry.param_count(arch) == expected
  spec = registry.get_arch(arch)
  stages = 4 if spec.family == "convnext" else 7
  assert spec.block_names == ("stem", *(f"stage{i}" for i in range(1, stages + 1)), "head")
  params = registry.variable_shapes(arch)["params"]
  assert sorted(m for b in spec.blocks for m in b.modules) == sorted(params)
  assert sum(registry.block_param_counts(arch).values()) == expected


def test_efficientnet_train_mode_batchnorm_updates_like_torch():
  model = copy.deepcopy(torch_models.random_model("efficientnet_b0", num_classes=4, seed=3))
  variables = mapping.torch_to_flax("efficientnet_b0", torch_models.state_dict_numpy(model))
  model.train()
  for module in model.modules():  # the test is about BatchNorm: no dropout, no drop path
    if hasattr(module, "p"):
      module.p = 0.0
  images = _images((4, 3, 40, 32), seed=2) * 2.0 + 0.5
  with torch.no_grad():
    reference = model(torch.from_numpy(images)).numpy()
  expected = mapping.torch_to_flax("efficientnet_b0", torch_models.state_dict_numpy(model))
  flax_model = registry.get_arch("efficientnet_b0").build(4).clone(dropout_rate=0.0)
  logits, updated = jax.jit(functools.partial(flax_model.apply, train=True,
                                              mutable=["batch_stats"]))(
      variables, images.transpose(0, 2, 3, 1))
  torch_models.assert_matches(logits, reference, rel=1e-3)  # statistics of few values
  ours = jax.tree_util.tree_leaves_with_path(updated["batch_stats"])
  reference_stats = dict(jax.tree_util.tree_leaves_with_path(expected["batch_stats"]))
  assert len(ours) == len(reference_stats) == 49 * 2
  for path, value in ours:
    np.testing.assert_allclose(value, reference_stats[path], rtol=1e-5, atol=1e-5,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("arch", ["efficientnet_b0", pytest.param("convnext_tiny",
                                                                  marks=slow)])
def test_bf16_compute_keeps_float32_params_and_close_logits(arch):
  model = torch_models.random_model(arch, num_classes=3)
  variables = mapping.torch_to_flax(arch, torch_models.state_dict_numpy(model))
  images = _images((2, 48, 40, 3))
  spec = registry.get_arch(arch)
  f32 = jax.jit(spec.build(3).apply)(variables, images)
  bf16 = jax.jit(spec.build(3, dtype=jnp.bfloat16).apply)(variables, images)
  assert bf16.dtype == jnp.float32
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))
  assert np.max(np.abs(bf16 - f32)) < 0.05 * max(1.0, float(np.max(np.abs(f32))))


# ------------------------------------------------------------- stochastic depth


def _ragged(rates):
  """Per-stage lists as one array, stage boundaries marked by -1."""
  return np.concatenate([np.asarray(r + [-1.0]) for r in rates])


def test_stochastic_depth_schedules_equal_torchvision():
  with torch.device("meta"):
    cn = torchvision.models.convnext_tiny(stochastic_depth_prob=0.3)
    en = torchvision.models.efficientnet_b4(stochastic_depth_prob=0.3)
  torch_rates = [[m.stochastic_depth.p for m in stage]
                 for stage in (cn.features[i] for i in (1, 3, 5, 7))]
  np.testing.assert_allclose(_ragged(convnext.drop_path_rates((3, 3, 9, 3), 0.3)),
                             _ragged(torch_rates), rtol=1e-12)
  torch_rates = [[m.stochastic_depth.p for m in en.features[i]] for i in range(1, 8)]
  stages = efficientnet.scaled_stages(1.4, 1.8)
  np.testing.assert_allclose(_ragged(efficientnet.drop_path_rates(stages, 0.3)),
                             _ragged(torch_rates), rtol=1e-12)


def test_stochastic_depth_drops_whole_samples_and_is_off_by_default():
  block = convnext.CNBlock(8, drop_path_rate=0.5)
  x = jnp.asarray(_images((64, 5, 5, 8)))
  variables = block.init(jax.random.key(0), x, train=False)
  variables = jax.tree_util.tree_map(lambda v: v + 0.5, variables)  # a visible branch
  branch = block.apply(variables, x, train=False) - x
  out = block.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
  kept = np.all(np.isclose(out, x + 2.0 * branch, atol=1e-5), axis=(1, 2, 3))
  dropped = np.all(np.isclose(out, x, atol=1e-6), axis=(1, 2, 3))
  assert np.all(kept ^ dropped) and 16 < kept.sum() < 48  # per sample, rate 0.5
  off = convnext.CNBlock(8)  # the default: no rng needed, train == eval
  np.testing.assert_array_equal(off.apply(variables, x, train=True), x + branch)


# ------------------------------------------------------------- converter errors


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("timm") / "pytorch_model.bin"
  torch.save(torch_models.random_model("convnext_tiny", source="timm").state_dict(), path)
  return path


def _convert_error(src, arch, tmp_path, capsys) -> str:
  code = cli.main(["convert", "--arch", arch, "--src", str(src),
                   "--out", str(tmp_path / "o")])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1 and len(err) == 1 and err[0].startswith("error: ")
  assert f"{src.name}: " in err[0]  # the file is named
  assert not (tmp_path / "o" / "manifest.json").exists()
  return err[0]


def test_other_arch_is_named(timm_file, tmp_path, capsys):
  err = _convert_error(timm_file, "efficientnet_b0", tmp_path, capsys)
  assert "does not match torchvision's efficientnet_b0" in err
  assert "looks like a convnext_tiny checkpoint" in err


@pytest.mark.parametrize("edit,differs", [
    (lambda sd: sd.pop("stages.2.blocks.3.gamma"), "Missing (1): stages.2.blocks.3.gamma."),
    (lambda sd: sd.__setitem__("head.extra", torch.zeros(3)), "Unexpected (1): head.extra."),
])
def test_missing_or_extra_key_is_named(timm_file, edit, differs, tmp_path, capsys):
  state = torch.load(timm_file, weights_only=True)
  edit(state)
  src = tmp_path / "edited.bin"
  torch.save(state, src)
  err = _convert_error(src, "convnext_tiny", tmp_path, capsys)
  assert "does not match timm's convnext_tiny" in err and differs in err


def test_hash_is_checked_for_torchvision_names_only(timm_file, tmp_path, capsys):
  assert cli.main(["convert", "--arch", "convnext_tiny", "--src", str(timm_file),
                   "--out", str(tmp_path / "a")]) == 0
  assert "not checked (no hash in the file name)" in capsys.readouterr().out
  assert json.loads((tmp_path / "a" / "manifest.json").read_text())["hash_checked"] is False
  sha = hashlib.sha256(timm_file.read_bytes()).hexdigest()
  named = tmp_path / f"convnext_tiny-{sha[:8]}.pth"
  named.write_bytes(timm_file.read_bytes())
  assert cli.main(["convert", "--arch", "convnext_tiny", "--src", str(named),
                   "--out", str(tmp_path / "b")]) == 0
  assert "matches the hash in the file name" in capsys.readouterr().out
  wrong = tmp_path / "convnext_tiny-983f1562.pth"  # torchvision's name, other content
  wrong.write_bytes(timm_file.read_bytes())
  assert "corrupt" in _convert_error(wrong, "convnext_tiny", tmp_path, capsys)


@slow
def test_verify_uses_timm_for_a_timm_file(timm_file, tmp_path, capsys):
  assert cli.main(["convert", "--arch", "convnext_tiny", "--src", str(timm_file),
                   "--out", str(tmp_path / "w")]) == 0
  code = cli.main(["verify", "--arch", "convnext_tiny", "--src", str(timm_file),
                   "--weights", str(tmp_path / "w"), "--size", "45", "70"])
  assert code == 0 and "OK" in capsys.readouterr().out


# ------------------------------------------------------------- strategies


def test_batchnorm_options_that_cannot_apply_are_refused():
  with pytest.raises(ValueError, match=r"^bn_mode='frozen' cannot apply: convnext_tiny "
                                       r"has no BatchNorm"):
    get_strategy("lp", "convnext_tiny", {"bn_mode": "frozen"})
  with pytest.raises(ValueError, match=r"^rgn_bn='include' cannot apply: convnext_tiny"):
    get_strategy("auto_rgn", "convnext_tiny", {"rgn_bn": "include"})
  get_strategy("auto_rgn", "convnext_tiny")  # the defaults change nothing there
  get_strategy("auto_rgn", "efficientnet_b0", {"rgn_bn": "include", "bn_mode": "frozen"})


def test_llrd_groups_equal_timm_layer_decay():
  from tests.helpers import torch_reference_partial as ref  # pylint: disable=import-outside-toplevel
  arch = registry.get_arch("convnext_tiny")
  scales = lr_scales("convnext", registry.variable_shapes(arch, 3)["params"], 0.7)
  ours = {mapping.torch_key(arch, "params", tuple(str(k.key) for k in path), "timm"): s
          for path, s in jax.tree_util.tree_leaves_with_path(scales)}
  timm = ref.timm_lr_scales("convnext_tiny", 0.7, 3)
  assert ours.keys() == timm.keys()
  assert {n: s for n, s in ours.items() if s != pytest.approx(timm[n])} == {}
  # EfficientNet's timm names differ from torchvision's: compare each group's size.
  params = registry.variable_shapes("efficientnet_b0", 3)["params"]
  sizes = {}
  for leaf, scale in zip(jax.tree_util.tree_leaves(params),
                         jax.tree_util.tree_leaves(lr_scales("efficientnet", params, 0.7))):
    sizes[round(scale, 9)] = sizes.get(round(scale, 9), 0) + int(np.prod(leaf.shape))
  timm_sizes = {}
  timm_model = __import__("timm").create_model("efficientnet_b0", num_classes=3)
  for name, s in ref.timm_lr_scales("efficientnet_b0", 0.7, 3).items():
    numel = timm_model.get_parameter(name).numel()
    timm_sizes[round(s, 9)] = timm_sizes.get(round(s, 9), 0) + numel
  assert sizes == timm_sizes and len(sizes) == 18  # stem, 16 blocks, head


def test_bitfit_on_convnext_trains_biases_and_layernorm_affine_only():
  model = torch_models.random_model("convnext_tiny")
  norms = {name for name, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}
  expected = {n for n, _ in model.named_parameters()
              if n.endswith(".bias") or n.rpartition(".")[0] in norms or
              n.startswith("classifier.2.")}
  arch = registry.get_arch("convnext_tiny")
  mask = bitfit_mask(registry.variable_shapes(arch)["params"])
  ours = {mapping.torch_key(arch, "params", tuple(str(k.key) for k in path))
          for path, on in jax.tree_util.tree_leaves_with_path(mask) if on}
  assert ours == expected and not any("layer_scale" in n for n in ours)


# ------------------------------------------------------------- training CLI


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


@pytest.mark.parametrize("arch,strategy", [
    ("convnext_tiny", "ft"), ("efficientnet_b0", "bitfit"),
    *[pytest.param("convnext_tiny", s, marks=slow)
      for s in ("lp", "lp_ft", "g_fl", "bitfit", "auto_rgn")],
    *[pytest.param("efficientnet_b0", s, marks=slow)
      for s in ("ft", "lp", "lp_ft", "g_fl", "auto_rgn")],
])
def test_train_cli_runs_one_epoch(arch, strategy, data_dir, tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
         "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or ""}
  epochs = 2 if strategy in ("lp_ft", "g_fl") else 1  # reach their second phase
  flags = [f"--config.arch={arch}", f"--config.strategy={strategy}",
           f"--config.data_dir={data_dir}", "--config.dataset_options.num_train=48",
           "--config.dataset_options.num_test=16", "--config.resize=36",
           "--config.crop=32", "--config.batch_size=16", "--config.eval_batch_size=16",
           f"--config.num_epochs={epochs}", "--config.progress=False",
           "--config.strategy_options.lp_epochs=1", "--config.strategy_options.rgn_batches=2"]
  proc = subprocess.run([sys.executable, "-m", "ftjax.train", "--config=configs/demo.py",
                         *flags, f"--workdir={tmp_path / 'run'}"], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results["arch"] == arch and results["strategy"] == strategy
  assert results["epochs_run"] == epochs
  assert 0.0 <= results["test"]["accuracy"] <= 1.0
