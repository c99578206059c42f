"""Seeded byte-level fuzzing of weights_port.pth: every mutation of a valid file
loads equal to torch.load or is refused with a PthError, never anything else.

The cases run in one child process under an address-space limit, so a crash or
a runaway allocation shows as a signal or a MemoryError. The child imports no
torch: this module imports torch only inside the functions that build the
fixtures and check the results.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CASES_PER_FAMILY = 150
# raw: bytes of the whole file; repacked: bytes of data.pkl, zipped again with a
# valid CRC so the mutation reaches the pickle reader; legacy: bytes of the file.
FAMILIES = ("raw", "repacked", "legacy")


# --- mutations (run in the child) --------------------------------------------------


def _position(rng: random.Random, size: int, hot: tuple[int, int]) -> int:
  """A byte offset, most often inside `hot` (the pickle), where parsing happens."""
  low, high = hot[0], min(hot[1], size)  # earlier mutations may have cut the file
  if rng.random() < 0.7 and high > low:
    return rng.randrange(low, high)
  return rng.randrange(size)


def _mutate_once(data: bytearray, rng: random.Random, hot: tuple[int, int]) -> bytearray:
  pos = _position(rng, len(data), hot)
  kind = rng.choice(("flip", "set", "truncate", "insert", "delete", "duplicate"))
  if kind == "flip":
    data[pos] ^= rng.randrange(1, 256)
  elif kind == "set":  # values that are lengths, signs or opcodes in a pickle
    data[pos] = rng.choice((0x00, 0x01, 0x7F, 0x80, 0xFF, ord("("), ord("t"), ord("R"),
                            ord("b"), ord("."), ord("h"), ord("q")))
  elif kind == "truncate":
    del data[pos:]
  elif kind == "insert":
    data[pos:pos] = rng.randbytes(rng.randint(1, 8))
  elif kind == "delete":
    del data[pos:pos + rng.randint(1, 16)]
  else:
    start = _position(rng, len(data), hot)
    data[pos:pos] = data[start:start + rng.randint(1, 64)]
  return data


def mutate(raw: bytes, rng: random.Random, hot: tuple[int, int]) -> bytes:
  data = bytearray(raw)
  for _ in range(rng.randint(1, 3)):
    if not data:
      break
    data = _mutate_once(data, rng, hot)
  return bytes(data)


def _repack(zip_raw: bytes, pickle_name: str, rng: random.Random) -> bytes:
  """The zip again, its data.pkl mutated, every CRC valid."""
  out = io.BytesIO()
  with zipfile.ZipFile(io.BytesIO(zip_raw)) as src, zipfile.ZipFile(out, "w") as dst:
    for info in src.infolist():
      data = src.read(info)
      if info.filename == pickle_name:
        data = mutate(data, rng, (0, len(data)))
      dst.writestr(info, data)
  return out.getvalue()


def _same(got: dict, want: dict) -> bool:
  return list(got) == list(want) and all(
      got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
      and got[k].tobytes() == want[k].tobytes() for k in want)


def _peak_rss_mib() -> int | None:
  """This process's peak resident memory (VmHWM: unlike ru_maxrss, not the parent's)."""
  try:
    status = Path("/proc/self/status").read_text()
  except OSError:
    return None
  line = next((l for l in status.splitlines() if l.startswith("VmHWM:")), None)
  return int(line.split()[1]) // 1024 if line else None


def run_cases(spec_file: str) -> None:
  """Child entry point: runs every case of the spec, prints one JSON summary."""
  from weights_port import pth  # pylint: disable=import-outside-toplevel
  spec = json.loads(Path(spec_file).read_text())
  out_dir = Path(spec["out_dir"])
  summary = {"cases": 0, "same": 0, "refused": 0, "different": [], "failures": []}
  for family in FAMILIES:
    source = spec[family]
    raw = Path(source["path"]).read_bytes()
    with np.load(source["reference"]) as ref:
      want = {k: ref[k] for k in source["order"]}
    for seed in range(spec["cases_per_family"]):
      rng = random.Random(f"{family}-{seed}")
      data = (_repack(raw, source["pickle_name"], rng) if family == "repacked"
              else mutate(raw, rng, tuple(source["hot"])))
      case = out_dir / f"{family}-{seed}.pth"
      case.write_bytes(data)
      summary["cases"] += 1
      try:
        got = pth.read_state_dict(case)
      except pth.PthError:
        summary["refused"] += 1
        case.unlink()
        continue
      except BaseException as e:  # pylint: disable=broad-except
        summary["failures"].append(f"{family} seed {seed}: {type(e).__name__}: {str(e)[:300]}")
        continue
      if _same(got, want):
        summary["same"] += 1
        case.unlink()
      else:  # kept for the parent to compare with torch.load
        summary["different"].append(str(case))
  summary["peak_rss_mib"] = _peak_rss_mib()
  print(json.dumps(summary))


# --- fixtures and the test (run in pytest, with torch) -------------------------------


def _state():
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))
  model[1].running_mean.uniform_(-1, 1)
  model[1].running_var.uniform_(0.5, 2)
  state = model.state_dict()  # an OrderedDict with _metadata, as torchvision's
  state["transposed"] = torch.randn(4, 3).t()  # a non-contiguous view
  state["half"] = torch.randn(5).half()
  return state


def _reference(path: Path) -> dict[str, np.ndarray]:
  import torch  # pylint: disable=import-outside-toplevel
  return {k: v.contiguous().numpy() for k, v in torch.load(path, weights_only=True).items()}


def _legacy_pickles_end(raw: bytes) -> int:
  """Offset just past the five pickles that open a legacy torch.save file."""
  f = io.BytesIO(raw)
  for _ in range(5):  # magic, protocol, sys_info, the state_dict, storage keys
    for _op, _arg, _pos in pickletools.genops(f):
      pass
  return f.tell()


def _source(path: Path, zip_format: bool) -> dict:
  raw = path.read_bytes()
  ref = _reference(path)
  np.savez(path.with_suffix(".npz"), **ref)
  source = {"path": str(path), "reference": str(path.with_suffix(".npz")), "order": list(ref)}
  if zip_format:
    with zipfile.ZipFile(path) as archive:
      info = next(i for i in archive.infolist() if i.filename.endswith("/data.pkl"))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    source.update(pickle_name=info.filename, hot=(start, start + info.compress_size))
  else:
    source.update(hot=(0, _legacy_pickles_end(raw)))
  return source


def _spec(tmp_path: Path) -> Path:
  import torch  # pylint: disable=import-outside-toplevel
  state = _state()
  zip_path, legacy_path = tmp_path / "small.pth", tmp_path / "small-legacy.pth"
  torch.save(state, zip_path)
  torch.save(state, legacy_path, _use_new_zipfile_serialization=False)
  out_dir = tmp_path / "cases"
  out_dir.mkdir()
  zip_source = _source(zip_path, zip_format=True)
  spec = {"out_dir": str(out_dir), "cases_per_family": CASES_PER_FAMILY, "raw": zip_source,
          "repacked": zip_source, "legacy": _source(legacy_path, zip_format=False)}
  spec_file = tmp_path / "spec.json"
  spec_file.write_text(json.dumps(spec))
  return spec_file


def _run_child(spec_file: Path) -> subprocess.CompletedProcess:
  code = ("import resource\n"
          "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
          "from tests.test_pth_fuzz import run_cases\n"
          f"run_cases({str(spec_file)!r})\n")
  env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
  return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300, check=False)


def _torch_agrees(case: str) -> str | None:
  """None if torch.load reads the file as read_state_dict does, else what differs."""
  from weights_port import pth  # pylint: disable=import-outside-toplevel
  try:
    want = _reference(Path(case))
  except Exception as e:  # pylint: disable=broad-except
    return f"{case}: read_state_dict loads it, torch.load raises {type(e).__name__}: {e}"
  return None if _same(pth.read_state_dict(case), want) else f"{case}: values differ"


def test_mutated_files_load_equal_or_are_refused(tmp_path):
  out = _run_child(_spec(tmp_path))
  assert out.returncode == 0, f"child died (status {out.returncode}): {out.stderr[-3000:]}"
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  assert summary["failures"] == [], "\n".join(summary["failures"])
  assert summary["cases"] == CASES_PER_FAMILY * len(FAMILIES)
  # The mutations reach both outcomes, so the fuzzing is not vacuous.
  assert summary["same"] > 0 and summary["refused"] > 0, summary
  # A mutation of stored tensor bytes (legacy files carry no checksum) loads with
  # other values; torch.load must then read exactly the same.
  disagreements = [d for d in map(_torch_agrees, summary["different"]) if d]
  assert disagreements == [], "\n".join(disagreements)
