"""Running Python code in a child process with a memory cap."""

import os
import subprocess
import sys
import textwrap
from tests.helpers import REPO





def under_1_gib(body: str) -> subprocess.CompletedProcess:
  """Runs `body` in a Python process limited to 1 GiB of address space."""
  code = ("import resource\n"
          "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
          + textwrap.dedent(body))
  env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
  return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120, check=False)

