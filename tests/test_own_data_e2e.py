"""From a folder of images to the report, through the command lines: prepare ->
train (two strategies) -> sweep -> report, on a generated folder dataset."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.test_own_data_report import class_rows

REPO = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ("effusion", "normal")
# A tiny random-init ResNet-18 on 32 px images, one epoch: seconds per run.
TINY = ["--config.init=random", "--config.resize=32", "--config.crop=32",
        "--config.batch_size=8", "--config.eval_batch_size=16", "--config.num_epochs=1",
        "--config.strategy_options.lp_epochs=1", "--config.progress=False"]


def cli(*args, cwd) -> str:
  # One persistent compilation cache for the test's processes: a step compiled by one
  # (train ft) is read back by the next (the sweep's ft run).
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
         "JAX_COMPILATION_CACHE_DIR": str(pathlib.Path(cwd) / "jax_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}
  done = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


def image_folder(root: pathlib.Path) -> None:
  """Two classes told apart by brightness, 4 patients each, 5 images per patient."""
  rng = np.random.default_rng(0)
  for c, name in enumerate(CLASSES):
    for patient in range(4):
      for i in range(5):
        pixels = rng.integers(0, 128, (36, 40)) + 100 * c
        path = root / name / f"pat{c}{patient}_{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(path)


# Five processes, four of them starting JAX and compiling ResNet-18 steps: over 80 s of
# CPU on 2 cores even with the shared compilation cache (first train 62 s, sweep 44 s of
# a 141 s run on a loaded machine), so it stays out of the default run.
@pytest.mark.slow
def test_folder_to_report_through_the_command_lines(tmp_path):
  image_folder(tmp_path / "images")
  out = cli("-m", "ftjax.data", "prepare", "--dataset", "folder", "--name", "chest_xr",
            "--manual_dir", "images", "--data_dir", "data", "--resize", "32",
            "--option", r"patient_pattern=(pat\d+)_", "--option", "test_fraction=0.25",
            "--option", "val_fraction=0.34", "--workers", "1", cwd=tmp_path)
  assert "classes: effusion, normal" in out and "--config.dataset=chest_xr" in out

  config = REPO / "configs" / "base.py"
  for strategy in ("ft", "lp_ft"):
    out = cli("-m", "ftjax.train", f"--config={config}:chest_xr,{strategy},resnet18",
              "--config.data_dir=data", *TINY, f"--workdir=runs/{strategy}",
              # LP-FT needs an epoch past its head-only one
              *(["--config.num_epochs=2"] if strategy == "lp_ft" else []), cwd=tmp_path)
    results = json.loads((tmp_path / "runs" / strategy / "results.json").read_text())
    assert results["dataset"] == "chest_xr" and results["strategy"] == strategy
    assert results["main_metrics"] == ["auroc", "accuracy"]  # two classes
    assert results["class_names"] == list(CLASSES)  # the class folders, in label order
    assert results["test"]["count"] == 10  # 2 of 8 patients, 5 images each

  sweep_config = REPO / "configs" / "sweep_own.py"
  cli("-m", "ftjax.sweep", f"--config={sweep_config}:chest_xr/resnet18",
      "--config.base.data_dir=data", *[f.replace("--config.", "--config.base.") for f in TINY],
      "--strategies=ft,lp", "--lrs=1e-3", "--seeds=0", "--workdir=sweep", cwd=tmp_path)
  done = sorted(p.parent.relative_to(tmp_path / "sweep").as_posix()
                for p in (tmp_path / "sweep").rglob("results.json"))
  assert done == ["chest_xr/resnet18/ft/lr0.001/seed0", "chest_xr/resnet18/lp/lr0.001/seed0"]

  cli("-m", "ftjax.report", "--workdir=sweep", "--out=report", "--bootstrap=50",
      "--figures=false", cwd=tmp_path)
  rows = class_rows((tmp_path / "report" / "report.md").read_text(), "chest_xr")
  assert list(rows) == list(CLASSES)
