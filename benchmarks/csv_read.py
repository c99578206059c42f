"""Reading a large own-data CSV: seconds and memory to list its examples.

  python -m benchmarks.csv_read --rows 27927 55854 111707 223414

Writes a CheXpert-like table (Path, Sex, Age, Frontal/Lateral, AP/PA, a patient
column and 14 findings as 0/1 columns; CheXpert-v1.0 train.csv has 223,414 rows)
and times what ``prepare --dataset csv`` does before it decodes any image: read the
table, resolve columns and labels (``discover``), list and check the examples, carve
the splits by patient and look for duplicates (``list_splits``). The images are not
written: their files are only looked for, as they are before decoding.
"""

from __future__ import annotations

import argparse
import csv
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from ftjax.data import user
from ftjax.data.csv_table import CsvTable

FINDINGS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity",
            "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
            "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices")


def write_table(path: Path, rows: int, seed: int = 0) -> None:
  """A CheXpert-like table: ~3.4 studies per patient, 14 0/1 findings."""
  rng = np.random.default_rng(seed)
  flags = rng.random((rows, len(FINDINGS))) < 0.15
  with open(path, "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["Path", "Patient", "Sex", "Age", "Frontal/Lateral", "AP/PA", *FINDINGS])
    for i in range(rows):
      patient = f"patient{i * 10 // 34:05d}"
      out.writerow([f"train/{patient}/study{i % 3 + 1}/view{i}_frontal.jpg", patient,
                    "Female" if i % 2 else "Male", 20 + i % 70, "Frontal", "AP",
                    *(int(v) for v in flags[i])])


def peak_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(rows: int, folder: Path) -> tuple[float, float, float, dict[str, int]]:
  """(wall and CPU seconds to discover + list the splits, peak RSS MiB after, images
  per split)."""
  manual = folder / f"m{rows}"
  manual.mkdir()
  write_table(manual / "train.csv", rows)
  options = {"path_column": "Path", "patient_column": "Patient",
             "label_columns": ",".join(FINDINGS)}
  start, cpu = time.perf_counter(), time.process_time()
  options = CsvTable.discover(manual, options)
  builder = user.named_builder(CsvTable, f"bench_csv{rows}").create(folder / "data", **options)
  splits = builder.list_splits(manual)
  seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
  return seconds, cpu, peak_mib(), {s: len(e) for s, e in splits.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", type=int, nargs="+", default=[27927, 55854, 111707, 223414])
  args = parser.parse_args()
  print(f"peak RSS before: {peak_mib():.0f} MiB")
  with tempfile.TemporaryDirectory() as tmp:
    for rows in args.rows:
      seconds, cpu, peak, sizes = measure(rows, Path(tmp))
      print(f"{rows} rows: {seconds:.2f} s wall, {cpu:.2f} s CPU ({cpu / rows * 1e6:.1f} "
            f"us/row), peak RSS {peak:.0f} MiB; splits {sizes}")


if __name__ == "__main__":
  main()
