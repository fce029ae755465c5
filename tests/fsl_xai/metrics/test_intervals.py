"""Interval formulas against known values, and their coverage by simulation."""

import numpy as np
import pytest
from scipy import stats

from fsl_xai.errors import DataError
from fsl_xai.metrics import (cluster_bootstrap, cluster_bootstrap_proportion, newcombe_difference_interval,
                             proportion_interval, wilson_interval)


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


def test_cluster_bootstrap_generic_matches_paired_and_is_deterministic():
    rng = np.random.default_rng(1)
    t = rng.integers(5, 15, size=40).astype(float)
    e = rng.binomial(t.astype(int), 0.3).astype(float)
    a = cluster_bootstrap(lambda idx: e[idx].sum(-1) / t[idx].sum(-1), 40, n_boot=1500, seed=3)
    b = cluster_bootstrap_proportion(e, t, n_boot=1500, seed=3)
    assert a.estimate == pytest.approx(e.sum() / t.sum())
    assert a.low == pytest.approx(b.low, abs=0.02) and a.high == pytest.approx(b.high, abs=0.02)
    again = cluster_bootstrap(lambda idx: e[idx].sum(-1) / t[idx].sum(-1), 40, n_boot=1500, seed=3)
    assert (again.low, again.high) == (a.low, a.high)
    other = cluster_bootstrap(lambda idx: e[idx].sum(-1) / t[idx].sum(-1), 40, n_boot=1500, seed=4)
    assert (other.low, other.high) != (a.low, a.high)
    assert a.method == "cluster_bootstrap_bca"


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
