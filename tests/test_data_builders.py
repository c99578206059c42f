"""Each builder on a tiny fixture tree in its official layout."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.data_trees import (bach_tree, chexpert_tree, cholect_tree, ids, isic_tree,
                               medmnist_file, mri_tree, mura_tree, prepare, records)


def _patients(builder, split):
  return {r["patient_id"].decode() for r in records(builder, split)}


def _assert_disjoint_patients(builder):
  splits = [_patients(builder, s) for s in ("train", "validation", "test")]
  assert not splits[0] & splits[1] and not splits[0] & splits[2] and not splits[1] & splits[2]


def test_isic2020_duplicates_removed_and_patients_grouped(tmp_path):
  b = prepare("isic2020", isic_tree(tmp_path / "m"), tmp_path / "d", val_fraction=0.2)
  all_ids = ids(b, "train") + ids(b, "validation") + ids(b, "test")
  assert len(all_ids) == 28 and len(set(all_ids)) == 28
  assert "ISIC_0000001" not in all_ids and "ISIC_0000010" not in all_ids
  assert "ISIC_0000000" in all_ids
  assert b.info.metadata["notes"]["duplicates_removed"] == 2
  assert all(len(ids(b, s)) > 0 for s in ("train", "validation", "test"))
  _assert_disjoint_patients(b)
  labels = {r["id"].decode(): r["label"] for s in ("train", "validation", "test")
            for r in records(b, s)}
  assert labels["ISIC_0000007"] == 1 and labels["ISIC_0000008"] == 0
  assert records(b, "train")[0]["image"].shape[:2] in ((32, 42), (32, 42)[::-1])


@pytest.mark.parametrize("unit,train_total,test_total", [("patient", 5, 2), ("image", 12, 3)])
def test_mura_units_labels_and_resource_forks(tmp_path, unit, train_total, test_total):
  b = prepare("mura_shoulder", mura_tree(tmp_path / "m"), tmp_path / "d", unit=unit,
              val_fraction=0.4)
  train = records(b, "train") + records(b, "validation")
  assert len(train) == train_total and len(records(b, "test")) == test_total
  by_id = {r["id"].decode(): int(r["label"]) for r in train + records(b, "test")}
  assert not any("._" in k for k in by_id)
  assert not any("XR_WRIST" in k or "patient09999" in k for k in by_id)
  assert b.info.metadata["notes"]["train_resource_fork_files_skipped"] == 1
  if unit == "patient":
    # first image of the first study: study1 even when study2 is listed first
    assert by_id == {"train/patient00001/study1_positive/image1": 1,
                     "train/patient00002/study1_negative/image1": 0,
                     "train/patient00003/study1_negative/image1": 0,
                     "train/patient00004/study1_positive/image1": 1,
                     "train/patient00005/study1_negative/image1": 0,
                     "valid/patient11185/study1_positive/image1": 1,
                     "valid/patient11186/study1_negative/image1": 0}
  else:
    assert by_id["train/patient00001/study2_negative/image1"] == 0
    assert by_id["train/patient00001/study1_positive/image2"] == 1
  _assert_disjoint_patients(b)
  assert records(b, "test")[0]["image"].shape[-1] == 3  # grayscale -> 3 channels


def test_chexpert_uncertainty_policy_frontal_only(tmp_path):
  b = prepare("chexpert", chexpert_tree(tmp_path / "m"), tmp_path / "d", val_fraction=0.2)
  train = {r["id"].decode(): r["label"] for s in ("train", "validation")
           for r in records(b, s)}
  test = {r["id"].decode(): r["label"] for r in records(b, "test")}
  assert len(train) == 10 and len(test) == 2
  assert not any("lateral" in k for k in list(train) + list(test))
  p1 = train["CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"]
  # [Cardiomegaly, Edema, Consolidation, Atelectasis, Pleural Effusion], all -1
  np.testing.assert_array_equal(p1, [0, 1, 0, 1, 0])
  p2 = train["CheXpert-v1.0-small/train/patient00002/study1/view2_frontal.jpg"]
  np.testing.assert_array_equal(p2, [1, 0, 0, 1, 0])  # blank -> 0
  np.testing.assert_array_equal(
      test["CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg"], [1, 0, 0, 1, 0])
  assert p1.dtype == np.float32
  _assert_disjoint_patients(b)


def test_chexpert_image_unit_keeps_every_frontal(tmp_path):
  b = prepare("chexpert", chexpert_tree(tmp_path / "m"), tmp_path / "d", unit="image")
  n = sum(len(records(b, s)) for s in ("train", "validation"))
  assert n == 11  # patient00001 has two frontal images


def test_bach_stratified_split(tmp_path):
  b = prepare("bach", bach_tree(tmp_path / "m"), tmp_path / "d", val_fraction=0.25)
  test = [int(r["label"]) for r in records(b, "test")]
  val = [int(r["label"]) for r in records(b, "validation")]
  assert sorted(test) == [0, 1, 2, 3]  # 10% of each class
  assert len(records(b, "train")) + len(val) == 36
  assert np.bincount(val).tolist() == [2, 2, 2, 2]
  all_ids = ids(b, "train") + ids(b, "validation") + ids(b, "test")
  assert len(set(all_ids)) == 40
  assert {i.split("/")[0] for i in all_ids} == {"Normal", "Benign", "InSitu", "Invasive"}


def test_brain_tumor_mri_h5_labels_and_patients(tmp_path):
  b = prepare("brain_tumor_mri", mri_tree(tmp_path / "m"), tmp_path / "d",
              test_fraction=0.25, val_fraction=0.2)
  recs = {r["id"].decode(): r for s in ("train", "validation", "test") for r in records(b, s)}
  assert len(recs) == 24
  assert int(recs["1"]["label"]) == 0 and int(recs["4"]["label"]) == 1  # label 1, 2 -> 0, 1
  assert recs["1"]["patient_id"].decode() == "100000"
  # 30x40 slice (h5py transposed back) -> shorter side 32
  assert recs["1"]["image"].shape == (32, 42, 3)
  _assert_disjoint_patients(b)


def test_cholect50_official_split_stride_and_instruments(tmp_path):
  b = prepare("cholect50", cholect_tree(tmp_path / "m"), tmp_path / "d", frame_stride=10)
  assert ids(b, "train") == [f"VID{v:02d}/{f:06d}" for v in (1, 2) for f in (0, 10, 20)]
  assert ids(b, "validation") == [f"VID08/{f:06d}" for f in (0, 10, 20)]
  assert ids(b, "test") == [f"VID06/{f:06d}" for f in (0, 10, 20)]
  label = {r["id"].decode(): r["label"] for r in records(b, "train")}
  np.testing.assert_array_equal(label["VID01/000010"], [0, 0, 0, 0, 1, 0])  # 10 % 6 = 4
  assert "VID05" in b.info.metadata["notes"]["missing_videos"]


@pytest.mark.parametrize("multilabel", [False, True])
def test_medmnist_npz(tmp_path, multilabel):
  name = "chestmnist" if multilabel else "pathmnist"
  b = prepare(f"medmnist_{name}", medmnist_file(tmp_path / "m", name, multilabel=multilabel),
              tmp_path / "d")
  assert [len(records(b, s)) for s in ("train", "validation", "test")] == [12, 4, 5]
  r = records(b, "test")[0]
  assert r["image"].shape == (32, 32, 3)
  assert np.asarray(r["label"]).shape == ((14,) if multilabel else ())


def test_medmnist_rejects_object_arrays(tmp_path):
  from ftjax.data import DataError
  (tmp_path / "m").mkdir()
  np.savez(tmp_path / "m" / "pathmnist.npz", train_images=np.array([object()], dtype=object))
  with pytest.raises(DataError, match="pathmnist.npz"):
    prepare("medmnist_pathmnist", tmp_path / "m", tmp_path / "d")


def test_synthetic_deterministic_and_learnable_layout(tmp_path):
  a = prepare("synthetic", None, tmp_path / "a", num_train=40, num_test=8, image_size=36)
  b = prepare("synthetic", None, tmp_path / "b", num_train=40, num_test=8, image_size=36)
  ra, rb = records(a, "train"), records(b, "train")
  assert [r["id"] for r in ra] == [r["id"] for r in rb]
  assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(ra, rb))
  assert len(ra) + len(records(a, "validation")) == 40
  c = prepare("synthetic", None, tmp_path / "c", num_train=40, num_test=8, image_size=36,
              seed=1)
  assert not np.array_equal(records(c, "test")[0]["image"], records(a, "test")[0]["image"])
  m = prepare("synthetic_multilabel", None, tmp_path / "m", num_train=20, num_test=4)
  assert np.asarray(records(m, "train")[0]["label"]).shape == (5,)


def test_synthetic_labels_are_learnable(tmp_path):
  from sklearn.linear_model import LogisticRegression
  b = prepare("synthetic", None, tmp_path / "s", num_train=160, num_test=80, image_size=32)

  def features(split):
    rs = records(b, split)
    # chroma of each pixel (colour minus its gray level): shape colours are per class
    x = []
    for r in rs:
      img = r["image"].astype(np.float32)
      chroma = (img - img.mean(-1, keepdims=True)).reshape(-1, 3)
      strong = chroma[np.linalg.norm(chroma, axis=-1) > 40]
      x.append(np.concatenate([strong.mean(0) if len(strong) else np.zeros(3),
                               [len(strong) / len(chroma)]]))
    return np.asarray(x, np.float32) / 50.0, np.asarray([int(r["label"]) for r in rs])

  x, y = features("train")
  xt, yt = features("test")
  accuracy = LogisticRegression(max_iter=2000).fit(x, y).score(xt, yt)
  assert accuracy > 0.6, accuracy  # chance is 0.25


# ---- the builders are the registry -----------------------------------------------


def test_every_registry_entry_agrees_with_its_builder(tmp_path):
  """What a name declares (classes, multi-label flag, loss) is what its builder
  writes: the label feature of the builder created from that name."""
  from ftjax.data import get_dataset, list_datasets
  for name in list_datasets():
    info = get_dataset(name)
    builder = info.create(tmp_path)
    label = builder.info.features["label"]
    assert builder.class_names() == info.class_names, name
    assert builder.MULTILABEL == info.multilabel, name
    if info.multilabel:
      assert label.shape == (info.num_classes,) and info.loss.startswith("sigmoid"), name
    else:
      assert label.names == list(info.class_names) and info.loss.startswith("softmax"), name


def test_paper_datasets_declare_the_papers_metrics_and_classes():
  """Paper Table 2 and tables 3-10: class counts, label type and headline metrics."""
  from ftjax import paper_results
  from ftjax.data import get_dataset
  paper = {"chexpert": (5, True), "mura_shoulder": (2, False), "mura_wrist": (2, False),
           "mura_humerus": (2, False), "brain_tumor_mri": (3, False), "bach": (4, False),
           "isic2020": (2, False), "cholect50": (6, True)}
  assert set(paper) == set(paper_results.datasets())
  for name, (num_classes, multilabel) in paper.items():
    info = get_dataset(name)
    assert (info.num_classes, info.multilabel) == (num_classes, multilabel), name
    assert info.main_metrics == paper_results.metrics(name), name
  assert get_dataset("mura_wrist").options == {"part": "wrist"}
  assert "part" not in get_dataset("mura_wrist").option_defaults()


def _toy_builder(registry_names):
  import dataclasses as dc
  from ftjax.data import ImageBuilder, ImageConfig

  @dc.dataclass(eq=True)
  class ToyConfig(ImageConfig):
    stain: str = "he"

  class Toy(ImageBuilder, skip_registration=True):
    CONFIG_CLASS = ToyConfig
    CLASS_NAMES = ("benign", "malignant")
    MAIN_METRICS = ("auroc", "accuracy")
    REGISTRY_NAMES = registry_names

  return Toy


def test_a_new_dataset_is_one_builder_class():
  from ftjax.data.registry import registry_of
  toy = _toy_builder({"toy_he": {"stain": "he"}, "toy_ihc": {"stain": "ihc"}})
  registry = registry_of([toy])
  assert sorted(registry) == ["toy_he", "toy_ihc"]
  info = registry["toy_ihc"]
  assert (info.builder, info.options, info.class_names, info.num_classes, info.multilabel,
          info.main_metrics) == (toy, {"stain": "ihc"}, ("benign", "malignant"), 2, False,
                                 ("auroc", "accuracy"))
  assert "stain" not in info.option_defaults() and "val_fraction" in info.option_defaults()
  assert info.create("/nonexistent").builder_config.stain == "ihc"


def test_two_builders_declaring_one_name_are_refused():
  from ftjax.data.registry import registry_of
  first, second = _toy_builder({"toy": {}}), _toy_builder({"toy": {}})
  with pytest.raises(ValueError, match="'toy' is declared by both Toy and Toy"):
    registry_of([first, second])
  assert registry_of([_toy_builder({})]) == {}
