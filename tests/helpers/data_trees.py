"""Tiny fixture trees in each dataset's official layout (shared by test_data_*)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from ftjax.data import get_dataset


def write_image(path: Path, size=(40, 30), mode="RGB", seed=0, fmt=None) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  w, h = size
  shape = (h, w, 3) if mode == "RGB" else (h, w)
  Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path, format=fmt)
  return path


def write_csv(path: Path, header, rows) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    if header:
      w.writerow(header)
    w.writerows(rows)
  return path


def prepare(name: str, manual_dir, data_dir, skip_bad=False, **options):
  builder = get_dataset(name).create(data_dir, skip_bad=skip_bad, num_workers=1,
                                     resize=options.pop("resize", 32), **options)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def records(builder, split):
  source = builder.as_data_source(split)
  return [source[i] for i in range(len(source))]


def ids(builder, split):
  return sorted(r["id"].decode() for r in records(builder, split))


def isic_tree(root: Path, n_patients=10, per_patient=3) -> Path:
  rows, k = [], 0
  for p in range(n_patients):
    for _ in range(per_patient):
      name = f"ISIC_{k:07d}"
      write_image(root / "ISIC_2020_Training_JPEG" / "train" / f"{name}.jpg", seed=k)
      rows.append([name, f"IP_{p:04d}", "", "male", 50, "torso", "nevus",
                   "malignant" if k % 7 == 0 else "benign", int(k % 7 == 0)])
      k += 1
  write_csv(root / "ISIC_2020_Training_GroundTruth.csv",
            ["image_name", "patient_id", "lesion_id", "sex", "age_approx",
             "anatom_site_general_challenge", "diagnosis", "benign_malignant", "target"], rows)
  write_csv(root / "ISIC_2020_Training_Duplicates.csv", ["image_name_1", "image_name_2"],
            [["ISIC_0000000", "ISIC_0000001"], ["ISIC_0000003", "ISIC_0000010"]])
  return root


def mura_tree(root: Path) -> Path:
  base = root / "MURA-v1.1"
  k = 0
  layout = {"train": {"patient00001": {"study1_positive": 2, "study2_negative": 1},
                      "patient00002": {"study1_negative": 3},
                      "patient00003": {"study2_positive": 1, "study1_negative": 2},
                      "patient00004": {"study1_positive": 1},
                      "patient00005": {"study1_negative": 2}},
            "valid": {"patient11185": {"study1_positive": 2},
                      "patient11186": {"study1_negative": 1}}}
  for split, patients in layout.items():
    for patient, studies in patients.items():
      for study, n in studies.items():
        for i in range(1, n + 1):
          write_image(base / split / "XR_SHOULDER" / patient / study / f"image{i}.png",
                      mode="L", seed=k)
          k += 1
  # a macOS resource fork next to a real image, and another body part
  (base / "train/XR_SHOULDER/patient00001/study1_positive/._image1.png").write_bytes(b"\0" * 10)
  write_image(base / "train/XR_WRIST/patient09999/study1_positive/image1.png", mode="L")
  return root


CHEX_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding",
                "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
                "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]


def chexpert_row(path, view, card="", edema="", cons="", atel="", eff=""):
  values = dict.fromkeys(CHEX_COLUMNS, "")
  values.update({"Path": path, "Sex": "Female", "Age": "60", "Frontal/Lateral": view,
                 "AP/PA": "AP" if view == "Frontal" else "", "Cardiomegaly": card,
                 "Edema": edema, "Consolidation": cons, "Atelectasis": atel,
                 "Pleural Effusion": eff})
  return [values[c] for c in CHEX_COLUMNS]


def chexpert_tree(root: Path) -> Path:
  base = root / "CheXpert-v1.0-small"
  train = [
      # patient 1: uncertain everywhere -> U-Ones for Edema/Atelectasis only
      chexpert_row("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "Frontal",
                   "-1.0", "-1.0", "-1.0", "-1.0", "-1.0"),
      chexpert_row("CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg", "Lateral",
                   "1.0", "1.0", "1.0", "1.0", "1.0"),
      chexpert_row("CheXpert-v1.0-small/train/patient00001/study2/view1_frontal.jpg", "Frontal",
                   "1.0", "", "", "", ""),
      # patient 2: positives, negatives and blanks; lateral first by path
      chexpert_row("CheXpert-v1.0-small/train/patient00002/study1/view2_frontal.jpg", "Frontal",
                   "1.0", "0.0", "", "1.0", "0.0"),
      chexpert_row("CheXpert-v1.0-small/train/patient00002/study1/view1_lateral.jpg", "Lateral"),
  ] + [chexpert_row(f"CheXpert-v1.0-small/train/patient{p:05d}/study1/view1_frontal.jpg",
                    "Frontal", "", "1.0") for p in range(3, 11)]
  valid = [chexpert_row("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg",
                        "Frontal", "1.0", "0.0", "0.0", "1.0", "0.0"),
           chexpert_row("CheXpert-v1.0-small/valid/patient64542/study1/view1_frontal.jpg",
                        "Frontal")]
  for i, row in enumerate(train + valid):
    write_image(root / row[0], mode="L", seed=i, fmt="JPEG")
  write_csv(base / "train.csv", CHEX_COLUMNS, train)
  write_csv(base / "valid.csv", CHEX_COLUMNS, valid)
  return root


def bach_tree(root: Path, per_class=10, size=(40, 30)) -> Path:
  k = 0
  for c in ("Normal", "Benign", "InSitu", "Invasive"):
    for i in range(1, per_class + 1):
      write_image(root / "ICIAR2018_BACH_Challenge" / "Photos" / c / f"{c[:2].lower()}{i:03d}.tif",
                  size=size, seed=k, fmt="TIFF")
      k += 1
  return root


def mri_tree(root: Path, n_patients=8, per_patient=3) -> Path:
  import h5py
  k = 1
  for p in range(n_patients):
    for _ in range(per_patient):
      path = root / f"brainTumorDataPublic_{1 + k // 10}" / f"{k}.mat"
      path.parent.mkdir(parents=True, exist_ok=True)
      with h5py.File(path, "w") as f:
        g = f.create_group("cjdata")
        img = np.random.default_rng(k).integers(-100, 2000, (30, 40)).astype(np.int16)
        g["image"] = img.T  # MATLAB v7.3 stores column-major: HDF5 sees the transpose
        g["label"] = np.array([[float(1 + p % 3)]])
        g["PID"] = np.array([[ord(c)] for c in f"{100000 + p}"], np.uint16)
      k += 1
  return root


def cholect_tree(root: Path, vids=(1, 2, 8, 6), frames=25) -> Path:
  base = root / "CholecT50"
  for vid in vids:
    name = f"VID{vid:02d}"
    annotations = {}
    for fr in range(frames):
      write_image(base / "videos" / name / f"{fr:06d}.png", seed=fr + vid * 100)
      # instrument fr % 6 present, plus a null record
      annotations[str(fr)] = [[fr % 100, fr % 6, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                              [-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1]]
    (base / "labels").mkdir(parents=True, exist_ok=True)
    (base / "labels" / f"{name}.json").write_text(json.dumps(
        {"fps": 1, "num_frames": frames, "annotations": annotations}))
  return root


def medmnist_file(root: Path, name="pathmnist", n=(12, 4, 5), multilabel=False) -> Path:
  root.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  arrays = {}
  for prefix, count in zip(("train", "val", "test"), n):
    arrays[f"{prefix}_images"] = rng.integers(0, 256, (count, 28, 28, 3), dtype=np.uint8)
    arrays[f"{prefix}_labels"] = (rng.integers(0, 2, (count, 14)) if multilabel
                                  else rng.integers(0, 9, (count, 1))).astype(np.uint8)
  np.savez(root / f"{name}.npz", **arrays)
  return root
