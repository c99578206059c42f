"""Every strategy through the command line on the modern families: one `python -m
ftjax.sweep` per architecture runs the paper's eight strategies and the six beyond it on
the tiny synthetic data, and every run writes finite test metrics. ViT-Ti/16 and
ConvNeXt-T run in CI's extended tests; EfficientNet-B0 under -m slow."""

import json
import math
import os
import subprocess
import sys
import tempfile

import pytest

from configs import sweep_extended, sweep_paper
from ftjax import run as run_lib
from tests.helpers import REPO
from tests.helpers.sweeps import overrides, tiny_sweep_config

STRATEGIES = sweep_paper.STRATEGIES + sweep_extended.EXTENDED_STRATEGIES


@pytest.mark.parametrize("arch", [
    pytest.param("vit_tiny_patch16_224", marks=pytest.mark.extended),
    pytest.param("convnext_tiny", marks=pytest.mark.extended),
    pytest.param("efficientnet_b0", marks=pytest.mark.slow)])
def test_every_strategy_trains_through_the_sweep_command(arch, tmp_path):
  config = tiny_sweep_config(tmp_path / "data", strategies=STRATEGIES, lrs=(1e-3,), seeds=(0,))
  config.base.num_epochs = 2  # LP-FT and WiSE-FT fine-tune after their one LP epoch
  workdir = tmp_path / "runs"
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "JAX_COMPILATION_CACHE_DIR": os.path.join(tempfile.gettempdir(),
                                                    "ftjax-test-jax-cache")}
  done = subprocess.run(
      [sys.executable, "-m", "ftjax.sweep", "--config", "configs/sweep_extended.py:synthetic",
       "--workdir", str(workdir), "--devices", "1", "--config.base.init=random",
       f"--archs={arch}", *overrides(config)],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=1500, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  for strategy in STRATEGIES:
    lr = 1e-3
    path = workdir / run_lib.relative_path("synthetic", arch, strategy, lr, 0)
    results = json.loads((path / "results.json").read_text())
    assert results["arch"] == arch and results["strategy"] == strategy
    assert all(math.isfinite(results["test"][m]) for m in results["main_metrics"]), results
