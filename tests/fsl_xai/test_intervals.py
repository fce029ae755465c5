"""Interval formulas against known values and scipy, the replaced hand-written intervals, and
coverage by simulation."""

import math
import sys

import numpy as np
import pytest
from scipy import stats

from fsl_xai.errors import DataError
from fsl_xai.intervals import (
    cluster_bootstrap,
    cluster_bootstrap_proportion,
    crossed_bootstrap_ratio,
    mean_difference_interval,
    mean_interval,
    newcombe_difference_interval,
    proportion_interval,
    wilson_interval,
)


@pytest.mark.parametrize("k, n, low, high", [
    # Newcombe (1998), Statistics in Medicine 17:857, Table I (Wilson score, method 3)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    # 1 of 6, computed by hand from the score formula
    (1, 6, 0.0301, 0.5635),
])
def test_wilson_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=6e-5)
    assert hi == pytest.approx(high, abs=6e-5)
    ref = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert lo == pytest.approx(ref.low, abs=1e-9) and hi == pytest.approx(ref.high, abs=1e-9)


def test_wilson_vectorised_and_edges():
    lo, hi = wilson_interval(np.array([0, 5, 10]), np.array([10, 10, 10]))
    assert lo[0] == 0.0 and hi[2] == 1.0
    assert lo[1] < 0.5 < hi[1] and hi[1] - 0.5 == pytest.approx(0.5 - lo[1])
    assert np.isnan(wilson_interval(0, 0)[0])
    with pytest.raises(DataError):
        wilson_interval(3, 2)


def test_newcombe_difference_known_value():
    # Newcombe (1998b) example: 56/70 vs 48/80 -> difference 0.2, hybrid score CI 0.0524 to 0.3339
    lo, hi = newcombe_difference_interval(56, 70, 48, 80)
    assert lo == pytest.approx(0.0524, abs=6e-4) and hi == pytest.approx(0.3339, abs=6e-4)


def _clustered(rng, R, E, m, p, rho):
    """R experiments of E episodes x m queries; per-episode rates ~ Beta with mean p, ICC rho."""
    a, b = p * (1 - rho) / rho, (1 - p) * (1 - rho) / rho
    errors = rng.binomial(m, rng.beta(a, b, size=(R, E))).astype(float)
    return errors, np.full((R, E), float(m))


def test_cluster_bootstrap_coverage_on_clustered_data():
    p = 0.25
    errors, totals = _clustered(np.random.default_rng(2024), R=300, E=60, m=10, p=p, rho=0.15)
    est, lo, hi = cluster_bootstrap_proportion(errors, totals, n_boot=1000, seed=0)
    coverage = np.mean((lo <= p) & (p <= hi))
    # 300 experiments: the standard error of a 95% coverage is 0.0126
    assert 0.91 <= coverage <= 0.99, coverage
    # the same data with queries treated as independent: Wilson is far too narrow
    wlo, whi = wilson_interval(errors.sum(1), totals.sum(1))
    wilson_cov = np.mean((wlo <= p) & (p <= whi))
    assert wilson_cov < 0.88, wilson_cov
    assert np.mean(hi - lo) > 1.3 * np.mean(whi - wlo)


def test_wilson_coverage_on_independent_data():
    rng = np.random.default_rng(7)
    p, n = 0.2, 150
    k = rng.binomial(n, p, size=4000)
    lo, hi = wilson_interval(k, n)
    assert 0.935 <= np.mean((lo <= p) & (p <= hi)) <= 0.965


def _ratio(sums):
    return sums[..., 0] / sums[..., 1]


def test_cluster_bootstrap_generic_matches_paired_and_is_deterministic():
    rng = np.random.default_rng(1)
    t = rng.integers(5, 15, size=40).astype(float)
    e = rng.binomial(t.astype(int), 0.3).astype(float)
    per_episode = np.c_[e, t]
    a = cluster_bootstrap(per_episode, _ratio, n_boot=1500, seed=3)
    b = cluster_bootstrap_proportion(e, t, n_boot=1500, seed=3)
    assert a.estimate == pytest.approx(e.sum() / t.sum())
    assert a.low == pytest.approx(b.low, abs=0.02) and a.high == pytest.approx(b.high, abs=0.02)
    again = cluster_bootstrap(per_episode, _ratio, n_boot=1500, seed=3)
    assert (again.low, again.high) == (a.low, a.high)
    other = cluster_bootstrap(per_episode, _ratio, n_boot=1500, seed=4)
    assert (other.low, other.high) != (a.low, a.high)
    assert a.method == "cluster_bootstrap_bca" and a.n == 40


def test_degenerate_and_single_episode_fall_back_to_wilson():
    iv = proportion_interval(np.zeros(12), np.full(12, 5.0))
    assert iv.estimate == 0 and iv.low == 0 and iv.high == pytest.approx(wilson_interval(0, 60)[1])
    assert iv.method.startswith("wilson")
    one = proportion_interval(np.array([3.0]), np.array([10.0]))
    assert one.method.startswith("wilson") and one.low == pytest.approx(wilson_interval(3, 10)[0])
    w = proportion_interval(np.array([1.0, 2.0]), np.array([5.0, 5.0]), ci="wilson")
    assert w.method == "wilson" and w.low == pytest.approx(wilson_interval(3, 10)[0])
    with pytest.raises(DataError, match="unknown interval"):
        proportion_interval([1], [2], ci="normal")


@pytest.mark.parametrize("method", ["BCa", "percentile"])
def test_cluster_bootstrap_equals_scipy_bootstrap(method):
    # same draws and the same BCa formulas as scipy.stats.bootstrap on the indexed data
    rng = np.random.default_rng(11)
    t = rng.integers(3, 20, size=57).astype(float)
    e = rng.binomial(t.astype(int), rng.beta(2, 5, size=57)).astype(float)

    def stat(a, b, axis=-1):
        return a.sum(axis) / b.sum(axis)

    ref = stats.bootstrap((e, t), stat, paired=True, vectorized=True, n_resamples=1234, method=method,
                          confidence_level=0.9, rng=np.random.default_rng(8))
    ours = cluster_bootstrap(np.c_[e, t], _ratio, n_boot=1234, seed=8, confidence=0.9, method=method)
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=1e-12)
    # and row by row for the vectorised (R, n_episodes) input of coverage studies
    errors, totals = _clustered(np.random.default_rng(3), R=4, E=25, m=8, p=0.3, rho=0.2)
    ref2 = stats.bootstrap((errors, totals), stat, paired=True, vectorized=True, n_resamples=500, method=method,
                           axis=-1, rng=np.random.default_rng(0))
    _, lo, hi = cluster_bootstrap_proportion(errors, totals, n_boot=500, seed=0, method=method)
    np.testing.assert_allclose(lo, ref2.confidence_interval.low, atol=1e-12)
    np.testing.assert_allclose(hi, ref2.confidence_interval.high, atol=1e-12)


def test_bootstrap_memory_does_not_grow_with_clusters_squared():
    # a per-query bootstrap over 100,000 rows: an index-based jackknife would hold 10^10 indices
    import tracemalloc

    rng = np.random.default_rng(0)
    n = 100_000
    rows = np.zeros((n, 3))
    rows[:, 0] = rng.random(n) < 0.2
    rows[:, 1] = 1.0
    tracemalloc.start()
    try:
        iv = cluster_bootstrap(rows, _ratio, n_boot=300, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert iv.low < rows[:, 0].mean() < iv.high
    assert peak < 200e6, f"peak {peak / 1e6:.0f} MB"


def test_mean_interval_normal_and_t_by_hand():
    iv = mean_interval([0.5, 1.0])
    # s = 0.35355, half width 1.96 * s / sqrt(2) = 0.49 (1.96 exactly at 95%, as the literature)
    assert (iv.estimate, iv.low, iv.high) == pytest.approx((0.75, 0.26, 1.24)) and iv.method == "normal"
    t = mean_interval([0.5, 1.0], method="t")
    assert t.high - 0.75 == pytest.approx(12.7062047 * 0.25, rel=1e-6)  # t(0.975, df=1) * s / sqrt(2)
    m = mean_interval([1, 2, 3, 4, 5], method="t")
    # mean 3, sd 1.5811, t(0.975, 4) = 2.7764 -> half width 1.9632
    assert (m.estimate, m.n) == (3.0, 5) and m.low == pytest.approx(3 - 1.9632, abs=1e-4)
    ref = stats.t.interval(0.9, 4, loc=3, scale=stats.sem([1, 2, 3, 4, 5]))
    assert mean_interval([1, 2, 3, 4, 5], 0.9, "t").as_tuple() == pytest.approx(ref, abs=1e-12)
    z90 = stats.norm.ppf(0.95)
    assert mean_interval([0.5, 1.0], 0.9).high == pytest.approx(0.75 + z90 * 0.25, abs=1e-12)
    assert mean_interval([1.0, 1.0, 1.0]).as_tuple() == (1.0, 1.0)


def test_mean_interval_edges_and_errors():
    one = mean_interval([0.7])
    assert one.estimate == 0.7 and math.isnan(one.low) and math.isnan(one.high) and one.n == 1
    none = mean_interval([])
    assert math.isnan(none.estimate) and none.n == 0
    # non-finite values are left out and not counted
    assert mean_interval([1.0, np.nan, 3.0, np.inf], method="t").n == 2
    assert mean_interval([1.0, np.nan, 3.0], method="t") == mean_interval([1.0, 3.0], method="t")
    with pytest.raises(DataError, match="unknown interval method"):
        mean_interval([0.1, 0.2], method="wilson")
    with pytest.raises(DataError, match="confidence"):
        mean_interval([0.1, 0.2], confidence=95)


def test_mean_interval_bootstrap_is_the_percentile_of_resampled_means():
    rng = np.random.default_rng(2)
    v = rng.gamma(2.0, size=300)
    boot = mean_interval(v, method="bootstrap", n_boot=1500, seed=4)
    # the seeded percentile bootstrap the quality badges computed by hand, draws included
    means = v[np.random.default_rng(4).integers(0, 300, size=(1500, 300))].mean(1)
    assert boot.as_tuple() == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), abs=1e-12)
    assert boot.method == "bootstrap_percentile" and boot.n == 300
    assert mean_interval(v, method="bootstrap", n_boot=1500, seed=5) != boot
    # many values: drawn in chunks, the same numbers as one draw
    big = rng.random(30_000)
    chunked = mean_interval(big, method="bootstrap", n_boot=200, seed=1)
    means = big[np.random.default_rng(1).integers(0, 30_000, size=(200, 30_000))].mean(1)
    assert chunked.as_tuple() == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), abs=1e-12)


def test_mean_interval_coverage():
    # normal and t intervals of 20 normal values: both near 95%, the normal one a little narrower
    rng = np.random.default_rng(5)
    x = rng.normal(1.0, 1.0, size=(3000, 20))
    for method in ("normal", "t"):
        cov = np.mean([(lambda iv: iv.low <= 1.0 <= iv.high)(mean_interval(row, method=method)) for row in x])
        assert (0.925 if method == "normal" else 0.935) <= cov <= 0.965, (method, cov)


def test_mean_difference_interval_matches_welch():
    a = np.array([3.1, 2.9, 4.0, 3.6, 3.3, 2.7])
    b = np.array([2.0, 2.4, 3.1, 1.9, 2.2])
    iv = mean_difference_interval(a, b)
    res = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert iv.estimate == pytest.approx(a.mean() - b.mean())
    assert iv.as_tuple() == pytest.approx((res.low, res.high), abs=1e-10)
    assert iv.method == "welch_t" and iv.n == 6
    assert mean_difference_interval([1.0, 1.0], [2.0, 2.0]).as_tuple() == (-1.0, -1.0)
    assert math.isnan(mean_difference_interval([1.0], [2.0, 3.0]).low)


def test_module_imports_neither_pandas_nor_torch():
    import subprocess

    code = ("import sys; import fsl_xai.intervals; "
            "print(sorted(m for m in ('pandas', 'torch', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


# ------------------------------------------------------------------------- crossed (pigeonhole) bootstrap
def _crossed_study(rng: np.random.Generator, n_readers: int = 8, n_cases: int = 40) -> tuple[np.ndarray, ...]:
    """Readings of a fully crossed reader study with random reader and case effects (logit scale)."""
    reader = rng.normal(0.0, 0.8, n_readers)
    case = rng.normal(0.0, 1.2, n_cases)
    p = 1.0 / (1.0 + np.exp(-(0.8 + reader[:, None] + case[None, :])))
    correct = (rng.random(p.shape) < p).astype(np.float64).ravel()
    rows, cols = np.meshgrid(np.arange(n_readers), np.arange(n_cases), indexing="ij")
    return correct, rows.ravel(), cols.ravel()


def test_the_crossed_bootstrap_covers_a_reader_study_where_one_way_clustering_does_not():
    """150 simulated 8-reader x 40-case studies: the pigeonhole interval holds the population
    accuracy about 95% of the time; resampling cases alone ignores the readers and covers far less."""
    rng = np.random.default_rng(0)
    effects = 0.8 + rng.normal(0.0, 0.8, 400_000) + rng.normal(0.0, 1.2, 400_000)
    truth = float(np.mean(1.0 / (1.0 + np.exp(-effects))))
    crossed_hits = case_hits = 0
    n_studies = 150
    for s in range(n_studies):
        correct, rows, cols = _crossed_study(np.random.default_rng(1000 + s))
        iv = crossed_bootstrap_ratio(correct, np.ones_like(correct), rows, cols, n_boot=500, seed=s)
        assert iv.estimate == pytest.approx(correct.mean())
        crossed_hits += iv.low <= truth <= iv.high
        per_case = np.stack([np.bincount(cols, correct), np.bincount(cols)], axis=1)
        one_way = cluster_bootstrap(per_case, lambda x: x[..., 0] / x[..., 1], n_boot=500, seed=s,
                                    method="percentile")
        case_hits += one_way.low <= truth <= one_way.high
    assert 0.90 <= crossed_hits / n_studies <= 0.99
    assert case_hits / n_studies < 0.85


def test_the_crossed_bootstrap_is_deterministic_and_checks_its_input():
    correct, rows, cols = _crossed_study(np.random.default_rng(3), 4, 10)
    a = crossed_bootstrap_ratio(correct, np.ones_like(correct), rows, cols, n_boot=300, seed=7)
    b = crossed_bootstrap_ratio(correct, np.ones_like(correct), rows.astype(str), cols, n_boot=300, seed=7)
    assert (a.low, a.high) == (b.low, b.high) and a.low < a.estimate < a.high and a.n == len(correct)
    assert a.method.startswith("pigeonhole")
    with pytest.raises(DataError, match="1-d arrays of one length"):
        crossed_bootstrap_ratio(correct, np.ones(3), rows, cols)
    empty = crossed_bootstrap_ratio(correct, np.zeros_like(correct), rows, cols)
    assert math.isnan(empty.estimate) and math.isnan(empty.low)
