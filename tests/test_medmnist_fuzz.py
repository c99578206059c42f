"""Byte-level mutations of a valid MedMNIST .npz: each loads equal to the original or is
one DataError; any other exception, or a signal, fails (with the seed and case)."""

from __future__ import annotations

import json

import numpy as np

from tests.helpers.data_trees import medmnist_file
from tests.helpers.subprocesses import under_1_gib

SEED, CASES = 20240611, 300

_FUZZ = """
import json, pathlib, time, traceback
import numpy as np
from ftjax.data import DataError, medmnist

original_path = pathlib.Path({path!r})
original = medmnist.read_arrays(original_path)
data = original_path.read_bytes()
rng = np.random.default_rng({seed})
work = original_path.with_name("mutated.npz")


def mutate(data):
  n = len(data)
  kind = ("flip", "truncate", "insert", "duplicate")[rng.integers(4)]
  a = int(rng.integers(n))
  if kind == "flip":
    out = bytearray(data)
    for i in rng.integers(n, size=int(rng.integers(1, 4))):
      out[i] ^= 1 << int(rng.integers(8))
    return kind, bytes(out)
  if kind == "truncate":
    return kind, data[:a]
  if kind == "insert":
    return kind, data[:a] + rng.bytes(int(rng.integers(1, 64))) + data[a:]
  b = min(n, a + int(rng.integers(1, 256)))
  return kind, data[:b] + data[a:b] + data[b:]


counts = {{"equal": 0, "refused": 0}}
start = time.monotonic()
for case in range({cases}):
  kind, mutated = mutate(data)
  work.write_bytes(mutated)
  try:
    loaded = medmnist.read_arrays(work)
  except DataError as error:
    assert str(error).startswith(str(work)), (case, kind, str(error))
    counts["refused"] += 1
    continue
  except Exception:  # anything else is a bug: report the case
    print(json.dumps({{"case": case, "kind": kind, "error": traceback.format_exc()}}))
    raise SystemExit(1)
  same = loaded.keys() == original.keys() and all(
      loaded[k].dtype == original[k].dtype and np.array_equal(loaded[k], original[k])
      for k in original)
  if not same:
    print(json.dumps({{"case": case, "kind": kind, "error": "loaded different arrays"}}))
    raise SystemExit(1)
  counts["equal"] += 1
counts["seconds"] = round(time.monotonic() - start, 1)
print(json.dumps(counts))
"""


def test_mutated_npz_loads_equal_or_is_one_data_error(tmp_path):
  # a small file (a few KB) so a few hundred mutations hit every part of it
  root = medmnist_file(tmp_path / "m", n=(3, 2, 2))
  path = root / "pathmnist.npz"
  out = under_1_gib(_FUZZ.format(path=str(path), seed=SEED, cases=CASES))
  assert out.returncode == 0, f"seed {SEED}: {out.stdout[-3000:]} {out.stderr[-3000:]}"
  counts = json.loads(out.stdout.strip().splitlines()[-1])
  assert counts["equal"] + counts["refused"] == CASES
  assert counts["refused"] > CASES // 2  # most mutations damage the file
  assert np.load(path)["train_images"].shape == (3, 28, 28, 3)  # the original is intact
