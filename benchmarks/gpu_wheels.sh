#!/usr/bin/env bash
# Downloads into .whl/ the wheels benchmarks/gpu.sh needs beside a GPU image that already
# holds jax, flax, optax, orbax-checkpoint, torch, torchvision and timm (Python 3.12,
# x86-64): what ftjax imports and that image lacks. Run from the repository root on a
# machine with access to PyPI; .whl/ travels with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
platforms=()
for n in 2_39 2_35 2_34 2_31 2_28 2_27 2_24 2_17; do platforms+=(--platform "manylinux_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d .whl \
  tensorflow-datasets grain array-record ml_collections dm-tree immutabledict promise \
  simple-parsing docstring-parser tensorflow-metadata googleapis-common-protos toml \
  termcolor pydicom submitit tensorboardX
