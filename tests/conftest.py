import os

# The test suite is CPU-only, also on machines that have an accelerator.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
