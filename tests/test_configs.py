"""Dataset options reach the builder from config files and the command line."""

import json
import pathlib
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from configs import base, sweep_paper
from ftjax import run as run_lib
from ftjax import sweep
from ftjax.engine import training
from ftjax.data.prepared import dataset_options, prepared_builder
from ftjax.data import DataError
from ftjax.models import registry

REPO = pathlib.Path(__file__).resolve().parents[1]


def _parse(*argv):
  """The config as `python -m ftjax.train` would parse these flags."""
  argv = ["ftjax.train", *argv]
  flag_values = flags.FlagValues()
  # Override flags are defined from the command line, as absl.app.run does with sys.argv.
  config_flags.DEFINE_config_file("config", None, "config", flag_values=flag_values,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def test_command_line_sets_dataset_options():
  config = _parse("--config=configs/base.py:chexpert,ft",
                  "--config.dataset_options.unit=image",
                  "--config.dataset_options.val_fraction=0.25")
  assert config.dataset_options.unit == "image"
  assert config.dataset_options.val_fraction == 0.25
  assert dataset_options(config) == {"unit": "image", "val_fraction": 0.25}


def test_unset_options_keep_the_datasets_defaults():
  assert dataset_options(base.get_config("mura_wrist,lp")) == {}


@pytest.mark.parametrize("override, where, valid", [
    ("--config.dataset_options.unit=image", "config.dataset_options", "seed, test_fraction"),
    ("--config.lrr=1e-3", "config", "lr, num_epochs"),
])
def test_command_line_names_a_field_the_config_lacks(override, where, valid):
  result = subprocess.run(
      [sys.executable, "-m", "ftjax.train", "--config=configs/base.py:bach,ft", override],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2
  name = override.split("=")[0].split(".")[-1]
  assert result.stderr.strip().splitlines() == [
      f"error: {override}: {where} has no field {name!r}; its fields: "
      + result.stderr.split("its fields: ")[1].strip()]
  assert valid in result.stderr


def test_unknown_option_is_refused_with_the_valid_ones():
  config = base.get_config("bach,ft")
  config.dataset_options = {"unit": "image"}
  with pytest.raises(ValueError, match=r"\['unit'\].*bach.*test_fraction"):
    prepared_builder(config, registry.get_arch("resnet50"))


def test_not_prepared_hint_repeats_the_options(tmp_path):
  config = base.get_config("chexpert,ft")
  config.data_dir = str(tmp_path)
  config.dataset_options.unit = "image"
  with pytest.raises(DataError, match="--option unit=image"):
    prepared_builder(config, registry.get_arch("resnet50"))


def test_not_prepared_hint_names_what_is_prepared(tmp_path):
  (tmp_path / "chexpert" / "image_r256" / "1.0.0").mkdir(parents=True)
  config = base.get_config("chexpert,ft")
  config.data_dir = str(tmp_path)
  with pytest.raises(DataError, match=r"\(config patient_r232\)\. Prepared there with other "
                     r"settings: image_r256 "):
    prepared_builder(config, registry.get_arch("resnet50"))


@pytest.mark.parametrize("field, value, requirement", [
    ("lr", -1e-4, r"a positive number \(the paper's grid: 1e-3, 1e-4, 1e-5\)"),
    ("lr", float("nan"), r"a positive number \(the paper's grid: 1e-3, 1e-4, 1e-5\)"),
    ("batch_size", 0, "a positive integer"),
    ("num_epochs", 0, "a positive integer"),
    ("prefetch", -1, "an integer >= 0"),
    ("compute_dtype", "bf16", "'float32' or 'bfloat16'"),
    ("init", "imagenet", "'pretrained' or 'random'"),
])
def test_unusable_values_are_refused_before_the_run(tmp_path, field, value, requirement):
  config = base.get_config("synthetic,ft,resnet18")
  config[field] = value
  with pytest.raises(ValueError, match=rf"config\.{field} must be {requirement}, got "):
    training.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()  # refused before anything was written


def test_unknown_early_stopping_metric_is_refused_before_the_run(tmp_path):
  config = base.get_config("synthetic,ft,resnet18")
  config.early_stopping_metric = "acc"
  with pytest.raises(ValueError, match="early_stopping_metric must be 'loss' or a metric "
                     "name, got 'acc'"):
    training.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()  # a fixed rerun is not refused as another config


def test_sweep_gives_each_dataset_the_options_it_has():
  sweep_base = sweep_paper.get_config().base
  sweep_base.dataset_options.unit = "image"
  sweep_base.dataset_options.test_fraction = 0.3
  options = {name: dataset_options(
      sweep.RunSpec(name, "resnet50", "ft", 1e-4, 0).config(sweep_base))
             for name in ("chexpert", "mura_wrist", "bach", "cholect50")}
  assert options == {"chexpert": {"unit": "image"}, "mura_wrist": {"unit": "image"},
                     "bach": {"test_fraction": 0.3}, "cholect50": {}}


def test_run_identity_ignores_unset_options_but_not_set_ones(tmp_path):
  config = base.get_config("chexpert,ft")
  saved = json.loads(config.to_json_best_effort())
  saved["dataset_options"] = {}  # as written before options had placeholders

  def fields(c):
    return run_lib.identity_fields(c, data_fingerprint="d", weights_fingerprint="w")

  run = run_lib.RunDir(tmp_path)
  run.write_identity(saved, fields(saved))
  run.claim(fields(json.loads(config.to_json_best_effort())))  # same run: accepted
  config.dataset_options.unit = "image"
  with pytest.raises(run_lib.RunMismatch, match=r"dataset_options.unit: None -> 'image'"):
    run.claim(fields(json.loads(config.to_json_best_effort())))
