"""How sure a comparison is: bootstrap intervals, paired differences, rank tests.

Within a cell (dataset, arch, strategy), from the runs' saved test predictions:
- Bootstrap interval: the test set is resampled with replacement `resamples`
  times (whole patients where the dataset has patient ids, examples otherwise;
  numpy Generator, fixed seed). Each resample's statistic is the mean over the
  cell's seeds of the metric (ftjax.metrics) on that resample; the 95% interval
  is its 2.5th and 97.5th percentile. One set of resamples per dataset serves
  every run, so the runs of a dataset are compared on the same draws.
- Paired difference to FT: per resample, mean over the seeds both cells have
  of (metric of the strategy - metric of FT), same seed and same test examples.
  Call, with a region of practical equivalence (ROPE) of +-`rope` points:
    win   the interval is above 0 and the difference is above +rope;
    loss  the interval is below 0 and the difference is below -rope;
    tie   otherwise: inside the ROPE, or not significant (interval holds 0).

Across cells (blocks: (dataset, arch); higher is better, rank 1 best):
- Friedman test (Demsar 2006, eq. for chi2_F from average ranks, no tie
  correction) with the Iman-Davenport F_F and its p-value; scipy's
  tie-corrected chi2 p-value beside it.
- Pairwise Wilcoxon signed-rank tests (scipy, zero differences split evenly as
  in Demsar 2006) with Holm's step-down correction; strategies no pair of
  which differs significantly form the cliques of the critical-difference
  diagram (the Wilcoxon-Holm diagram of Ismail Fawaz et al. 2019).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import warnings

import numpy as np
import scipy.stats

from ftjax import metrics as metrics_lib

DEFAULT_RESAMPLES = 1000
DEFAULT_ROPE = 1.0  # points of the metric (the report's metrics are percent)
DEFAULT_SEED = 0
DEFAULT_MIN_TEST_GROUPS = metrics_lib.MIN_TEST_GROUPS  # fewer: no verdict
LEVEL = 0.95
ALPHA = 0.05


# --- Bootstrap ----------------------------------------------------------------------


def resample_indices(ids: np.ndarray, groups: np.ndarray, resamples: int,
                     seed: int = DEFAULT_SEED) -> list[np.ndarray]:
  """`resamples` bootstrap index arrays into examples.

  Where examples have a group (patient id, "" for none), whole groups are drawn
  with replacement and all their examples taken; an example without a group is
  a group of its own. Seeded by `seed` and the sorted ids, so the draws do not
  depend on the order the examples are stored in.
  """
  n = len(groups)
  unique, inverse = np.unique(_group_keys(ids, groups), return_inverse=True)
  rng = np.random.default_rng([seed, _stable_hash(ids)])
  drawn = rng.integers(0, len(unique), size=(resamples, len(unique)))
  if len(unique) == n:  # every example its own group: plain example resampling
    order = np.argsort(inverse)  # group code -> example index
    return list(order[drawn])
  members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
  return [np.concatenate([members[g] for g in row]) for row in drawn]


def _group_keys(ids: np.ndarray, groups: np.ndarray) -> np.ndarray:
  """Each example's resampling unit: its patient id, or its own id where it has none."""
  groups = np.asarray(groups).astype(str)
  own = np.char.add("\x00", np.asarray(ids).astype(str))  # never equal to a patient id
  return np.where(groups == "", own, groups)


def group_count(ids: np.ndarray, groups: np.ndarray) -> int:
  """How many units the bootstrap draws from: patients, plus examples without one."""
  return len(np.unique(_group_keys(ids, groups)))


def _stable_hash(ids: np.ndarray) -> int:
  """A 32-bit number from the sorted ids (not Python's per-process hash())."""
  text = "\n".join(sorted(np.asarray(ids).astype(str).tolist())).encode()
  return int.from_bytes(hashlib.sha256(text).digest()[:4], "little")


_METRIC_FUNCTIONS = {
    "map": lambda s, y, multi: metrics_lib.mean_average_precision(s, y),
    "accuracy": metrics_lib.macro_accuracy,
    "auroc": lambda s, y, multi: metrics_lib.macro_auroc(s, y),
    "kappa": metrics_lib.cohen_kappa,
    "f1": metrics_lib.macro_f1,
}


def metric_value(metric: str, scores: np.ndarray, labels: np.ndarray) -> float:
  """ftjax.metrics' `metric` in percent (multi-label when labels are a matrix)."""
  return 100.0 * _METRIC_FUNCTIONS[metric](scores, labels, np.ndim(labels) == 2)


def metric_samples(metric: str, scores: np.ndarray, labels: np.ndarray,
                   indices: list[np.ndarray]) -> np.ndarray:
  """The metric (percent) on every resample: float64 [resamples].

  AUROC and mAP (the slow ones: a sort per class and resample) are computed for
  all resamples at once from how often each example is drawn (`ranking_samples`,
  equal to ftjax.metrics on each resample); the others call ftjax.metrics per
  resample. A resample can miss a class; the metrics then leave it out of their
  mean (as on any split), so the per-class warnings are silenced here.
  """
  if metric in ("auroc", "map"):
    return ranking_samples(metric, scores, labels, indices)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return np.array([metric_value(metric, scores[i], labels[i]) for i in indices])


def ranking_samples(metric: str, scores: np.ndarray, labels: np.ndarray,
                    indices: list[np.ndarray]) -> np.ndarray:
  """Macro AUROC or mAP (percent) of every resample, vectorised over resamples.

  Per class, examples are sorted once by score; a resample is the number of
  times it draws each example, so its positives and negatives at each distinct
  score are weighted counts, and AUROC (ties count one half) and AP (sum over
  thresholds of recall step x precision) follow from cumulative sums. Classes
  without a positive (or, for AUROC, a negative) in a resample are left out of
  its mean, as ftjax.metrics does.
  """
  scores = np.asarray(scores, np.float64)
  n, classes = scores.shape
  targets = (np.asarray(labels) > 0.5).astype(np.float64) if np.ndim(labels) == 2 \
      else np.eye(classes)[np.asarray(labels, np.int64)]
  counts = np.stack([np.bincount(row, minlength=n) for row in indices]).astype(np.float64)
  per_class = np.stack([_ranking_metric(metric, scores[:, c], targets[:, c], counts)
                        for c in range(classes)], axis=1)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # a resample with no valid class: nan
    return 100.0 * np.nanmean(per_class, axis=1)


def _ranking_metric(metric: str, score: np.ndarray, target: np.ndarray,
                    counts: np.ndarray) -> np.ndarray:
  """One class's AUROC or AP on each resample (nan where undefined): [resamples]."""
  order = np.argsort(-score, kind="mergesort")
  ranked = score[order]
  starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
  drawn = counts[:, order]
  pos = np.add.reduceat(drawn * target[order], starts, axis=1)  # [resamples, distinct]
  neg = np.add.reduceat(drawn * (1.0 - target[order]), starts, axis=1)
  total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
  with np.errstate(divide="ignore", invalid="ignore"):
    if metric == "auroc":
      below = total_neg[:, None] - np.cumsum(neg, axis=1)  # negatives scored lower
      value = (pos * (below + 0.5 * neg)).sum(axis=1) / (total_pos * total_neg)
      return np.where((total_pos > 0) & (total_neg > 0), value, np.nan)
    true_pos, seen = np.cumsum(pos, axis=1), np.cumsum(pos + neg, axis=1)
    precision = np.where(seen > 0, true_pos / np.where(seen > 0, seen, 1), 0.0)
    value = (pos * precision).sum(axis=1) / total_pos
    return np.where(total_pos > 0, value, np.nan)


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
  """The central `level` percentile interval of finite bootstrap samples."""
  samples = np.asarray(samples, np.float64)
  samples = samples[np.isfinite(samples)]
  if not samples.size:
    return math.nan, math.nan
  tail = 100.0 * (1.0 - level) / 2.0
  low, high = np.percentile(samples, [tail, 100.0 - tail])
  return float(low), float(high)


@dataclasses.dataclass(frozen=True)
class Difference:
  """A paired difference (strategy - baseline) with its interval and call."""
  estimate: float
  low: float
  high: float
  call: str    # "win", "tie" or "loss"
  reason: str  # why: "above the ROPE", "inside the ROPE", "not significant", ...


def call_difference(estimate: float, low: float, high: float,
                    rope: float = DEFAULT_ROPE) -> Difference:
  """Win / tie / loss of a difference and its interval (module docstring)."""
  if any(math.isnan(x) for x in (estimate, low, high)):
    return Difference(estimate, low, high, "tie", "no interval")
  if low > 0 and estimate > rope:
    return Difference(estimate, low, high, "win", "significant and above the ROPE")
  if high < 0 and estimate < -rope:
    return Difference(estimate, low, high, "loss", "significant and below the ROPE")
  reason = ("inside the ROPE" if abs(estimate) <= rope else "not significant")
  return Difference(estimate, low, high, "tie", reason)


# --- Across cells -------------------------------------------------------------------


def average_ranks(values: np.ndarray) -> np.ndarray:
  """Mean rank of each column over the rows of [blocks, treatments]; 1 = highest,
  ties share their average rank."""
  return scipy.stats.rankdata(-np.asarray(values, np.float64), axis=1).mean(axis=0)


@dataclasses.dataclass(frozen=True)
class Friedman:
  blocks: int
  treatments: int
  ranks: np.ndarray     # average rank per treatment
  chi2: float           # Demsar's chi2_F (no tie correction)
  p_chi2: float
  f: float              # Iman-Davenport F_F
  p_f: float
  chi2_tie_corrected: float  # scipy.stats.friedmanchisquare
  p_tie_corrected: float


def friedman(values: np.ndarray) -> Friedman:
  """Friedman test of [blocks N, treatments k] (higher better), Demsar 2006 sec. 3.2.2."""
  values = np.asarray(values, np.float64)
  n, k = values.shape
  ranks = average_ranks(values)
  chi2 = 12.0 * n / (k * (k + 1)) * (np.sum(ranks**2) - k * (k + 1) ** 2 / 4.0)
  f = (n - 1) * chi2 / (n * (k - 1) - chi2) if n * (k - 1) != chi2 else math.inf
  corrected = chi2 / _tie_correction(values)
  return Friedman(n, k, ranks, float(chi2), float(scipy.stats.chi2.sf(chi2, k - 1)),
                  float(f), float(scipy.stats.f.sf(f, k - 1, (k - 1) * (n - 1))),
                  float(corrected), float(scipy.stats.chi2.sf(corrected, k - 1)))


def _tie_correction(values: np.ndarray) -> float:
  """1 - sum over tied groups (t^3 - t) / (N k (k^2 - 1)), the divisor of
  scipy.stats.friedmanchisquare's statistic; computed here as scipy wants k >= 3
  and a study of two strategies has k = 2. All values of every block tied: nan."""
  n, k = values.shape
  ties = sum(float(np.sum(counts**3 - counts))
             for counts in (np.unique(row, return_counts=True)[1] for row in values))
  correction = 1.0 - ties / (n * k * (k * k - 1))
  return correction if correction > 0 else math.nan


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
  """Two-sided Wilcoxon signed-rank p-value of paired a, b (zeros split evenly);
  1 when every pair is equal."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if np.all(a == b):
    return 1.0
  return float(scipy.stats.wilcoxon(a, b, zero_method="zsplit").pvalue)


def holm(p_values: list[float], alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
  """Holm's step-down procedure: (adjusted p-values, rejected), in the input order."""
  p = np.asarray(p_values, np.float64)
  m = len(p)
  order = np.argsort(p, kind="mergesort")
  adjusted_sorted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
  adjusted = np.empty(m)
  adjusted[order] = adjusted_sorted
  return adjusted, adjusted < alpha


@dataclasses.dataclass(frozen=True)
class PairwiseTest:
  names: list[str]
  ranks: np.ndarray                       # average rank per name
  pairs: list[tuple[str, str, float, float, bool]]  # (a, b, p, Holm-adjusted p, differs)
  cliques: list[list[str]]                # maximal runs (by rank) with no difference

  def differs(self, a: str, b: str) -> bool:
    return any({a, b} == {x, y} and d for x, y, _, _, d in self.pairs)


def wilcoxon_holm(values: np.ndarray, names: list[str], alpha: float = ALPHA) -> PairwiseTest:
  """All pairs of columns of [blocks, treatments]: Wilcoxon, then Holm; the cliques."""
  values = np.asarray(values, np.float64)
  pairs = list(itertools.combinations(range(len(names)), 2))
  p = [wilcoxon_p(values[:, i], values[:, j]) for i, j in pairs]
  adjusted, rejected = holm(p, alpha) if pairs else (np.array([]), np.array([], bool))
  ranks = average_ranks(values)
  tests = [(names[i], names[j], p[n], float(adjusted[n]), bool(rejected[n]))
           for n, (i, j) in enumerate(pairs)]
  result = PairwiseTest(list(names), ranks, tests, [])
  return dataclasses.replace(result, cliques=_cliques(result))


def _cliques(test: PairwiseTest) -> list[list[str]]:
  """Maximal runs of rank-ordered names of which no two differ; runs of one are left out."""
  by_rank = [test.names[i] for i in np.argsort(test.ranks, kind="mergesort")]
  runs = []
  for start in range(len(by_rank)):
    end = start
    while end + 1 < len(by_rank) and not any(
        test.differs(by_rank[i], by_rank[end + 1]) for i in range(start, end + 1)):
      end += 1
    if end > start and not any(s <= start and end <= e for s, e in runs):
      runs.append((start, end))
  return [by_rank[s:e + 1] for s, e in runs]
