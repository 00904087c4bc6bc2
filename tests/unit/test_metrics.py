"""Metrics against naive formulas and hand-built cases (docs/physics.md section 3)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from holstein_dist import metrics
from holstein_dist.metrics import coherent_error, fast_cut, fast_part, window_means, window_spans


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _smallest_5_smooth_at_least(n: int) -> int:
    k = n
    while True:
        rest = k
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return k
        k += 1


# ----------------------------------------------------------------------------- autocorrelation


@pytest.mark.parametrize("shape", [(1, 5), (1, 2), (3, 17), (8, 64), (16, 257)])
@pytest.mark.parametrize("offset", [0.0, 2.5])
def test_fft_autocorrelation_matches_direct_formula(shape, offset):
    x = _rng(shape[1]).normal(size=shape) + offset
    n_times = shape[1]
    for max_lag in (0, 1, n_times // 2, n_times - 1):
        fast = metrics.autocorrelation(x, max_lag)
        slow = metrics.autocorrelation_direct(x, max_lag)
        assert fast.shape == (max_lag + 1,)
        assert fast.dtype == np.float64
        np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)


def test_direct_formula_is_the_spec_formula_by_hand():
    # x = [[0, 1, 2]]: <x> = 1, <x^2> = 5/3, var = 2/3; <x x_1> = (0 + 2)/2 = 1; <x x_2> = 0.
    expected = np.array([1.0, (1.0 - 1.0) / (2 / 3), (0.0 - 1.0) / (2 / 3)])
    np.testing.assert_allclose(metrics.autocorrelation_direct([[0.0, 1.0, 2.0]], 2), expected, atol=1e-15)
    np.testing.assert_allclose(metrics.autocorrelation([[0.0, 1.0, 2.0]], 2), expected, atol=1e-15)


def test_pooled_mean_is_not_the_per_window_mean():
    # A linear ramp: the lag-1 windows have means 1 and 2, not the pooled 1.5, so the formula of
    # docs/physics.md section 3 (pooled mean) gives a value different from the Pearson correlation of the windows (= 1).
    x = np.arange(4.0)
    c = metrics.autocorrelation(x, 1)
    # <x> = 1.5, var = 1.25, <x x_1> = (0 + 2 + 6)/3 = 8/3
    assert c[1] == pytest.approx((8 / 3 - 2.25) / 1.25, abs=1e-14)
    assert c[1] < 1.0


def test_zero_lag_is_one():
    x = _rng(1).normal(size=(7, 40)) * 3.0 + 10.0
    assert metrics.autocorrelation(x, 10)[0] == pytest.approx(1.0, abs=1e-13)


def test_one_dimensional_input_is_one_trajectory():
    x = _rng(2).normal(size=50)
    np.testing.assert_array_equal(metrics.autocorrelation(x, 20), metrics.autocorrelation(x[None, :], 20))


def test_ensemble_pools_trajectories_rather_than_averaging_curves():
    # Two trajectories with different means: pooling makes C(tau) stay high (between-trajectory
    # variance does not decorrelate), while each trajectory alone is white noise.
    rng = _rng(3)
    x = np.stack([rng.normal(size=400) - 5.0, rng.normal(size=400) + 5.0])
    assert metrics.autocorrelation(x, 5)[5] > 0.9
    assert abs(metrics.autocorrelation(x[0], 5)[5]) < 0.2


def test_ar1_process_decays_as_a_to_the_lag():
    a, n_traj, n_times = 0.9, 400, 600
    rng = _rng(4)
    noise = rng.normal(size=(n_traj, n_times))
    x = np.empty((n_traj, n_times))
    x[:, 0] = noise[:, 0] / np.sqrt(1 - a * a)  # stationary start
    for t in range(1, n_times):
        x[:, t] = a * x[:, t - 1] + noise[:, t]
    lags = np.arange(31)
    c = metrics.autocorrelation(x, 30)
    np.testing.assert_allclose(c, a**lags, atol=0.03)


def test_torch_tensor_input():
    x = torch.randn(4, 60, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    expected = metrics.autocorrelation_direct(x.detach().numpy().astype(np.float64), 25)
    np.testing.assert_allclose(metrics.autocorrelation(x, 25), expected, atol=1e-12)


@pytest.mark.parametrize("max_lag", [10, 11, 100])
def test_max_lag_not_below_length_raises(max_lag):
    x = _rng(5).normal(size=(2, 10))
    for fn in (metrics.autocorrelation, metrics.autocorrelation_direct):
        with pytest.raises(ValueError, match="max_lag"):
            fn(x, max_lag)


@pytest.mark.parametrize("max_lag", [-1, 2.5])
def test_invalid_max_lag_raises(max_lag):
    with pytest.raises(ValueError, match="max_lag"):
        metrics.autocorrelation(_rng(6).normal(size=(2, 10)), max_lag)


def test_constant_series_raises():
    with pytest.raises(ValueError, match="constant"):
        metrics.autocorrelation(np.full((3, 20), 0.7), 5)


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 3, 4)), np.array([[1.0, np.nan, 2.0]]), np.ones((2, 3)) * (1 + 1j)]
)
def test_bad_series_raise(bad):
    with pytest.raises(ValueError):
        metrics.autocorrelation(bad, 1)


def test_next_fast_len_is_smallest_5_smooth():
    for n in range(1, 1500):
        assert metrics.next_fast_len(n) == _smallest_5_smooth_at_least(n)


# ----------------------------------------------------------------------------- divergence


def _ramp(n_times: int, span: float) -> np.ndarray:
    return np.linspace(-span / 2, span / 2, n_times)


def test_divergent_mask_constructed_cases():
    n_times = 30
    truth = {
        "charge": np.stack([_ramp(n_times, 1.0), _ramp(n_times, 2.0)]),  # largest range 2.0
        "lattice": np.stack([_ramp(n_times, 0.5), _ramp(n_times, 1.0)]),  # largest range 1.0
    }
    charge = np.stack([_ramp(n_times, s) for s in (2.1, 2.3, 1.0, 1.0, 0.1)])
    lattice = np.stack([_ramp(n_times, s) for s in (1.0, 0.2, 1.15, 1.0, 0.1)])
    lattice[3, 7] = np.nan
    model = {"charge": charge, "lattice": lattice}
    # 0: within both (2.1 < 2.2, 1.0 < 1.1); 1: charge too wide; 2: lattice too wide; 3: NaN; 4: fine
    np.testing.assert_array_equal(metrics.divergent_mask(model, truth), [False, True, True, True, False])
    assert metrics.divergent_fraction(model, truth) == pytest.approx(3 / 5)
    # a looser factor lets trajectory 1 (2.3 < 2.4) and 2 (1.15 < 1.2) through, never the NaN one
    np.testing.assert_array_equal(
        metrics.divergent_mask(model, truth, factor=1.2), [False, False, False, True, False]
    )


def test_divergent_mask_uses_range_not_amplitude():
    truth = {"charge": np.stack([_ramp(20, 1.0)])}
    shifted = {"charge": np.stack([_ramp(20, 1.0) + 100.0])}
    assert not metrics.divergent_mask(shifted, truth).any()


def test_divergent_mask_accepts_torch_and_other_lengths():
    truth = {"charge": np.stack([_ramp(50, 1.0)] * 3)}
    model = {"charge": torch.tensor(np.stack([_ramp(20, 0.5), _ramp(20, 1.5)]))}
    np.testing.assert_array_equal(metrics.divergent_mask(model, truth), [False, True])


def test_divergent_mask_rejects_mismatched_inputs():
    truth = {"charge": np.ones((2, 5)), "lattice": np.ones((2, 5))}
    with pytest.raises(ValueError, match="same series names"):
        metrics.divergent_mask({"charge": np.ones((2, 5))}, truth)
    with pytest.raises(ValueError, match="number of trajectories"):
        metrics.divergent_mask({"charge": np.ones((2, 5)), "lattice": np.ones((3, 5))}, truth)
    with pytest.raises(ValueError, match="truth"):
        metrics.divergent_mask({"charge": np.ones((1, 5))}, {"charge": np.array([[0.0, np.inf]])})


# ----------------------------------------------------------------------------- RMSE per step


def _random_state(rng: np.random.Generator, n: int, t: int, L: int):
    rho = rng.normal(size=(n, t, L, L)) + 1j * rng.normal(size=(n, t, L, L))
    return rho, rng.normal(size=(n, t, L)), rng.normal(size=(n, t, L))


def test_rmse_constructed_cases():
    n, t, L = 3, 6, 4
    truth = _random_state(_rng(7), n, t, L)
    rho, q, p = (a.copy() for a in truth)
    q += 0.25  # uniform shift -> RMSE 0.25 at every step
    p[1, 2, 3] += 0.6  # one entry at step 2 -> 0.6 / sqrt(n L)
    idx = np.arange(L)
    rho[:, 4, idx, idx] += 0.1j  # spurious imaginary diagonal at step 4 -> 0.1
    rho[2, 5, 0, 1] += 0.3 - 0.4j  # one off-diagonal entry of magnitude 0.5 at step 5
    out = metrics.rmse_by_step((rho, q, p), truth)

    assert set(out) == set(metrics.RMSE_COMPONENTS)
    np.testing.assert_allclose(out["Q"], np.full(t, 0.25), atol=1e-14)
    np.testing.assert_allclose(out["P"], np.eye(t)[2] * 0.6 / np.sqrt(n * L), atol=1e-14)
    np.testing.assert_allclose(out["rho_diag"], np.eye(t)[4] * 0.1, atol=1e-14)
    np.testing.assert_allclose(out["rho_offdiag"], np.eye(t)[5] * 0.5 / np.sqrt(n * L * (L - 1)), atol=1e-14)


def test_rmse_matches_masked_formula_and_is_chunk_independent(monkeypatch):
    n, t, L = 2, 9, 5
    pred = _random_state(_rng(8), n, t, L)
    truth = _random_state(_rng(9), n, t, L)
    diff = pred[0] - truth[0]
    off = ~np.eye(L, dtype=bool)
    expected_diag = np.sqrt(np.mean(np.abs(np.diagonal(diff, axis1=2, axis2=3)) ** 2, axis=(0, 2)))
    expected_off = np.sqrt(np.mean(np.abs(diff[:, :, off]) ** 2, axis=(0, 2)))
    whole = metrics.rmse_by_step(pred, truth)
    monkeypatch.setattr(metrics, "_RMSE_CHUNK_ENTRIES", n * L * L * 2)  # two steps per chunk
    chunked = metrics.rmse_by_step(pred, truth)
    for out in (whole, chunked):
        np.testing.assert_allclose(out["rho_diag"], expected_diag, rtol=1e-13)
        np.testing.assert_allclose(out["rho_offdiag"], expected_off, rtol=1e-13)
        np.testing.assert_allclose(
            out["Q"], np.sqrt(np.mean((pred[1] - truth[1]) ** 2, axis=(0, 2))), rtol=1e-13
        )


def test_rmse_of_truth_against_itself_is_zero_and_accepts_torch_complex64():
    truth = _random_state(_rng(10), 2, 3, 4)
    pred = (torch.tensor(truth[0].astype(np.complex64)), torch.tensor(truth[1]), torch.tensor(truth[2]))
    out = metrics.rmse_by_step(pred, truth)
    assert out["rho_offdiag"].shape == (3,)
    assert np.all(out["rho_offdiag"] < 1e-6) and np.all(out["rho_diag"] < 1e-6)
    assert np.all(out["Q"] == 0.0) and np.all(out["P"] == 0.0)


def test_rmse_rejects_bad_shapes():
    truth = _random_state(_rng(11), 2, 3, 4)
    with pytest.raises(ValueError, match="shape"):
        metrics.rmse_by_step((truth[0][:, :2], truth[1], truth[2]), truth)
    bad = (truth[0][..., :3], truth[1], truth[2])
    with pytest.raises(ValueError, match="expected rho"):
        metrics.rmse_by_step(bad, bad)


# ----------------------------------------------------------------------------- Wasserstein


def test_wasserstein_shift_is_the_shift():
    x = _rng(12).normal(size=(5, 40))
    for c in (0.0, 0.3, -2.0):
        assert metrics.wasserstein1(x, x + c) == pytest.approx(abs(c), abs=1e-12)


def test_wasserstein_known_values():
    assert metrics.wasserstein1([0.0], [1.0, 3.0]) == pytest.approx(2.0)
    assert metrics.wasserstein1([0.0, 1.0], [0.0]) == pytest.approx(0.5)
    assert metrics.wasserstein1([0.0, 0.0, 1.0], [0.0, 1.0, 1.0]) == pytest.approx(1 / 3)


def test_wasserstein_equal_sizes_matches_brute_force_assignment():
    rng = _rng(13)
    a, b = rng.normal(size=6), rng.normal(size=6) * 2 + 0.5
    brute = min(np.mean(np.abs(a - b[list(perm)])) for perm in itertools.permutations(range(6)))
    assert metrics.wasserstein1(a, b) == pytest.approx(brute, abs=1e-12)


def test_wasserstein_different_sizes_matches_replicated_samples():
    # Repeating a sample n times leaves its empirical distribution unchanged; with both replicated
    # to size m*n, W1 is the mean gap of the sorted samples.
    rng = _rng(14)
    a, b = rng.normal(size=3), rng.exponential(size=5)
    big_a, big_b = np.sort(np.repeat(a, 5)), np.sort(np.repeat(b, 3))
    assert metrics.wasserstein1(a, b) == pytest.approx(np.mean(np.abs(big_a - big_b)), abs=1e-12)
    assert metrics.wasserstein1(b, a) == pytest.approx(metrics.wasserstein1(a, b), abs=1e-15)


def test_wasserstein_rejects_empty_and_nan():
    with pytest.raises(ValueError, match="empty"):
        metrics.wasserstein1([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        metrics.wasserstein1([np.nan], [1.0])


# ----------------------------------------------------------------------------- power spectrum


def _sines(freq_bin: int, n_traj: int = 4, n_times: int = 128) -> np.ndarray:
    t = np.arange(n_times)
    phases = np.linspace(0, np.pi, n_traj)[:, None]
    return np.sin(2 * np.pi * freq_bin * t / n_times + phases)


def test_power_spectrum_is_normalised():
    p = metrics.power_spectrum(_rng(15).normal(size=(3, 50)))
    assert p.shape == (26,)
    assert p.sum() == pytest.approx(1.0)
    assert np.all(p >= 0)


def test_power_spectrum_distance_properties():
    rng = _rng(16)
    x, y = rng.normal(size=(4, 128)), _sines(5) + 0.1 * rng.normal(size=(4, 128))
    assert metrics.power_spectrum_distance(x, x) == pytest.approx(0.0, abs=1e-7)
    # amplitude and offset do not matter, only where the power sits
    assert metrics.power_spectrum_distance(3.0 * x + 7.0, x) == pytest.approx(0.0, abs=1e-7)
    assert metrics.power_spectrum_distance(x, y) == pytest.approx(metrics.power_spectrum_distance(y, x))
    assert 0.0 < metrics.power_spectrum_distance(x, y) < 1.0
    # pure tones on different grid frequencies have disjoint spectra: the maximum distance
    assert metrics.power_spectrum_distance(_sines(5), _sines(9)) == pytest.approx(1.0, abs=1e-7)
    assert metrics.power_spectrum_distance(_sines(5), _sines(5, n_traj=2)) == pytest.approx(0.0, abs=1e-7)


def test_power_spectrum_distance_rejects_other_lengths_and_constants():
    with pytest.raises(ValueError, match="same number of steps"):
        metrics.power_spectrum_distance(np.ones((2, 10)) * np.arange(10), np.ones((2, 12)) * np.arange(12))
    with pytest.raises(ValueError, match="constant"):
        metrics.power_spectrum_distance(np.ones((2, 10)), _rng(17).normal(size=(2, 10)))


# ----------------------------------------------------------------------------- structure factor


def _direct_full_spectrum(x: np.ndarray) -> np.ndarray:
    """S(q_m) for m = 0..L-1 by the defining sum |sum_j e^{-i q_m j} x_j|^2 / L, no FFT."""
    n_sites = x.shape[-1]
    j = np.arange(n_sites)
    phases = np.exp(-2j * np.pi * np.outer(np.arange(n_sites), j) / n_sites)  # [m, j]
    return np.abs(x @ phases.T) ** 2 / n_sites


@pytest.mark.parametrize("n_sites", [16, 32, 15])
def test_structure_factor_of_a_cosine_mode_peaks_there_with_amplitude_squared_l_over_4(n_sites):
    amplitude, phase = 0.8, 0.3
    j = np.arange(n_sites)
    for m in range(1, (n_sites + 1) // 2):  # every mode strictly between 0 and pi
        x = amplitude * np.cos(2 * np.pi * m * j / n_sites + phase)
        s = metrics.structure_factor(x)
        assert s.shape == (n_sites // 2 + 1,)
        expected = np.zeros_like(s)
        expected[m] = amplitude**2 * n_sites / 4  # |A L/2 e^{i phase}|^2 / L
        np.testing.assert_allclose(s, expected, atol=1e-12)
        assert metrics.structure_factor_peak(s) == m
        assert metrics.wavevectors(n_sites)[m] == pytest.approx(2 * np.pi * m / n_sites)


def test_structure_factor_at_pi_is_l_times_the_staggered_order_squared():
    # The q = pi bin is the order parameter of docs/physics.md: S(pi) = L phi^2 with phi = (1/L) sum_j (-1)^j x_j.
    q_field = _rng(20).normal(size=(3, 7, 16))
    s = metrics.structure_factor(q_field)
    assert metrics.wavevectors(16)[-1] == pytest.approx(np.pi)
    np.testing.assert_allclose(s[..., -1], 16 * metrics.lattice_order(q_field) ** 2, rtol=1e-12)
    stripes = 0.25 * (-1.0) ** np.arange(16)
    np.testing.assert_allclose(metrics.structure_factor(stripes), [0.0] * 8 + [16 * 0.25**2], atol=1e-12)


@pytest.mark.parametrize("n_sites", [2, 15, 16, 32])
def test_structure_factor_parseval_and_half_spectrum(n_sites):
    x = _rng(n_sites).normal(size=(4, 5, n_sites))
    full = _direct_full_spectrum(x)
    # Parseval over the whole spectrum m = 0..L-1, with the 1/L normalisation: sum_m S = sum_j x_j^2.
    np.testing.assert_allclose(full.sum(-1), (x**2).sum(-1), rtol=1e-12)
    # The half spectrum is the first L//2 + 1 bins; a real field mirrors the rest, S(q_{L-m}) = S(q_m).
    half = metrics.structure_factor(x)
    np.testing.assert_allclose(half, full[..., : n_sites // 2 + 1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(full[..., 1:], full[..., :0:-1], rtol=1e-10, atol=1e-12)
    # So the half spectrum with its multiplicities (1 at q = 0 and, for even L, q = pi; else 2) adds up too.
    weights = metrics.structure_factor_multiplicity(n_sites)
    assert weights.sum() == n_sites
    np.testing.assert_allclose(half @ weights, (x**2).sum(-1), rtol=1e-12)


def test_structure_factor_accepts_torch_and_rejects_complex_and_scalars():
    x = _rng(21).normal(size=(2, 8))
    np.testing.assert_allclose(metrics.structure_factor(torch.from_numpy(x)), metrics.structure_factor(x))
    with pytest.raises(ValueError, match="real-valued"):
        metrics.structure_factor(x + 0j)
    with pytest.raises(ValueError, match="site axis"):
        metrics.structure_factor(np.float64(1.0))


def test_structure_factor_peak_leaves_out_q_zero():
    assert metrics.structure_factor_peak([100.0, 1.0, 3.0, 2.0]) == 2  # q = 0 is largest but not a wave vector
    with pytest.raises(ValueError, match=">= 2 bins"):
        metrics.structure_factor_peak([1.0])
    with pytest.raises(ValueError, match="NaN"):
        metrics.structure_factor_peak([0.0, np.nan, 1.0])


# ----------------------------------------------------------------------------- energy drift


def test_energy_drift_constructed():
    energies = np.array(
        [
            [-1.0, -1.0, -1.0, -1.0],
            [-1.0, -0.9, -1.2, -1.1],  # |dE| = 0, .1, .2, .1
            [2.0, 2.0, 2.3, 2.3],  # |dE| = 0, 0, .3, .3
        ]
    )
    out = metrics.energy_drift(energies)
    assert out == pytest.approx(
        {"mean_final_abs": 0.4 / 3, "max_final_abs": 0.3, "mean_max_abs": 0.5 / 3, "max_abs": 0.3}
    )


def test_energy_drift_single_trajectory_and_nan_propagates():
    assert metrics.energy_drift(torch.tensor([1.0, 1.5, 0.75]))["max_abs"] == pytest.approx(0.5)
    assert np.isnan(metrics.energy_drift([[0.0, np.nan], [0.0, 0.0]])["max_abs"])


def test_order_parameters_are_reexported_from_physics():
    from holstein_dist import physics

    assert metrics.charge_order is physics.charge_order
    assert metrics.lattice_order is physics.lattice_order


def _quench_ensemble(n: int, steps: int, shift: float = 0.0, scale: float = 1.0, spread: float = 1e-3,
                     seed: int = 0) -> np.ndarray:
    """n rollouts of one damped-free oscillation (period 48 steps) around 0.3, shifted by ``shift`` steps."""
    t = np.arange(steps + 1) - shift
    rng = np.random.default_rng(seed)
    return 0.3 + scale * 0.15 * np.cos(2 * np.pi * t / 48)[None, :] + spread * rng.standard_normal((n, 1))


def test_coherent_error_recovers_a_lag_a_growing_lag_and_an_amplitude_error():
    truth = _quench_ensemble(16, 300)
    constant = coherent_error(truth, _quench_ensemble(16, 300, shift=0.1), window=100)
    assert [r["start"] for r in constant] == [1, 101, 201] and constant[-1]["stop"] == 300
    for row in constant:
        assert row["lag_steps"] == pytest.approx(0.1, rel=0.02)
        assert abs(row["amplitude_error"]) < 1e-3 and row["coherence"] > 0.99
        assert row["systematic_share"] == pytest.approx(1.0, abs=0.02)  # every rollout errs alike
    # A rate error: the lag grows by 0.1 step per 100 steps.
    t = np.arange(301)
    slow = 0.3 + 0.15 * np.cos(2 * np.pi * (t - t / 1000) / 48)[None, :] + (truth - truth.mean(0))
    lags = [r["lag_steps"] for r in coherent_error(truth, slow, window=100)]
    assert lags[0] < lags[1] < lags[2] and lags[2] - lags[0] == pytest.approx(0.2, rel=0.1)
    bigger = coherent_error(truth, _quench_ensemble(16, 300, scale=1.02), window=100)
    assert all(r["amplitude_error"] == pytest.approx(0.02, rel=0.05) and abs(r["lag_steps"]) < 1e-3 for r in bigger)


def test_coherent_error_measures_a_fast_oscillation_the_model_drops():
    # The shallow quench's charge order: a slow swing (period 48 steps) plus a small electronic line at 1/6
    # cycle per step. A model with the swing right and no line leaves the line as the slow fit's residual.
    t = np.arange(601)
    line = 0.004 * np.sin(2 * np.pi * t / 6 + 0.3)
    truth = _quench_ensemble(16, 600) + line
    rows = coherent_error(truth, _quench_ensemble(16, 600), window=100)
    for row in rows:
        assert row["fast_cut"] == pytest.approx(4 / 48, rel=0.05)
        assert row["truth_fast"] == pytest.approx(0.004 / np.sqrt(2), rel=0.05)
        assert row["model_fast"] < 0.1 * row["truth_fast"]
        assert row["residual"] == pytest.approx(row["truth_fast"], rel=0.05)
        assert abs(row["lag_steps"]) < 0.01  # the line does not pass for a lag
    same = coherent_error(truth, truth + 1e-6, window=100)
    assert all(r["model_fast"] == pytest.approx(r["truth_fast"], rel=1e-3) for r in same)
    # The even extension leaves no jump where the FFT wraps: a slow swing has almost no fast part, at the ends
    # (where the plain periodic FFT leaks ~40 % of its range) as in the middle.
    slow = _quench_ensemble(1, 600)[0, 1:]
    leak = np.abs(fast_part(slow, fast_cut(slow)))
    assert leak.max() < 0.01 * np.ptp(slow) and leak[50:-50].max() < 1e-3 * np.ptp(slow)


def test_fast_cut_needs_an_oscillating_series_of_some_length():
    assert fast_cut(np.ones(100)) is None
    assert fast_cut(np.sin(np.arange(8.0))) is None
    rows = coherent_error(np.ones((4, 50)), np.ones((4, 50)), window=10)
    assert all(r["fast_cut"] is None and r["truth_fast"] is None and r["model_fast"] is None for r in rows)


def test_coherent_error_declines_to_fit_decorrelated_rollouts():
    rng = np.random.default_rng(1)
    phases = rng.uniform(0, 2 * np.pi, size=(64, 1))  # a chaotic quench: no shared phase, mean ~ flat
    truth = np.cos(2 * np.pi * np.arange(201) / 48 + phases)
    rows = coherent_error(truth, np.roll(truth, 1, axis=0), window=100)
    assert all(r["coherence"] < 0.5 and r["lag_steps"] is None and r["residual"] is None for r in rows)
    assert all(r["systematic_share"] < 0.5 for r in rows)  # most of the error is rollout-specific
    with pytest.raises(ValueError, match="differ in shape"):
        coherent_error(truth, truth[:, :10])
    with pytest.raises(ValueError, match="at least 4"):
        coherent_error(truth, truth, window=2)


def test_window_means_average_rollouts_and_steps_of_each_window_leaving_out_step_0():
    series = np.array([np.arange(251.0), np.arange(251.0) + 2])
    assert window_spans(251, 100) == [(1, 100), (101, 200), (201, 250)]
    np.testing.assert_allclose(window_means(series, 100), [51.5, 151.5, 226.5])
    with pytest.raises(ValueError, match="series is empty"):
        window_means(np.zeros((0, 5)))


def test_swing_by_part_reads_a_drifting_period_third_by_third():
    """Cosines whose period grows from 40 to 60 steps halfway: the first third's trough is at half of 40, the last
    third's at half of 60, while the whole series' autocorrelation averages them; a constant span gives Nones."""
    rng = np.random.default_rng(0)
    t = np.arange(999)
    period = np.where(t < 500, 40.0, 60.0)
    phase = np.cumsum(2 * np.pi / period)
    x = np.stack([np.cos(phase + rng.uniform(0, 2 * np.pi)) for _ in range(16)])
    parts = metrics.swing_by_part(x, 200)
    assert [p["span"] for p in parts] == [[0, 333], [333, 666], [666, 999]]
    assert parts[0]["trough_lag"] == 20 and parts[2]["trough_lag"] == 30
    assert parts[0]["zero"] == 10 and parts[2]["zero"] == 15
    assert parts[0]["trough"] < -0.95
    whole = metrics.first_trough(metrics.autocorrelation(x, 200))[1]
    assert 20 < whole < 30
    flat = np.concatenate([x[:, :333], np.ones((16, 666))], axis=1)
    assert metrics.swing_by_part(flat, 200)[1] == {"span": [333, 666], "zero": None, "trough_lag": None,
                                                   "trough": None}
    assert metrics.swing_by_part(x[:, :3], 200) == []  # spans of one step hold no lag
