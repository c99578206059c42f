"""Seeded, deterministic splits: patient-grouped and class-stratified.

Used to carve a validation split for model selection out of the training data
(and, where a dataset has no official test split, the test split too).
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np


def grouped_split(groups: Sequence[Hashable], fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Split example indices so that no group (patient, video) is on both sides.

  Groups are shuffled with ``seed`` and moved to the held-out side until it
  holds about ``fraction`` of the examples.

  Returns:
    (kept, held_out) sorted index arrays.
  """
  groups = [str(g) for g in groups]
  n = len(groups)
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"split fraction must be in [0, 1), got {fraction}")
  unique = sorted(set(groups))
  order = np.random.default_rng(seed).permutation(len(unique))
  sizes: dict[str, int] = {}
  for g in groups:
    sizes[g] = sizes.get(g, 0) + 1
  target = fraction * n
  held: set[str] = set()
  count = 0
  for i in order:
    if count >= target - 0.5:
      break
    g = unique[i]
    held.add(g)
    count += sizes[g]
  mask = np.array([g in held for g in groups], bool)
  return np.flatnonzero(~mask), np.flatnonzero(mask)


def stratified_split(labels: Sequence[int], fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Split indices holding out round(fraction * n_c) examples of every class c."""
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  held = []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    held.extend(rng.permutation(idx)[:int(round(fraction * len(idx)))].tolist())
  mask = np.zeros(len(labels), bool)
  mask[held] = True
  return np.flatnonzero(~mask), np.flatnonzero(mask)


def grouped_three_way(examples: Sequence, test_fraction: float, val_fraction: float,
                      seed: int) -> tuple[dict[str, list], str]:
  """train / validation / test, each patient in one split: test first, then
  validation from the rest. Returns the splits and a note for the metadata."""
  rest, test = grouped_split([e.patient_id for e in examples], test_fraction, seed)
  rest_examples = [examples[i] for i in rest]
  train, val = grouped_split([e.patient_id for e in rest_examples], val_fraction, seed + 1)
  note = (f"patient-grouped: test {test_fraction:.1%} (seed {seed}), "
          f"validation {val_fraction:.0%} of the rest (seed {seed + 1})")
  return {"train": [rest_examples[i] for i in train],
          "validation": [rest_examples[i] for i in val],
          "test": [examples[i] for i in test]}, note
