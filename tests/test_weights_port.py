"""weights_port end to end: the files users convert, the errors they can meet."""

import copy
import json
import os
import pickle
import zipfile

import jax
import numpy as np
import pytest
import torch

from ftjax.models import load_pretrained, pretrained, registry
from tests.helpers import torch_models
from weights_port import __main__ as cli
from weights_port import convert, mapping


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("pth") / "resnet18.pth"
  torch.save(torch_models.random_model("resnet18").state_dict(), path)
  return path


@pytest.fixture(scope="module")
def resnet18_converted(resnet18_file, tmp_path_factory):
  out = tmp_path_factory.mktemp("weights") / "resnet18"
  assert cli.main(["convert", "--arch", "resnet18", "--src", str(resnet18_file),
                   "--out", str(out)]) == 0
  return out


# One 224 px case per family, through the file path users run (.pth -> CLI ->
# orbax -> load_pretrained). VGG-19 is a 550 MB file, so the VGG case is VGG-11.
@pytest.mark.parametrize("arch,legacy", [("resnet50", False), ("densenet121", True),
                                         ("vgg11", True)])
def test_convert_file_then_load_pretrained_matches_torchvision_224(arch, legacy, tmp_path):
  model = copy.deepcopy(torch_models.random_model(arch))  # its head is replaced below
  src = tmp_path / f"{arch}.pth"
  torch.save(model.state_dict(), src, _use_new_zipfile_serialization=not legacy)
  assert cli.main(["convert", "--arch", arch, "--src", str(src),
                   "--out", str(tmp_path / "weights" / arch)]) == 0
  os.remove(src)  # the converted directory must stand on its own

  flax_model, variables = load_pretrained(arch, tmp_path / "weights", num_classes=3,
                                          rng=jax.random.key(7))
  # Give torchvision the same new head, then the whole network must agree.
  head = variables["params"]["head"]
  classifier = {"resnet": "fc", "densenet": "classifier", "vgg": "classifier.6"}[
      registry.get_arch(arch).family]
  fan_in = head["kernel"].shape[0]
  new = torch.nn.Linear(fan_in, 3)
  with torch.no_grad():
    new.weight.copy_(torch.from_numpy(np.asarray(head["kernel"]).T))
    new.bias.copy_(torch.from_numpy(np.asarray(head["bias"])))
  parent = model.get_submodule(classifier.rpartition(".")[0]) if "." in classifier else model
  setattr(parent, classifier.rpartition(".")[2], new)
  images = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
  with torch.no_grad():
    reference = model(torch.from_numpy(images)).numpy()
  logits = jax.jit(flax_model.apply)(variables, images.transpose(0, 2, 3, 1))
  assert logits.shape == (2, 3)
  torch_models.assert_matches(logits, reference)

  manifest = json.loads((tmp_path / "weights" / arch / "manifest.json").read_text())
  assert manifest["arch"] == arch
  assert manifest["param_count"] == sum(p.numel() for p in
                                        torch_models.random_model(arch).parameters())


def test_manifest_records_source_hash(resnet18_file, resnet18_converted):
  import hashlib  # pylint: disable=import-outside-toplevel
  manifest = json.loads((resnet18_converted / "manifest.json").read_text())
  assert manifest["source_sha256"] == hashlib.sha256(resnet18_file.read_bytes()).hexdigest()
  assert manifest["source"] == "resnet18.pth"
  assert manifest["num_classes"] == 1000
  assert manifest["converter_version"] == convert.CONVERTER_VERSION


def test_verify_command_reports_match(resnet18_file, resnet18_converted, capsys):
  code = cli.main(["verify", "--arch", "resnet18", "--src", str(resnet18_file),
                   "--weights", str(resnet18_converted), "--size", "64", "80"])
  out = capsys.readouterr().out
  assert code == 0 and "OK" in out and "max |logit difference|" in out


def test_verify_command_detects_wrong_weights(resnet18_converted, tmp_path, capsys):
  other = tmp_path / "other.pth"
  torch.save(torch_models.random_model("resnet18", seed=1).state_dict(), other)
  code = cli.main(["verify", "--arch", "resnet18", "--src", str(other),
                   "--weights", str(resnet18_converted), "--size", "64", "64"])
  assert code == 1 and "MISMATCH" in capsys.readouterr().out


def test_convert_live_torch_module(tmp_path):
  model = torch_models.random_model("resnet18", num_classes=5)
  convert.convert_torch("resnet18", model, tmp_path / "r18")
  variables, manifest = pretrained.load_converted("resnet18", tmp_path / "r18")
  assert manifest["num_classes"] == 5  # a fine-tuned checkpoint keeps its head
  images = np.random.default_rng(1).standard_normal((1, 3, 48, 48), dtype=np.float32)
  with torch.no_grad():
    reference = model(torch.from_numpy(images)).numpy()
  torch_models.assert_matches(registry.get_arch("resnet18").build(5).apply(
      variables, images.transpose(0, 2, 3, 1)), reference)


def test_legacy_densenet_key_names_are_accepted():
  state_dict = torch_models.state_dict_numpy(torch_models.random_model("densenet121"))
  legacy = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v
            for k, v in state_dict.items()}
  assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
  ours = mapping.torch_to_flax("densenet121", legacy)
  reference = mapping.torch_to_flax("densenet121", state_dict)
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(reference)):
    np.testing.assert_array_equal(a, b)


def test_wrong_arch_names_missing_and_unexpected_keys(resnet18_file, tmp_path, capsys):
  code = cli.main(["convert", "--arch", "resnet34", "--src", str(resnet18_file),
                   "--out", str(tmp_path / "x")])
  err = capsys.readouterr().err
  assert code == 1
  assert "Missing (80)" in err and "layer1.2.bn1.bias" in err  # resnet34 has 3 blocks there
  assert "Unexpected (0)" in err
  assert "resnet18" in err  # the file is recognised
  assert not (tmp_path / "x" / "manifest.json").exists()


def test_wrong_shape_is_named(tmp_path):
  state_dict = torch_models.state_dict_numpy(torch_models.random_model("resnet18"))
  state_dict["layer2.0.conv1.weight"] = state_dict["layer2.0.conv1.weight"][:, :32]
  with pytest.raises(mapping.ShapeMismatchError, match=r"layer2\.0\.conv1\.weight"):
    mapping.torch_to_flax("resnet18", state_dict, source="edited.pth")


def test_truncated_file_is_refused(resnet18_file, tmp_path, capsys):
  cut = tmp_path / "resnet18-cut.pth"
  cut.write_bytes(resnet18_file.read_bytes()[: resnet18_file.stat().st_size // 3])
  code = cli.main(["convert", "--arch", "resnet18", "--src", str(cut),
                   "--out", str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert code == 1 and "resnet18-cut.pth" in err
  assert "truncated or corrupt" in err
  assert not (tmp_path / "out" / "manifest.json").exists()


class _Exploit:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(resnet18_file, tmp_path, capsys):
  marker = tmp_path / "pwned"
  evil = tmp_path / "resnet18-evil.pth"
  with zipfile.ZipFile(resnet18_file) as src, zipfile.ZipFile(evil, "w") as dst:
    for item in src.infolist():
      data = src.read(item)
      if item.filename.endswith("/data.pkl"):
        data = pickle.dumps({"fc.weight": _Exploit(marker)}, protocol=2)
      dst.writestr(item, data)
  code = cli.main(["convert", "--arch", "resnet18", "--src", str(evil),
                   "--out", str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert code == 1 and "resnet18-evil.pth" in err and "system" in err
  assert not marker.exists()


def test_hash_in_torchvision_file_name_is_checked(resnet18_file, tmp_path, capsys):
  named = tmp_path / "resnet18-f37072fd.pth"  # torchvision's name, other content
  named.write_bytes(resnet18_file.read_bytes())
  args = ["convert", "--arch", "resnet18", "--src", str(named), "--out", str(tmp_path / "o")]
  assert cli.main(args) == 1
  assert "corrupt" in capsys.readouterr().err
  assert cli.main(args + ["--no-check-hash"]) == 0


def test_missing_source_names_download(tmp_path, capsys):
  code = cli.main(["convert", "--arch", "vgg19", "--src", str(tmp_path / "vgg19.pth"),
                   "--out", str(tmp_path / "o")])
  err = capsys.readouterr().err
  assert code == 1 and "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" in err


def test_load_pretrained_without_weights_says_how_to_convert(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    load_pretrained("densenet121", tmp_path, num_classes=2)
  message = str(error.value)
  assert "densenet121-a639ec97.pth" in message
  assert "python -m weights_port convert --arch densenet121" in message


def test_load_pretrained_refuses_other_arch(resnet18_converted):
  with pytest.raises(ValueError, match="for 'resnet18', not 'resnet34'"):
    load_pretrained("resnet34", resnet18_converted, num_classes=2)


def test_new_head_is_drawn_from_rng_and_backbone_is_kept(resnet18_file, resnet18_converted):
  _, a = load_pretrained("resnet18", resnet18_converted.parent, num_classes=4, rng=1)
  _, b = load_pretrained("resnet18", resnet18_converted.parent, num_classes=4, rng=2)
  assert a["params"]["head"]["kernel"].shape == (512, 4)
  assert not np.array_equal(a["params"]["head"]["kernel"], b["params"]["head"]["kernel"])
  source = torch.load(resnet18_file, weights_only=True)
  np.testing.assert_array_equal(  # OIHW -> HWIO, nothing else
      a["params"]["layer4"]["1"]["conv2"]["kernel"],
      source["layer4.1.conv2.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(a["batch_stats"]["stem"]["bn1"]["var"],
                                source["bn1.running_var"].numpy())


@pytest.mark.parametrize("name,edit,problem", [
    ("layer1.0.conv1.weight", lambda t: t.index_fill_(0, torch.tensor([3]), float("nan")),
     "holds 576 NaN or infinite value"),
    ("fc.bias", lambda t: t.index_fill_(0, torch.tensor([0]), float("inf")),
     "holds 1 NaN or infinite value"),
    ("layer2.0.bn1.running_var", lambda t: t.index_fill_(0, torch.tensor([1, 2]), -0.5),
     "holds 2 negative running variance"),
    ("conv1.weight", lambda t: t.to(torch.int32), "is int32, where a float tensor belongs"),
    ("bn1.weight", lambda t: t > 0, "is bool, where a float tensor belongs"),
])
def test_unusable_weight_values_are_refused_naming_the_tensor(name, edit, problem, tmp_path,
                                                              capsys):
  state = copy.deepcopy(torch_models.random_model("resnet18").state_dict())
  state[name] = edit(state[name].clone())
  src = tmp_path / "resnet18-edited.pth"
  torch.save(state, src)
  args = ["convert", "--arch", "resnet18", "--src", str(src), "--out", str(tmp_path / "o")]
  assert cli.main(args) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: resnet18-edited.pth: tensor "
                                             f"{name} {problem}")
  assert "--allow-bad-weights" in err[0]
  assert not (tmp_path / "o" / "manifest.json").exists()
  if state[name].dtype.is_floating_point:  # converting anyway keeps the values as they are
    assert cli.main(args + ["--allow-bad-weights"]) == 0
    variables, _ = pretrained.load_converted("resnet18", tmp_path / "o")
    want = mapping.torch_to_flax("resnet18", {k: v.numpy() for k, v in state.items()})
    for got, ref in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(want)):
      np.testing.assert_array_equal(got, ref)


def test_duplicate_zip_members_are_refused(resnet18_file, tmp_path, capsys):
  doubled = tmp_path / "resnet18-doubled.pth"
  with zipfile.ZipFile(resnet18_file) as src, zipfile.ZipFile(doubled, "w") as dst:
    items = src.infolist()
    for item in items:
      dst.writestr(item, src.read(item))
    victim = next(i for i in items if "/data/" in i.filename)
    with pytest.warns(UserWarning, match="Duplicate name"):
      dst.writestr(victim.filename, b"\0" * victim.file_size)  # a second, zeroed copy
  assert cli.main(["convert", "--arch", "resnet18", "--src", str(doubled),
                   "--out", str(tmp_path / "o")]) == 1
  err = capsys.readouterr().err
  assert "more than once" in err and victim.filename in err
  assert not (tmp_path / "o" / "manifest.json").exists()
