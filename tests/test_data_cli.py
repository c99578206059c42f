"""python -m ftjax.data prepare / inspect."""

from __future__ import annotations

import json

from PIL import Image

from ftjax.data.__main__ import main
from tests.test_data_helpers import isic_tree


def test_prepare_then_inspect(tmp_path, capsys):
  root = isic_tree(tmp_path / "m")
  (root / "ISIC_2020_Training_JPEG/train/ISIC_0000004.jpg").write_bytes(b"")
  argv = ["--dataset", "isic2020", "--data_dir", str(tmp_path / "d"), "--resize", "40"]
  rc = main(["prepare", *argv, "--manual_dir", str(root), "--workers", "1"])
  assert rc == 2 and "ISIC_0000004.jpg" in capsys.readouterr().err
  rc = main(["prepare", *argv, "--manual_dir", str(root), "--skip_bad", "--workers", "1"])
  out = capsys.readouterr().out
  assert rc == 0 and "skipped bad images" in out and "1" in out
  # prepared once: a second prepare reuses it
  assert main(["prepare", *argv, "--manual_dir", str(root)]) == 0
  capsys.readouterr()
  sheet = tmp_path / "sheet.png"
  assert main(["inspect", *argv, "--out", str(sheet)]) == 0
  out = capsys.readouterr().out
  stats = json.loads(out[out.index("{"):out.rindex("}") + 1])
  assert sum(s["count"] for s in stats["splits"].values()) == 27
  assert sum(sum(s["classes"].values()) for s in stats["splits"].values()) == 27
  assert Image.open(sheet).size[0] > 100


def test_prepare_synthetic_without_manual_dir(tmp_path, capsys):
  rc = main(["prepare", "--dataset", "synthetic", "--data_dir", str(tmp_path), "--resize", "32",
             "--option", "num_train=20", "--option", "num_test=5", "--option",
             "image_size=34", "--workers", "1"])
  assert rc == 0
  assert "test: 5 images, no patient ids" in capsys.readouterr().out


def test_unknown_dataset_is_an_error(tmp_path):
  import pytest
  with pytest.raises(SystemExit):
    main(["inspect", "--dataset"])
  assert main(["inspect", "--dataset", "nope", "--data_dir", str(tmp_path)]) == 2
