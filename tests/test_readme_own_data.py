"""README's "Your own data" commands, run as written on a generated folder of images.

The four commands are read from the README's first bash block under "## Your own data",
so the README cannot drift from the code. Only what makes them small is added after
each command's own arguments (later flags win): 32 px images, two epochs, one learning
rate and seed in the sweep. `~/knee` becomes the generated folder.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO

pytestmark = pytest.mark.extended  # a sweep of three runs and a train run: CI's extended set

SMALL_TRAIN = ["--config.resize=32", "--config.batch_size=8", "--config.eval_batch_size=16",
               "--config.num_epochs=2", "--config.strategy_options.lp_epochs=1",
               "--config.progress=False"]
SMALL = {
    "ftjax.data": ["--resize", "32"],
    "ftjax.train": SMALL_TRAIN,
    "ftjax.sweep": [f"--config.base.{a[len('--config.'):]}" for a in SMALL_TRAIN]
                   + ["--lrs", "1e-3", "--seeds", "0", "--devices", "1"],
    "ftjax.report": ["--bootstrap", "20", "--nofigures"],
}


def readme_commands() -> list[list[str]]:
  text = (REPO / "README.md").read_text()
  section = text.split("## Your own data", 1)[1]
  block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
  return [shlex.split(command) for command in block.replace("\\\n", " ").splitlines()
          if command.strip()]


def _knee_folder(root) -> None:
  """Two classes, 12 patients each with images of both (P01_0.png ...), 16x16 px."""
  rng = np.random.default_rng(0)
  for label in ("effusion", "normal"):
    (root / label).mkdir(parents=True)
    for patient in range(1, 13):
      for i in range(2):
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / label / f"P{patient:02d}_{i}.png")


def test_the_readme_commands_run_as_written(tmp_path):
  commands = readme_commands()
  assert [c[2] for c in commands] == ["ftjax.data", "ftjax.train", "ftjax.sweep",
                                      "ftjax.report"]
  knee = tmp_path / "knee"
  _knee_folder(knee)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
         "JAX_COMPILATION_CACHE_DIR": os.path.join(tempfile.gettempdir(),
                                                    "ftjax-test-jax-cache")}
  for command in commands:
    assert command[0] == ".venv/bin/python"
    args = [sys.executable] + [str(knee) if a == "~/knee" else a for a in command[1:]]
    # The README runs from the repository root; here the run's files stay in tmp_path.
    args = [re.sub(r"^(configs/\S+)", lambda m: str(REPO / m.group(1)), a) for a in args]
    done = subprocess.run(args + SMALL[command[2]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, (command, done.stderr[-3000:])
  assert (tmp_path / "report_knee" / "report.md").is_file()
  assert "knee_xr" in (tmp_path / "report_knee" / "report.md").read_text()

