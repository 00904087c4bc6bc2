"""The climate test's sampling noise (holstein_dist/sampling.py) against repeated independent samples."""

from __future__ import annotations

import numpy as np
import pytest

from holstein_dist import metrics, sampling

T, MAX_LAG = 400, 60


def _ar1(rng: np.random.Generator, n: int, phi: float = 0.95) -> np.ndarray:
    """n independent stationary AR(1) series: a correlated climate whose ensemble estimate is noisy."""
    x = np.empty((n, T))
    x[:, 0] = rng.normal(size=n) / np.sqrt(1 - phi**2)
    for t in range(1, T):
        x[:, t] = phi * x[:, t - 1] + rng.normal(size=n)
    return x


def test_lag_sums_reweight_trajectories_like_repeating_them():
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.normal(size=(7, 120)), axis=1) * 0.1 + 2.0  # off-centre, drifting: the offset matters
    sums = metrics.LagSums(x, 30)
    np.testing.assert_allclose(sums.autocorrelation(np.ones(7)), metrics.autocorrelation(x, 30), atol=1e-13)
    counts = np.array([2, 0, 1, 3, 0, 1, 1])
    np.testing.assert_allclose(sums.autocorrelation(counts),
                               metrics.autocorrelation_direct(np.repeat(x, counts, axis=0), 30), atol=1e-12)
    both = sums.autocorrelation(np.stack([counts, np.ones(7)]))
    assert both.shape == (2, 31)
    with pytest.raises(ValueError, match="weights have 6 entries for 7 trajectories"):
        sums.autocorrelation(np.ones(6))


def test_noise_floor_matches_the_gap_between_independent_samples_and_falls_as_one_over_sqrt_n():
    rng = np.random.default_rng(1)
    n = 32
    gaps = [sampling.max_gap(metrics.autocorrelation(_ar1(rng, n), MAX_LAG),
                             metrics.autocorrelation(_ar1(rng, n), MAX_LAG)) for _ in range(40)]
    floors = [sampling.autocorrelation_noise_floor(_ar1(rng, n), MAX_LAG) for _ in range(8)]
    assert np.median(floors) == pytest.approx(np.median(gaps), rel=0.3)
    quadruple = [sampling.autocorrelation_noise_floor(_ar1(rng, 4 * n), MAX_LAG) for _ in range(8)]
    assert np.median(quadruple) / np.median(floors) == pytest.approx(0.5, rel=0.3)
    assert sampling.autocorrelation_noise_floor(_ar1(rng, 3), MAX_LAG) is None  # no two halves of two
    assert sampling.autocorrelation_noise_floor(_ar1(rng, 5), MAX_LAG) > 0  # odd N: equal halves of two


def test_bootstrap_spread_is_zero_for_the_truth_itself_and_near_the_spread_over_test_sets_otherwise():
    rng = np.random.default_rng(2)
    n = 48
    truth = _ar1(rng, n)
    itself = sampling.autocorrelation_error_bootstrap(truth, truth, MAX_LAG)
    assert max(itself.values()) < 1e-14

    # A biased model (a slower climate); its error over 30 independent test sets of n trajectories.
    errors = []
    for _ in range(30):
        truth = _ar1(rng, n)
        errors.append(sampling.max_gap(metrics.autocorrelation(_ar1(rng, n, phi=0.97), MAX_LAG),
                                       metrics.autocorrelation(truth, MAX_LAG)))
    spread = sampling.autocorrelation_error_bootstrap(_ar1(rng, n, phi=0.97), _ar1(rng, n), MAX_LAG)
    assert spread["p05"] < spread["p95"]
    assert spread["std"] == pytest.approx(np.std(errors, ddof=1), rel=0.6)


def test_bootstrap_leaves_diverged_rollouts_to_the_truth_and_checks_its_inputs():
    rng = np.random.default_rng(3)
    truth, model = _ar1(rng, 10), _ar1(rng, 10)
    kept = np.ones(10, dtype=bool)
    kept[[2, 7]] = False
    spread = sampling.autocorrelation_error_bootstrap(model[kept], truth, MAX_LAG, kept)
    assert spread is not None and spread["std"] > 0
    assert sampling.autocorrelation_error_bootstrap(model[:1], truth, MAX_LAG, np.arange(10) == 0) is None
    with pytest.raises(ValueError, match="model has 10 rollouts but kept marks 8"):
        sampling.autocorrelation_error_bootstrap(model, truth, MAX_LAG, kept)
    with pytest.raises(ValueError, match="one flag per truth trajectory"):
        sampling.autocorrelation_error_bootstrap(model, truth, MAX_LAG, kept[:5])


def _paired_errors(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-rollout mean squares of two models that share each rollout's difficulty; the model's RMSE is ~1.05x."""
    difficulty = rng.lognormal(0.0, 0.8, n)
    return difficulty * rng.lognormal(0.1, 0.3, n), difficulty * rng.lognormal(0.0, 0.3, n)


def test_rmse_ratio_interval_is_about_as_wide_as_the_ratio_moves_over_independent_test_sets():
    rng = np.random.default_rng(5)
    ratios = [np.sqrt(a.mean() / b.mean()) for a, b in (_paired_errors(rng, 64) for _ in range(2000))]
    spread = np.quantile(ratios, 0.975) - np.quantile(ratios, 0.025)
    widths = []
    for _ in range(20):
        a, b = _paired_errors(rng, 64)
        low, high, met = sampling.rmse_ratio_interval(a, b)
        assert low < np.sqrt(a.mean() / b.mean()) < high and 0.0 <= met <= 1.0
        widths.append(high - low)
    assert 0.7 * spread < np.median(widths) < 1.3 * spread
    # the model at least as accurate on every resample: the share is 1
    assert sampling.rmse_ratio_interval(b * 0.5, b)[2] == 1.0


def test_rmse_ratio_interval_checks_its_inputs_and_leaves_non_finite_errors_undecided():
    a, b = _paired_errors(np.random.default_rng(0), 8)
    a[3] = np.nan
    assert all(np.isnan(sampling.rmse_ratio_interval(a, b)))
    with pytest.raises(ValueError, match="one mean squared error per rollout"):
        sampling.rmse_ratio_interval(a[:4], b)
