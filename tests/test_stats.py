"""ftjax.report.stats against published results and independent computations."""

import math
import warnings

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from ftjax.report import stats

# Demsar (2006), JMLR 7, Table 6: AUC of C4.5, C4.5+m, C4.5+cf and C4.5+m+cf on 14
# data sets (Table 2 holds the first two columns). The table prints three decimals;
# its average ranks (2.893 and 1.964, i.e. rank sums 40.5 and 27.5) rank C4.5+cf
# above C4.5+m+cf on "voting", where both print 0.975, so the tie is broken here.
DEMSAR_TABLE6 = np.array([
    [0.763, 0.768, 0.771, 0.798],  # adult (sample)
    [0.599, 0.591, 0.590, 0.569],  # breast cancer
    [0.954, 0.971, 0.968, 0.967],  # breast cancer wisconsin
    [0.628, 0.661, 0.654, 0.657],  # cmc
    [0.882, 0.888, 0.886, 0.898],  # ionosphere
    [0.936, 0.931, 0.916, 0.931],  # iris
    [0.661, 0.668, 0.609, 0.685],  # liver disorders
    [0.583, 0.583, 0.563, 0.625],  # lung cancer
    [0.775, 0.838, 0.866, 0.875],  # lymphography
    [1.000, 1.000, 1.000, 1.000],  # mushroom
    [0.940, 0.962, 0.965, 0.962],  # primary tumor
    [0.619, 0.666, 0.614, 0.669],  # rheum
    [0.972, 0.981, 0.97501, 0.975],  # voting (see below)
    [0.957, 0.978, 0.946, 0.970],  # wine
])


def test_friedman_equals_demsar_table6():
  result = stats.friedman(DEMSAR_TABLE6)
  # Published: average ranks 3.143, 2.000, 2.893, 1.964; chi2_F = 9.28; F_F = 3.69,
  # above the critical F(3, 39) = 2.85 at alpha 0.05.
  np.testing.assert_allclose(result.ranks, [3.143, 2.000, 2.893, 1.964], atol=5e-4)
  assert round(result.chi2, 2) == 9.28
  assert round(result.f, 2) == 3.69
  assert result.p_f < 0.05 < scipy.stats.f.sf(2.85, 3, 39) + 1e-3
  # scipy's tie-corrected statistic, computed here directly.
  direct = scipy.stats.friedmanchisquare(*DEMSAR_TABLE6.T)
  assert result.chi2_tie_corrected == pytest.approx(direct.statistic)


def test_friedman_without_ties_equals_scipy():
  values = np.random.default_rng(3).normal(size=(20, 5))  # no ties
  result = stats.friedman(values)
  direct = scipy.stats.friedmanchisquare(*values.T)
  assert result.chi2 == pytest.approx(direct.statistic)
  assert result.p_chi2 == pytest.approx(direct.pvalue)


def test_wilcoxon_equals_demsar_table2():
  # Demsar section 3.1.3: C4.5+m vs C4.5, R+ = 93, R- = 12 (zero differences split
  # evenly); T = 12 is below the critical value 21 for N = 14 at alpha 0.05.
  c45, c45_m = DEMSAR_TABLE6[:, 0], DEMSAR_TABLE6[:, 1]
  result = scipy.stats.wilcoxon(c45_m, c45, zero_method="zsplit")
  assert result.statistic == 12.0
  assert stats.wilcoxon_p(c45_m, c45) == pytest.approx(result.pvalue)
  assert stats.wilcoxon_p(c45_m, c45) < 0.05


def test_holm_equals_demsar_example():
  # Demsar section 3.2.2: C4.5+m+cf as control, z = (R_i - R_j) / sqrt(k(k+1)/6N);
  # p = 0.016 (C4.5), 0.057 (C4.5+cf), 0.942 (C4.5+m); Holm rejects only the first
  # (0.016 < 0.05/3) and retains the others (0.057 > 0.05/2).
  ranks = {"c45": 3.143, "c45_m": 2.000, "c45_cf": 2.893}
  se = math.sqrt(4 * 5 / (6 * 14))
  p = [2 * scipy.stats.norm.sf(abs(r - 1.964) / se) for r in ranks.values()]
  np.testing.assert_allclose(p, [0.016, 0.942, 0.057], atol=1.5e-3)
  adjusted, rejected = stats.holm(p)
  assert rejected.tolist() == [True, False, False]
  # Step-down by hand: 3 p_(1), max(that, 2 p_(2)), max(that, 1 p_(3)).
  np.testing.assert_allclose(adjusted, [3 * p[0], max(3 * p[0], 2 * p[2], p[1]),
                                        max(3 * p[0], 2 * p[2])])


def test_cliques_group_strategies_that_do_not_differ():
  rng = np.random.default_rng(0)
  base = rng.normal(size=(30, 1))
  values = base + np.array([[0.0, 0.001, 3.0, 3.001]]) + rng.normal(0, 0.01, (30, 4))
  test = stats.wilcoxon_holm(values, ["a", "b", "c", "d"])
  assert sorted(map(sorted, test.cliques)) == [["a", "b"], ["c", "d"]]
  assert test.differs("a", "c") and not test.differs("a", "b")


def test_bootstrap_interval_covers_at_the_nominal_rate():
  # Accuracy of a classifier right with probability 0.8 on 200 examples: the 95%
  # interval of macro accuracy (binary: plain accuracy) covers 80 % in about 95 % of
  # 200 simulated test sets (binomial sd 1.5 points; percentile intervals run a little
  # short at this size).
  rng = np.random.default_rng(1)
  covered = 0
  trials, n = 200, 200
  for _ in range(trials):
    labels = rng.integers(0, 2, n)
    right = rng.random(n) < 0.8
    predicted = np.where(right, labels, 1 - labels)
    scores = np.eye(2, dtype=np.float32)[predicted]
    ids = np.arange(n).astype(str)
    indices = stats.resample_indices(ids, np.full(n, ""), 250, seed=int(rng.integers(1e9)))
    low, high = stats.percentile_interval(stats.metric_samples("accuracy", scores, labels,
                                                               indices))
    covered += low <= 80.0 <= high
  assert 0.90 <= covered / trials <= 0.99


def test_patient_resampling_keeps_a_patients_images_together():
  groups = np.array(["p1", "p1", "p1", "p2", "p3", "p3", "", ""])
  ids = np.array([f"img{i}" for i in range(8)])
  indices = stats.resample_indices(ids, groups, 200, seed=5)
  for row in indices:
    counts = np.bincount(row, minlength=8)
    # Each patient's images are drawn the same number of times.
    assert counts[0] == counts[1] == counts[2] and counts[4] == counts[5]
    assert counts[[0, 3, 4, 6, 7]].sum() == 5  # 5 units: 3 patients, 2 lone images
  lone = np.array([np.bincount(r, minlength=8)[6] for r in indices])
  assert lone.min() == 0 and lone.max() >= 2  # a lone image is its own unit
  # The same draws whatever order the examples are stored in.
  order = np.random.default_rng(0).permutation(8)
  again = stats.resample_indices(ids[order], groups[order], 200, seed=5)
  assert [sorted(ids[order][r]) for r in again] == [sorted(ids[r]) for r in indices]


def test_metric_samples_use_the_metrics_checked_against_sklearn():
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 3, 60)
  scores = rng.dirichlet(np.ones(3), 60)  # probabilities, as the saved scores are
  indices = stats.resample_indices(np.arange(60).astype(str), np.full(60, ""), 5)
  got = stats.metric_samples("auroc", scores, labels, indices)
  want = [100 * sklearn.metrics.roc_auc_score(labels[i], scores[i], multi_class="ovr")
          for i in indices]
  np.testing.assert_allclose(got, want, rtol=1e-9)


@pytest.mark.parametrize("estimate,low,high,call", [
    (3.0, 1.0, 5.0, "win"), (-3.0, -5.0, -1.0, "loss"), (0.5, 0.1, 0.9, "tie"),
    (3.0, -1.0, 7.0, "tie"), (0.8, 0.2, 1.4, "tie")])
def test_win_tie_loss_calls(estimate, low, high, call):
  assert stats.call_difference(estimate, low, high, rope=1.0).call == call


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("metric", ["auroc", "map"])
def test_vectorised_ranking_metrics_equal_the_metrics_per_resample(metric, multilabel):
  rng = np.random.default_rng(4)
  n, classes = 80, 4
  if multilabel:
    labels = (rng.random((n, classes)) < 0.15).astype(np.int64)  # some resamples miss one
  else:
    labels = rng.integers(0, classes, n)
  scores = np.round(rng.random((n, classes)), 1)  # many ties
  groups = np.array([f"p{i // 4}" for i in range(n)])
  indices = stats.resample_indices(np.arange(n).astype(str), groups, 40)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    loop = [stats.metric_value(metric, scores[i], labels[i]) for i in indices]
  np.testing.assert_allclose(stats.ranking_samples(metric, scores, labels, indices), loop,
                             rtol=1e-10)
