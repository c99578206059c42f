"""grain loaders: deterministic order, resumable state, exact-once evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from ftjax.data import pipeline
from tests.helpers.data_trees import prepare


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
  return prepare("synthetic", None, tmp_path_factory.mktemp("syn"), num_train=70, num_test=21,
                 image_size=36, val_fraction=0.0 + 0.1)


def _ids(loader):
  return [i for batch in loader for i in batch["id"].tolist()]


def _loader(source, **kw):
  kw.setdefault("batch_size", 8)
  return pipeline.make_loader(source, crop=28, keep_ids=True, **kw)


def test_same_seed_and_epoch_same_order(synthetic):
  source = synthetic.as_data_source("train")
  a = _ids(_loader(source, seed=3, epoch=1))
  b = _ids(_loader(source, seed=3, epoch=1))
  assert a == b
  assert a != _ids(_loader(source, seed=3, epoch=2))
  assert a != _ids(_loader(source, seed=4, epoch=1))
  assert len(a) == (len(source) // 8) * 8  # training drops the short last batch
  assert len(set(a)) == len(a)


def test_batches_are_cropped_and_normalised(synthetic):
  batch = next(iter(_loader(synthetic.as_data_source("train"))))
  assert batch["image"].shape == (8, 28, 28, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (8,)
  assert -3 < batch["image"].mean() < 3


def test_iterator_state_restores_the_rest_of_the_epoch(synthetic):
  source = synthetic.as_data_source("train")
  it = iter(_loader(source, seed=0, epoch=5))
  for _ in range(3):
    next(it)
  state = it.get_state()
  rest = [b["id"].tolist() for b in it]
  it2 = iter(_loader(source, seed=0, epoch=5))
  it2.set_state(state)
  assert [b["id"].tolist() for b in it2] == rest
  assert rest


def test_eval_loader_sees_every_example_exactly_once(synthetic):
  source = synthetic.as_data_source("test")
  batches = list(pipeline.make_eval_loader(source, 8, crop=28, keep_ids=True))
  assert all(b["image"].shape == (8, 28, 28, 3) for b in batches)
  seen = [i for b in batches for i, m in zip(b["id"].tolist(), b["mask"]) if m]
  assert len(seen) == len(source) == 21
  assert sorted(seen) == sorted(source[i]["id"] for i in range(len(source)))
  assert batches[-1]["mask"].tolist() == [True] * 5 + [False] * 3
  assert batches[0]["mask"].all()


def test_uint8_crop_transform(synthetic):
  loader = pipeline.make_loader(synthetic.as_data_source("train"), 4,
                                transforms=[pipeline.CenterCrop(28)])
  batch = next(iter(loader))
  assert batch["image"].dtype == np.uint8 and batch["image"].shape == (4, 28, 28, 3)


@pytest.mark.slow
def test_worker_processes_deterministic_and_resumable(synthetic):
  source = synthetic.as_data_source("train")
  a = _ids(_loader(source, seed=1, epoch=0, num_workers=2))
  assert a == _ids(_loader(source, seed=1, epoch=0, num_workers=2))
  it = iter(_loader(source, seed=1, epoch=0, num_workers=2))
  next(it)
  state = it.get_state()
  rest = _ids(it)
  it2 = iter(_loader(source, seed=1, epoch=0, num_workers=2))
  it2.set_state(state)
  assert _ids(it2) == rest
  seen = [i for b in pipeline.make_eval_loader(source, 8, crop=28, keep_ids=True,
                                               num_workers=2)
          for i, m in zip(b["id"].tolist(), b["mask"]) if m]
  assert sorted(seen) == sorted(source[i]["id"] for i in range(len(source)))


def test_num_batches_counts_what_the_loaders_yield(synthetic):
  source = synthetic.as_data_source("train")
  n = len(source)
  # A batch size at which two workers, each dropping its own remainder, yield fewer
  # batches than n // batch_size.
  batch = next(b for b in range(2, n) if len(range(0, n, 2)) // b + len(range(1, n, 2)) // b
               < n // b)
  for workers in (0, 2):
    loader = pipeline.make_loader(source, batch, seed=0, epoch=0, shuffle=True,
                                  drop_remainder=True, crop=28, num_workers=workers)
    assert pipeline.num_batches(n, batch, workers) == sum(1 for _ in loader)
    evaluation = pipeline.make_eval_loader(source, batch, crop=28, num_workers=workers)
    assert pipeline.num_batches(n, batch, workers, drop_remainder=False) == sum(
        1 for _ in evaluation)
  assert pipeline.num_batches(n, batch, 2) < n // batch
  assert pipeline.num_batches(n, batch, 2, drop_remainder=False) > -(-n // batch)
