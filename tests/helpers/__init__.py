"""What several test modules share: tiny configs, data trees in the real layouts,
the PyTorch references. Test modules import from here, never from each other."""

import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]  # the repository root
