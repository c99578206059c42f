"""Vision Transformers against timm and torchvision: sizes, partitions, logits, the port."""

import copy
import functools
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

from ftjax.models import load_pretrained, pos_embed, registry, vit
from ftjax.strategies.llrd import lr_scales
from tests.helpers import torch_models
from tests.helpers import torch_reference_partial as ref
from weights_port import __main__ as cli
from weights_port import mapping, vit_mapping

VITS = [name for name, arch in registry.ARCHS.items() if arch.family == "vit"]
TORCHVISION_VITS = [n for n in VITS if registry.get_arch(n).source == "torchvision"]


def _images(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """Non-trivial norms, tokens, position embedding, LayerScale and head: freshly
  initialised ones are near 0 or 1 and would hide a wrong mapping of them."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if param.ndim == 1 or "token" in name or "pos_" in name or "head" in name:
        centre = 1.0 if name.endswith(("norm1.weight", "norm2.weight", "norm.weight",
                                       "ln_1.weight", "ln_2.weight", "ln.weight")) else 0.0
        std = 0.3 if param.ndim == 1 else 0.5
        param.copy_(centre + std * torch.randn(param.shape, generator=generator))
  return model.eval()


@functools.lru_cache(maxsize=None)
def timm_model(name: str, num_classes: int = 1000, seed: int = 0) -> torch.nn.Module:
  torch.manual_seed(seed)
  model = timm.create_model(name, pretrained=False, num_classes=num_classes,
                            dynamic_img_size=True)
  return _randomise(model, seed)


@functools.lru_cache(maxsize=None)
def torchvision_model(name: str, num_classes: int = 1000, **small) -> torch.nn.Module:
  torch.manual_seed(0)
  if small:
    model = torchvision.models.vision_transformer.VisionTransformer(num_classes=num_classes,
                                                                     **small)
  else:
    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
  return _randomise(model)


def _torch_logits(model, images):
  with torch.no_grad():
    return model(torch.from_numpy(images)).numpy()


def _flax_logits(arch, variables, images, num_classes, **build):
  arch = registry.get_arch(arch) if isinstance(arch, str) else arch
  return jax.jit(arch.build(num_classes, **build).apply)(variables, images.transpose(0, 2, 3, 1))


# --------------------------------------------------------------- registry


def _reference_meta(name):
  with torch.device("meta"):
    if name in TORCHVISION_VITS:
      return getattr(torchvision.models, name)(weights=None)
    return timm.create_model(name, pretrained=False, num_classes=1000)


@pytest.mark.parametrize("name", VITS)
def test_param_count_equals_reference(name):
  expected = sum(p.numel() for p in _reference_meta(name).parameters())
  assert registry.param_count(name) == expected


@pytest.mark.parametrize("name", VITS)
def test_block_partition_covers_the_model(name):
  spec = registry.get_arch(name)
  params = registry.variable_shapes(name)["params"]
  modules = [m for block in spec.blocks for m in block.modules]
  assert sorted(modules) == sorted(params)  # each top-level module in one block
  assert spec.block_names == ("stem", "encoder1", "encoder2", "encoder3", "encoder4", "head")
  depth = spec.build(1).config.depth
  assert spec.blocks[4].modules[-1] == "norm" and len(spec.blocks[1].modules) == depth // 4
  assert sum(registry.block_param_counts(name).values()) == registry.param_count(name)


@pytest.mark.parametrize("decay", [0.75, 0.5])
def test_llrd_scales_equal_timm_layer_decay(decay):
  name = "vit_tiny_patch16_224"
  params = registry.variable_shapes(name, 3)["params"]
  scales = lr_scales("vit", params, decay)
  arch = registry.get_arch(name)
  ours = {vit_mapping.torch_key(arch, tuple(str(k.key) for k in path)): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(scales)}
  timm_scales = ref.timm_lr_scales(name, decay, 3)
  assert ours.keys() == timm_scales.keys()
  assert all(ours[n] == pytest.approx(s, rel=1e-12) for n, s in timm_scales.items())


# ------------------------------------------------------ position embedding


@pytest.mark.parametrize("old,new", [((14, 14), (2, 2)), ((14, 14), (4, 3)),
                                     ((37, 37), (4, 3)), ((14, 14), (20, 17)),
                                     ((3, 5), (7, 2)), ((37, 37), (37, 16))])
def test_resampling_equals_torch_antialiased_bicubic(old, new):
  grid = _images((1, 8, *old), seed=3)
  reference = F.interpolate(torch.from_numpy(grid), size=new, mode="bicubic",
                            align_corners=False, antialias=True).numpy()
  ours = pos_embed.resample_grid(grid.transpose(0, 2, 3, 1), new)
  np.testing.assert_allclose(np.asarray(ours).transpose(0, 3, 1, 2), reference, atol=1e-5)


def test_resampling_keeps_the_class_token_and_the_native_grid():
  table = _images((1, 1 + 4 * 4, 6), seed=4)
  same = pos_embed.resample_pos_embed(jnp.asarray(table), (4, 4), (4, 4))
  np.testing.assert_array_equal(same, table)
  smaller = pos_embed.resample_pos_embed(jnp.asarray(table), (4, 4), (2, 3))
  assert smaller.shape == (1, 1 + 2 * 3, 6)
  np.testing.assert_array_equal(smaller[:, 0], table[:, 0])


# ------------------------------------------------------------------ logits


@pytest.mark.parametrize("name,size", [
    ("vit_tiny_patch16_224", (32, 32)), ("vit_tiny_patch16_224", (64, 48)),
    ("vit_tiny_patch16_224", (48, 64)), ("vit_small_patch14_dinov2", (28, 28)),
    ("vit_small_patch14_dinov2", (56, 42))])
def test_logits_match_timm_at_any_patch_multiple(name, size):
  model = timm_model(name, num_classes=7)
  images = _images((2, 3, *size))
  variables = mapping.torch_to_flax(name, torch_models.state_dict_numpy(model))
  logits = _flax_logits(name, variables, images, 7)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  torch_models.assert_matches(logits, _torch_logits(model, images))


SMALL_TORCHVISION = dict(image_size=32, patch_size=16, num_layers=4, num_heads=2,
                         hidden_dim=64, mlp_dim=96)


def _small_torchvision_arch():
  config = vit.ViTConfig(16, 64, 4, 2, 96, image_size=32)
  module = functools.partial(vit.ViT, config=config, arch_name="small_vit")
  return registry.Arch("small_vit", "vit", module, (), registry.Preprocessing(32),
                       "small_vit.pth")


@pytest.mark.parametrize("legacy", [False, True])
def test_logits_match_torchvision_layout(legacy):
  model = torchvision_model("small", num_classes=5, **SMALL_TORCHVISION)
  state_dict = torch_models.state_dict_numpy(model)
  if legacy:  # torchvision's names before its MLPBlock version 2
    state_dict = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v
                  for k, v in state_dict.items()}
    assert any("linear_1" in k for k in state_dict)
  arch = _small_torchvision_arch()
  variables = mapping.torch_to_flax(arch, state_dict)
  images = _images((2, 3, 32, 32), seed=1)
  torch_models.assert_matches(_flax_logits(arch, variables, images, 5),
                              _torch_logits(model, images))
  back = mapping.flax_to_torch(arch, variables)
  assert back.keys() == torch_models.state_dict_numpy(model).keys()


def test_bf16_compute_keeps_float32_params_and_close_logits():
  name = "vit_tiny_patch16_224"
  variables = mapping.torch_to_flax(name, torch_models.state_dict_numpy(timm_model(name, 3)))
  images = _images((2, 3, 32, 32))
  f32 = _flax_logits(name, variables, images, 3)
  bf16 = _flax_logits(name, variables, images, 3, dtype=jnp.bfloat16)
  assert bf16.dtype == jnp.float32
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))
  assert np.max(np.abs(bf16 - f32)) < 0.05 * max(1.0, float(np.max(np.abs(f32))))


def test_dropout_and_drop_path_are_options_off_by_default():
  arch = _small_torchvision_arch()
  variables = registry.init_variables(arch, 0, 3)
  images = _images((4, 32, 32, 3))
  model = arch.build(3)
  rngs = {"dropout": jax.random.key(1)}
  eval_logits = model.apply(variables, images)
  np.testing.assert_array_equal(model.apply(variables, images, train=True, rngs=rngs),
                                eval_logits)
  for option in ("dropout_rate", "attention_dropout_rate", "drop_path_rate"):
    noisy = model.clone(**{option: 0.3}).apply(variables, images, train=True, rngs=rngs)
    assert np.max(np.abs(noisy - eval_logits)) > 1e-3, option


@pytest.mark.parametrize("size", [(30, 32), (32, 8), (100, 100)])
def test_input_not_a_patch_multiple_is_one_clear_error(size):
  model = registry.get_arch("vit_tiny_patch16_224").build(3)
  with pytest.raises(ValueError, match=rf"vit_tiny_patch16_224 .*16x16 patches.*"
                                       rf"got {size[0]}x{size[1]}"):
    model.init(jax.random.key(0), np.zeros((1, *size, 3), np.float32))


# ----------------------------------------------------------------- the port


def _convert(name, src, out, *extra):
  return cli.main(["convert", "--arch", name, "--src", str(src), "--out", str(out), *extra])


def _with_head(model, head):
  """A copy of the timm model with ftjax's new head."""
  model = copy.deepcopy(model)
  new = torch.nn.Linear(*np.asarray(head["kernel"]).shape)
  with torch.no_grad():
    new.weight.copy_(torch.from_numpy(np.array(head["kernel"]).T))
    new.bias.copy_(torch.from_numpy(np.array(head["bias"])))
  model.head = new
  return model.eval()


@pytest.mark.parametrize("name,suffix,size", [
    ("vit_tiny_patch16_224", ".pth", (48, 64)),
    ("vit_small_patch14_dinov2", ".safetensors", (56, 42))])
def test_cli_convert_then_load_pretrained_matches_timm(name, suffix, size, tmp_path):
  model = timm_model(name, num_classes=0 if "dinov2" in name else 1000)
  src = tmp_path / f"model{suffix}"
  state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
  torch.save(state_dict, src) if suffix == ".pth" else save_file(state_dict, src)
  assert _convert(name, src, tmp_path / "weights" / name) == 0
  src.unlink()  # the converted directory stands on its own

  manifest = json.loads((tmp_path / "weights" / name / "manifest.json").read_text())
  assert manifest["arch"] == name and manifest["source"] == src.name
  assert manifest["num_classes"] == (0 if "dinov2" in name else 1000)
  assert manifest["param_count"] == sum(p.numel() for p in model.parameters())
  flax_model, variables = load_pretrained(name, tmp_path / "weights", num_classes=3,
                                          rng=jax.random.key(5))
  images = _images((2, 3, *size), seed=2)
  logits = jax.jit(flax_model.apply)(variables, images.transpose(0, 2, 3, 1))
  reference = _torch_logits(_with_head(model, variables["params"]["head"]), images)
  torch_models.assert_matches(logits, reference)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("st") / "model.safetensors"
  save_file(dict(timm_model("vit_tiny_patch16_224").state_dict()), path)
  return path


def test_verify_and_sha256_of_a_safetensors_file(tiny_file, tmp_path, capsys):
  sha = hashlib.sha256(tiny_file.read_bytes()).hexdigest()
  out = tmp_path / "tiny"
  assert _convert("vit_tiny_patch16_224", tiny_file, out, "--sha256", sha[:12]) == 0
  assert json.loads((out / "manifest.json").read_text())["source_sha256"] == sha
  assert cli.main(["verify", "--arch", "vit_tiny_patch16_224", "--src", str(tiny_file),
                   "--weights", str(out), "--size", "64", "32"]) == 0
  assert "OK" in capsys.readouterr().out
  wrong = "0" * 12 if not sha.startswith("0") else "1" * 12
  assert _convert("vit_tiny_patch16_224", tiny_file, tmp_path / "x", "--sha256", wrong) == 1
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "model.safetensors" in err and "--sha256" in err


def _error_line(capsys):
  err = capsys.readouterr().err.strip()
  assert err.startswith("error:") and err.count("\n") == 0, err
  return err


@pytest.mark.parametrize("content,detail", [
    (b"\xff" * 8 + b"{}", "header too large"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}", "header"),
    (b"", "header too small")])
def test_corrupt_safetensors_is_one_error_line(content, detail, tmp_path, capsys):
  src = tmp_path / "model.safetensors"
  src.write_bytes(content)
  assert _convert("vit_tiny_patch16_224", src, tmp_path / "out") == 1
  err = _error_line(capsys)
  assert str(src) in err and detail in err and "Download it again" in err
  assert not (tmp_path / "out").exists()


def _state_file(tmp_path, state_dict, name="model.safetensors"):
  src = tmp_path / name
  save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}, src)
  return src


def _tiny_state():
  return torch_models.state_dict_numpy(timm_model("vit_tiny_patch16_224"))


@pytest.mark.parametrize("arch,change,expected", [
    ("vit_small_patch16_224", None,
     r"embed dim 192 where vit_small_patch16_224 has 384.*use --arch vit_tiny_patch16_224"),
    ("vit_tiny_patch16_224", "drop", r"missing \(1\): blocks\.3\.attn\.proj\.bias; "
                                     r"unexpected \(0\)"),
    ("vit_tiny_patch16_224", "extra", r"missing \(0\): -; unexpected \(1\): blocks\.0\.extra"),
    ("vit_tiny_patch16_224", "qkv", r"wrong shapes \(1\): blocks\.2\.attn\.qkv\.weight"),
    ("vit_b_16", None, r"layout timm where vit_b_16 has torchvision.*embed dim 192"),
    ("resnet18", None, r"torchvision's resnet18.*It looks like a vit_tiny_patch16_224"),
])
def test_state_dict_of_another_vit_is_one_error_line(arch, change, expected, tmp_path, capsys):
  state_dict = _tiny_state()
  if change == "drop":
    del state_dict["blocks.3.attn.proj.bias"]
  elif change == "extra":
    state_dict["blocks.0.extra"] = np.zeros(3, np.float32)
  elif change == "qkv":
    state_dict["blocks.2.attn.qkv.weight"] = state_dict["blocks.2.attn.qkv.weight"][:-3]
  assert _convert(arch, _state_file(tmp_path, state_dict), tmp_path / "out") == 1
  err = _error_line(capsys)
  assert "model.safetensors" in err
  assert re.search(expected, err), err


def test_patch_size_mismatch_names_both_and_the_right_arch(tmp_path, capsys):
  dinov2 = torch_models.state_dict_numpy(timm_model("vit_small_patch14_dinov2", 0))
  assert _convert("vit_small_patch16_224", _state_file(tmp_path, dinov2), tmp_path / "o") == 1
  err = _error_line(capsys)
  assert "patch size 14 where vit_small_patch16_224 has 16" in err
  assert "LayerScale True where vit_small_patch16_224 has False" in err
  assert "use --arch vit_small_patch14_dinov2" in err


def test_cnn_state_dict_given_as_vit_names_the_cnn(tmp_path, capsys):
  resnet = torch_models.state_dict_numpy(torch_models.random_model("resnet18"))
  assert _convert("vit_tiny_patch16_224", _state_file(tmp_path, resnet), tmp_path / "o") == 1
  err = _error_line(capsys)
  assert "not a ViT state dict" in err and "use --arch resnet18" in err


# ------------------------------------------------------ big models, 224 px


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in VITS if n not in TORCHVISION_VITS])
def test_timm_logits_at_224_and_non_square(name):
  model = timm_model(name, num_classes=10)
  variables = mapping.torch_to_flax(name, torch_models.state_dict_numpy(model))
  patch = registry.patch_size(name)
  for size in [(224, 224), (patch * 10, patch * 8)]:
    images = _images((2, 3, *size), seed=5)
    torch_models.assert_matches(_flax_logits(name, variables, images, 10),
                                _torch_logits(model, images))


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION_VITS)
def test_torchvision_logits_at_224_through_the_cli(name, tmp_path):
  model = torchvision_model(name)
  src = tmp_path / f"{name}.pth"
  torch.save(model.state_dict(), src)
  assert _convert(name, src, tmp_path / name) == 0
  flax_model, variables = load_pretrained(name, tmp_path, num_classes=4)
  reference_model = copy.deepcopy(model)
  head = variables["params"]["head"]
  reference_model.heads.head = _with_head(torch.nn.Module(), head).head
  images = _images((2, 3, 224, 224), seed=6)
  logits = jax.jit(flax_model.apply)(variables, images.transpose(0, 2, 3, 1))
  torch_models.assert_matches(logits, _torch_logits(reference_model.eval(), images))


# ------------------------------------------------------------- training CLI


ALL_MODULES = sorted(["stem", *(f"block{i}" for i in range(12)), "norm", "head"])
# What each strategy trains in the first two epochs (lp_epochs=1, gradual: one block a
# phase): G-LF releases encoder4 (blocks 9-11 and the final norm) after the head.
TRAINABLE = {
    "g_lf": [["head"], ["block10", "block11", "block9", "head", "norm"]],
    "ft": [ALL_MODULES] * 2, "lp": [["head"]] * 2, "lp_ft": [["head"], ALL_MODULES],
    "auto_rgn": [ALL_MODULES] * 2, "bitfit": [ALL_MODULES] * 2,
}


@pytest.fixture(scope="module")
def train_data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


ROOT = pathlib.Path(__file__).parents[1]


def _train_cli(workdir, flags: dict) -> subprocess.CompletedProcess:
  command = [sys.executable, "-m", "ftjax.train", "--config", "configs/demo.py",
             f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in flags.items())]
  return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)


@pytest.mark.parametrize("strategy", [
    "g_lf", *(pytest.param(s, marks=pytest.mark.slow) for s in TRAINABLE if s != "g_lf")])
def test_train_cli_with_a_vit(strategy, train_data_dir, tmp_path):
  result = _train_cli(tmp_path / "run", {
      "arch": "vit_tiny_patch16_224", "strategy": strategy, "data_dir": train_data_dir,
      "dataset_options.num_train": 48, "dataset_options.num_test": 16, "resize": 36,
      "crop": 32, "batch_size": 16, "num_epochs": 2, "patience": 5, "progress": False,
      "strategy_options.lp_epochs": 1, "strategy_options.rgn_batches": 2})
  assert result.returncode == 0, result.stderr[-2000:]
  saved = json.loads((tmp_path / "run" / "results.json").read_text())
  assert saved["arch"] == "vit_tiny_patch16_224" and saved["epochs_run"] == 2
  assert all(np.isfinite(saved["test"][m]) for m in ("accuracy", "auroc", "kappa"))
  lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  assert [sorted(json.loads(line)["trainable"]) for line in lines] == TRAINABLE[strategy]


def test_train_cli_refuses_a_crop_that_is_not_a_patch_multiple(tmp_path):
  result = _train_cli(tmp_path / "run", {"arch": "vit_small_patch14_dinov2", "crop": 64,
                                         "data_dir": tmp_path / "data"})
  assert result.returncode != 0
  assert "config.crop must be a multiple of vit_small_patch14_dinov2's patch size 14" in (
      result.stderr)
  assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()
