"""Ensemble calibration metrics on synthetic Gaussian ensembles whose calibration is known analytically."""

from __future__ import annotations

import io
import json
import math
import pickle
from statistics import NormalDist

import numpy as np
import pytest

from holstein_dist import calibration
from holstein_dist.metrics import RMSE_COMPONENTS

Z_1SIGMA = 1.0
Z_2SIGMA = 2.0


# ----------------------------------------------------------------------------- helpers


def _t_central(z: float, dof: int) -> float:
    """P(|T_dof| <= z), the t density integrated numerically (no scipy)."""
    x = np.linspace(0.0, z, 20001)
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    density = np.exp(log_norm - (dof + 1) / 2 * np.log1p(x * x / dof))
    return float(2.0 * np.sum((density[1:] + density[:-1]) / 2 * np.diff(x)))


def _t_central_quantile(p: float, dof: int) -> float:
    """z with P(|T_dof| <= z) = p, by bisection."""
    lo, hi = 0.0, 50.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_central(mid, dof) < p else (lo, mid)
    return (lo + hi) / 2


def _mu(n_steps: int, n_entries: int) -> np.ndarray:
    """A mean that varies strongly over steps and entries: the climate is wide, so horizon = T+1."""
    t = np.arange(n_steps)[:, None]
    e = np.arange(n_entries)[None, :]
    return 3.0 * np.sin(0.3 * t + e)


def _ensemble(rng, k, n, n_steps, n_entries, sigma=1.0, member_sigma=None, mu=None):
    """Truth and K members drawn independently from N(mu, sigma^2) (members: member_sigma^2)."""
    mu = _mu(n_steps, n_entries) if mu is None else mu
    sigma = np.broadcast_to(np.asarray(sigma, dtype=float), (n, n_steps, n_entries))
    member_sigma = sigma if member_sigma is None else np.broadcast_to(member_sigma, sigma.shape)
    truth = mu + sigma * rng.standard_normal((n, n_steps, n_entries))
    members = mu + member_sigma * rng.standard_normal((k, n, n_steps, n_entries))
    return {"Q": members}, {"Q": truth}


def _summary(members, truth, **kwargs):
    return calibration.summarize(calibration.accumulate(members, truth), **kwargs)["components"]["Q"]


def _pooled_samples(comp: dict, n: int, n_entries: int) -> int:
    return (comp["horizon"] - 1) * n * n_entries


# ----------------------------------------------------------------------------- entries


def test_component_values_flattens_rho_q_p():
    rng = np.random.default_rng(0)
    rho = rng.normal(size=(2, 4, 3, 3)) + 1j * rng.normal(size=(2, 4, 3, 3))
    q, p = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 4, 3))
    values = calibration.component_values(rho, q, p)
    assert list(values) == list(RMSE_COMPONENTS)
    assert values["rho_diag"].shape == (2, 4, 3)
    assert values["rho_offdiag"].shape == (2, 4, 2 * 3 * 2)
    assert all(v.dtype == np.float64 for v in values.values())
    np.testing.assert_array_equal(values["rho_diag"][1, 2], np.diag(rho[1, 2]).real)
    off = rho[1, 2][~np.eye(3, dtype=bool)]
    np.testing.assert_array_equal(values["rho_offdiag"][1, 2], np.concatenate([off.real, off.imag]))
    np.testing.assert_array_equal(values["Q"], q)
    with pytest.raises(ValueError, match="expected rho"):
        calibration.component_values(rho, q[..., :2], p)


# ----------------------------------------------------------------------------- calibrated ensembles


def test_small_exchangeable_ensemble_has_student_t_coverage():
    k, n, n_steps, n_entries = 5, 16, 41, 64
    comp = _summary(*_ensemble(np.random.default_rng(1), k, n, n_steps, n_entries))
    assert comp["horizon"] == n_steps
    samples = _pooled_samples(comp, n, n_entries)
    for key, z in (("coverage_1sigma", Z_1SIGMA), ("coverage_2sigma", Z_2SIGMA)):
        expected = _t_central(z, k - 1)  # 0.626 and 0.884 for K = 5, below the Gaussian 0.683 / 0.954
        se = math.sqrt(expected * (1 - expected) / samples)
        assert abs(comp[key] - expected) < 4 * se, (key, comp[key], expected)
    # The histogram gives the whole reliability curve, up to interpolation inside a bin.
    for p, observed in zip(calibration.DEFAULT_LEVELS, comp["reliability"]["observed"], strict=True):
        expected = _t_central(NormalDist().inv_cdf((1 + p) / 2), k - 1)
        assert abs(observed - expected) < 0.012, (p, observed, expected)
    assert abs(comp["spread_skill_ratio"] - 1.0) < 0.03
    # Exchangeable members: E(mean error^2) = sigma^2 (1 + 1/K), E(member error^2) = 2 sigma^2.
    rmse_mean = np.array(comp["rmse_mean_by_step"][1:])
    rmse_members = np.array(comp["rmse_members_by_step"][1:])
    ratio = np.mean(rmse_members**2) / np.mean(rmse_mean**2)
    assert abs(ratio - 2 / (1 + 1 / k)) < 0.03 * ratio


def test_large_exchangeable_ensemble_has_gaussian_coverage():
    k, n, n_steps, n_entries = 200, 16, 21, 64
    comp = _summary(*_ensemble(np.random.default_rng(2), k, n, n_steps, n_entries))
    samples = _pooled_samples(comp, n, n_entries)
    for key, nominal in (("coverage_1sigma", calibration.NOMINAL_1SIGMA),
                         ("coverage_2sigma", calibration.NOMINAL_2SIGMA)):
        se = math.sqrt(nominal * (1 - nominal) / samples)
        assert abs(comp[key] - nominal) < 4 * se + 1e-3, (key, comp[key])
    assert abs(comp["spread_skill_ratio"] - 1.0) < 0.02
    assert abs(comp["fitted_spread_scale"] - 1.0) < 0.05
    by_step = np.array(comp["spread_skill_ratio_by_step"][1:])
    assert np.all(np.abs(by_step - 1.0) < 0.15)


def test_underdispersed_ensemble_fits_a_spread_scale_that_restores_coverage():
    k, n, n_steps, n_entries = 100, 16, 21, 64
    validation = _summary(*_ensemble(np.random.default_rng(3), k, n, n_steps, n_entries, member_sigma=0.5))
    assert validation["coverage_1sigma"] < 0.45  # ~ P(|N| <= 1/2) = 0.38 instead of 0.68
    assert validation["coverage_2sigma"] < 0.75  # ~ P(|N| <= 1) = 0.68 instead of 0.95
    assert validation["spread_skill_ratio"] < 0.55
    fitted = validation["fitted_spread_scale"]
    # r = |y - m| / (c s) = 2 sqrt((1 + 1/(4K)) / (1 + 1/K)) |T_{K-1}|: its 0.9545 quantile over 2.
    exact = math.sqrt((1 + 1 / (4 * k)) / (1 + 1 / k)) * _t_central_quantile(calibration.NOMINAL_2SIGMA, k - 1)
    assert abs(fitted - 2.0) < 0.1 * 2.0
    assert abs(fitted - exact) < 0.03 * exact, (fitted, exact)
    # Temperature scaling: fitted on one sample, applied to a fresh one.
    members, truth = _ensemble(np.random.default_rng(4), k, n, n_steps, n_entries, member_sigma=0.5)
    test = calibration.summarize(calibration.accumulate(members, truth, spread_scale=fitted))
    assert test["spread_scale"] == {"Q": fitted}
    comp = test["components"]["Q"]
    se = math.sqrt(calibration.NOMINAL_2SIGMA * (1 - calibration.NOMINAL_2SIGMA) / _pooled_samples(comp, n, n_entries))
    assert abs(comp["coverage_2sigma"] - calibration.NOMINAL_2SIGMA) < 4 * se + 0.005
    assert abs(comp["fitted_spread_scale"] - fitted) < 0.05 * fitted


def test_spread_scales_per_component_restore_each_components_coverage():
    """Components dispersed differently (here 2x and 10x too narrow) need a temperature each."""
    k, n, n_steps, n_entries = 50, 8, 21, 64
    rng = np.random.default_rng(8)
    parts = [_ensemble(rng, k, n, n_steps, n_entries, member_sigma=s) for s in (0.5, 0.1)]
    members = {"Q": parts[0][0]["Q"], "P": parts[1][0]["Q"]}
    truth = {"Q": parts[0][1]["Q"], "P": parts[1][1]["Q"]}
    fitted = {name: c["fitted_spread_scale"]
              for name, c in calibration.summarize(calibration.accumulate(members, truth))["components"].items()}
    assert 1.8 < fitted["Q"] < 2.3 and 9 < fitted["P"] < 11.5
    scaled = calibration.summarize(calibration.accumulate(members, truth, spread_scale=fitted))
    assert scaled["spread_scale"] == fitted
    for comp in scaled["components"].values():
        assert abs(comp["coverage_2sigma"] - calibration.NOMINAL_2SIGMA) < 0.01
    with pytest.raises(ValueError, match="no value for P"):
        calibration.accumulate(members, truth, spread_scale={"Q": 2.0})


def test_ensemble_mean_error_is_below_the_members_error():
    """Jensen: mean over members of (m_k - y)^2 = (m - y)^2 + (K-1)/K var >= (m - y)^2, even for a
    biased, non-Gaussian ensemble."""
    rng = np.random.default_rng(5)
    mu = _mu(30, 7)
    members = {"P": mu + rng.exponential(size=(3, 4, 30, 7)) - 0.8}
    truth = {"P": mu + rng.standard_normal((4, 30, 7))}
    comp = calibration.summarize(calibration.accumulate(members, truth))["components"]["P"]
    assert np.all(np.array(comp["rmse_mean_by_step"]) < np.array(comp["rmse_members_by_step"]))
    direct = np.sqrt(np.mean((members["P"] - truth["P"]) ** 2, axis=(0, 1, 3)))
    np.testing.assert_allclose(comp["rmse_members_by_step"], direct, rtol=1e-12)
    np.testing.assert_allclose(comp["rmse_mean_by_step"],
                               np.sqrt(np.mean((members["P"].mean(0) - truth["P"]) ** 2, axis=(0, 2))), rtol=1e-12)
    assert comp["horizon"] == 30 and comp["mean_error_below_members_fraction"] == 1.0


def test_zero_spread_counts_as_covered_only_without_error():
    members = {"Q": np.zeros((4, 2, 3, 5))}
    truth = {"Q": np.zeros((2, 3, 5))}
    truth["Q"][:, 2] = 1.0
    sums = calibration.accumulate(members, truth).components["Q"]
    np.testing.assert_array_equal(sums.covered_2, [10, 10, 0])
    assert sums.ratio_hist[0, 0] == 10 and sums.ratio_hist[2, -1] == 10


# ----------------------------------------------------------------------------- spread-skill correlation


def test_spread_skill_correlation_follows_rollout_dependent_sigma():
    rng = np.random.default_rng(6)
    n = 40
    sigma_r = 0.1 * 10 ** rng.uniform(0.0, 1.0, size=n)
    comp = _summary(*_ensemble(rng, 5, n, 21, 32, sigma=sigma_r[:, None, None]))
    assert comp["horizon"] == 21
    assert comp["spread_skill_correlation"] > 0.8


def test_spread_skill_correlation_vanishes_for_constant_sigma():
    comp = _summary(*_ensemble(np.random.default_rng(7), 5, 60, 21, 32, sigma=0.5))
    assert abs(comp["spread_skill_correlation"]) < 0.4


# ----------------------------------------------------------------------------- horizon and trust


def test_trust_horizon_and_decorrelation_horizon_of_linearly_growing_sigma():
    """sigma_r(t) = a_r t around a zero mean: spread and error RMS grow as sqrt(1 + 1/K) a_r t, so both
    cross tau at floor(tau / (c a_r)) + 1; the pooled RMSE reaches clim_std near t = sqrt(<t^2> / c^2)."""
    rng = np.random.default_rng(8)
    k, n, n_steps, n_entries = 10, 24, 101, 512
    slopes = rng.uniform(0.8, 2.0, size=n)
    t = np.arange(n_steps)
    sigma = slopes[:, None, None] * t[None, :, None]
    members, truth = _ensemble(rng, k, n, n_steps, n_entries, sigma=sigma, mu=np.zeros((n_steps, n_entries)))
    comp = _summary(members, truth, trust_fraction=0.5)
    c = math.sqrt((k + 1) / k)

    clim = comp["clim_std"]
    assert abs(clim - math.sqrt(np.mean(slopes**2) * np.mean(t**2))) < 0.02 * clim
    predicted_horizon = int(np.argmax(c * math.sqrt(np.mean(slopes**2)) * t >= clim))
    assert abs(comp["horizon"] - predicted_horizon) <= 2

    trust = comp["trust"]
    assert trust["threshold"] == pytest.approx(0.5 * clim)
    predicted = np.minimum(np.floor(trust["threshold"] / (c * slopes)) + 1, n_steps)
    assert np.all(np.abs(np.array(trust["trust_horizon"]) - predicted) <= 2)
    assert np.all(np.abs(np.array(trust["error_crossing"]) - predicted) <= 2 + 0.08 * predicted)
    assert trust["correlation"] > 0.9
    assert trust["mean_abs_difference"] < 3.0
    assert 0.0 <= trust["warned_in_time_fraction"] <= 1.0
    assert trust["trust_horizon_median"] == float(np.median(trust["trust_horizon"]))


def test_trust_horizon_is_censored_when_nothing_crosses():
    comp = _summary(*_ensemble(np.random.default_rng(9), 3, 4, 6, 5, sigma=1e-3))
    assert comp["trust"]["trust_horizon"] == [6] * 4 and comp["trust"]["error_crossing"] == [6] * 4
    assert comp["trust"]["warned_in_time_fraction"] == 1.0
    assert math.isnan(comp["trust"]["correlation"])  # constant series


# ----------------------------------------------------------------------------- merging


def _assert_sums_equal(a: calibration.CalibrationSums, b: calibration.CalibrationSums) -> None:
    assert (a.k, a.spread_scale, list(a.components)) == (b.k, b.spread_scale, list(b.components))
    for name in a.components:
        x, y = a.components[name], b.components[name]
        for field in ("count", "covered_1", "covered_2", "ratio_hist", "truth_count"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field), err_msg=f"{name}.{field}")
        for field in ("sq_err_mean", "sq_err_members", "var", "spread_rms", "error_rms", "truth_sum", "truth_sumsq"):
            np.testing.assert_allclose(getattr(x, field), getattr(y, field), rtol=1e-12, err_msg=f"{name}.{field}")


def test_merge_equals_accumulating_the_concatenation():
    rng = np.random.default_rng(10)
    rho = rng.normal(size=(4, 10, 7, 3, 3)) + 1j * rng.normal(size=(4, 10, 7, 3, 3))
    members = calibration.component_values(rho, rng.normal(size=(4, 10, 7, 3)), rng.normal(size=(4, 10, 7, 3)))
    truth = calibration.component_values(rho[0] + 0.1, rng.normal(size=(10, 7, 3)), rng.normal(size=(10, 7, 3)))
    whole = calibration.accumulate(members, truth, spread_scale=1.3)
    cuts = [slice(0, 3), slice(3, 4), slice(4, 10)]
    parts = [calibration.accumulate({c: v[:, s] for c, v in members.items()}, {c: v[s] for c, v in truth.items()},
                                    spread_scale=1.3) for s in cuts]
    merged = calibration.merge(pickle.loads(pickle.dumps(parts)))
    _assert_sums_equal(merged, whole)
    assert merged.n_rollouts == 10
    # Order matters for the per-rollout rows: reversing the parts reverses the blocks.
    reversed_rows = calibration.merge(parts[::-1]).components["Q"].spread_rms
    np.testing.assert_array_equal(reversed_rows[:6], whole.components["Q"].spread_rms[4:])


def test_merge_refuses_incompatible_sums():
    members, truth = _ensemble(np.random.default_rng(11), 3, 2, 4, 5)
    a = calibration.accumulate(members, truth)
    with pytest.raises(ValueError, match="spread_scale"):
        calibration.merge([a, calibration.accumulate(members, truth, spread_scale=2.0)])
    with pytest.raises(ValueError, match="K=2"):
        calibration.merge([a, calibration.accumulate({"Q": members["Q"][:2]}, truth)])
    with pytest.raises(ValueError, match=r"\[T\+1, E\]"):
        calibration.merge([a, calibration.accumulate({"Q": members["Q"][..., :3]}, {"Q": truth["Q"][..., :3]})])
    with pytest.raises(ValueError, match="at least one"):
        calibration.merge([])


# ----------------------------------------------------------------------------- validation


def test_accumulate_rejects_bad_shapes_with_useful_messages():
    members, truth = _ensemble(np.random.default_rng(12), 3, 2, 4, 5)
    m, y = members["Q"], truth["Q"]
    with pytest.raises(ValueError, match="at least 2 members"):
        calibration.accumulate({"Q": m[:1]}, truth)
    with pytest.raises(ValueError, match=r"must be \[K, n, T\+1, E\]"):
        calibration.accumulate({"Q": m[0]}, truth)
    with pytest.raises(ValueError, match=r"must be \[n, T\+1, E\]"):
        calibration.accumulate(members, {"Q": y[0]})
    with pytest.raises(ValueError, match="do not match truth"):
        calibration.accumulate(members, {"Q": y[:, :3]})
    with pytest.raises(ValueError, match="same components"):
        calibration.accumulate(members, {"P": y})
    with pytest.raises(ValueError, match="components must agree"):
        calibration.accumulate({"Q": m, "P": m[:, :1]}, {"Q": y, "P": y[:1]})
    with pytest.raises(ValueError, match="spread_scale"):
        calibration.accumulate(members, truth, spread_scale=0.0)
    with pytest.raises(ValueError, match="complex"):
        calibration.accumulate({"Q": m + 0j}, truth)
    with pytest.raises(ValueError, match="levels"):
        calibration.summarize(calibration.accumulate(members, truth), levels=(0.5, 1.0))


# ----------------------------------------------------------------------------- report and plots


def test_summary_is_json_and_figures_build():
    rng = np.random.default_rng(13)
    rho = rng.normal(size=(3, 2, 6, 3, 3)) + 1j * rng.normal(size=(3, 2, 6, 3, 3))
    members = calibration.component_values(rho, rng.normal(size=(3, 2, 6, 3)), rng.normal(size=(3, 2, 6, 3)))
    truth = calibration.component_values(rho[0], rng.normal(size=(2, 6, 3)), rng.normal(size=(2, 6, 3)))
    summary = calibration.summarize(calibration.accumulate(members, truth))
    assert summary["K"] == 3 and summary["n_rollouts"] == 2 and list(summary["components"]) == list(RMSE_COMPONENTS)
    assert math.isnan(summary["components"]["Q"]["spread_skill_correlation"])  # 2 rollouts only
    text = json.dumps(summary)
    assert json.loads(text)["levels"] == list(calibration.DEFAULT_LEVELS)
    for comp in summary["components"].values():
        assert len(comp["rmse_mean_by_step"]) == 6 and len(comp["trust"]["trust_horizon"]) == 2
    figures = calibration.calibration_figures(summary, snapshot_dt=0.5)
    assert set(figures) == {"spread_vs_error", "reliability"}
    for fig in figures.values():
        fig.savefig(io.BytesIO(), format="png")
        fig.clear()
