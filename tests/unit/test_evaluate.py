"""Tests of holstein_dist.evaluate (single process): the reference model end to end on a small shallow
test set, the report schema and identities, truth-only mode, the rank-share reduction, and bad inputs.

The metric formulas themselves are tested in test_metrics.py; here the question is whether the
evaluation wires them to the right data and keeps its promises.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from holstein_dist import evaluate, physics
from holstein_dist.checkpoints import data_signature, load_model, model_payload
from holstein_dist.metrics import RMSE_COMPONENTS
from holstein_dist.model import SCALE_KEYS, ModelConfig, build_model
from holstein_dist.report import VOLATILE_SECTIONS, numeric_differences
from holstein_dist.shards import open_dataset
from hpc.checkpoint import atomic_save

ROOT = Path(__file__).resolve().parents[2]
SHALLOW_CONFIG = ROOT / "configs" / "data" / "shallow_L16.yaml"
TRAP_CONFIG = ROOT / "configs" / "data" / "deep_L16_finite_size_trap.yaml"
N_TEST, N_STEPS = 8, 60

REQUIRED_KEYS = [
    "autocorr.charge.truth", "autocorr.charge.model", "autocorr.lattice.truth", "autocorr.lattice.model",
    "autocorr_max_abs_error.charge", "autocorr_max_abs_error.lattice",
    "autocorr_mean_abs_error.charge", "autocorr_mean_abs_error.lattice",
    "autocorr_noise_floor.charge", "autocorr_noise_floor.lattice",
    *(f"autocorr_max_abs_error_bootstrap.{key}.{stat}" for key in ("charge", "lattice")
      for stat in ("std", "p05", "p95")),
    "divergent_fraction",
    "rmse_by_step.rho_diag", "rmse_by_step.rho_offdiag", "rmse_by_step.Q", "rmse_by_step.P",
    "mse_by_rollout.steps", "mse_by_rollout.rollouts", *(f"mse_by_rollout.{comp}" for comp in RMSE_COMPONENTS),
    "wasserstein.charge", "wasserstein.lattice",
    "power_spectrum_distance.charge", "power_spectrum_distance.lattice",
    "energy_drift.model", "energy_drift.truth", "energy_drift.truth_integrator",
    "checkpoint.path", "checkpoint.format", "checkpoint.sha256", "checkpoint.model_config",
    "data.path", "data.manifest_sha256", "data.split", "data.rollouts",
    "timing.rollout_steps_per_s", "timing.wall_seconds", "timing.world_size",
    "physics_baseline.seconds_per_snapshot_step_per_trajectory", "physics_baseline.rollout_steps_per_s",
    "physics_baseline.surrogate_speedup",
    "structure_factor.q", "structure_factor.m", "structure_factor.density_offset",
    *(f"structure_factor.{field}.{key}" for field in ("Q", "density") for key in (
        "truth.mean", "truth.peak_m", "truth.peak_q", "model.mean", "model.peak_m", "model.peak_q",
        "mean_difference", "max_abs_mean_difference",
        "autocorr.m", "autocorr.q", "autocorr.truth", "autocorr.model", "autocorr_max_abs_error")),
    "warnings",
]  # fmt: skip


@pytest.fixture(scope="session")
def shallow_data(tmp_path_factory: pytest.TempPathFactory, make_dataset) -> Path:
    # Shallow 0.5 -> 0.8 at save_interval 64: the reference tiny model's 0.64 snapshot interval.
    return make_dataset(tmp_path_factory.mktemp("data") / "shallow_L16", SHALLOW_CONFIG, "--no-virtual",
                        "splits.train=2", "splits.val=1", f"splits.test={N_TEST}", f"n_steps={N_STEPS}")


def run(*args: Any) -> int:
    return evaluate.main([str(a) for a in args])


def read_report(out: Path) -> dict[str, Any]:
    def refuse(constant: str) -> None:
        raise AssertionError(f"report.json contains {constant}, which is not JSON")

    return json.loads((out / "report.json").read_text(), parse_constant=refuse)


@pytest.fixture(scope="session")
def model_report(tmp_path_factory: pytest.TempPathFactory, shallow_data: Path,
                 reference_model: Path) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("eval") / "reference"
    assert run("--checkpoint", reference_model, "--data", shallow_data, "--out", out) == 0
    return read_report(out), out


def dotted(report: dict[str, Any], key: str) -> Any:
    node = report
    for part in key.split("."):
        assert part in node, f"report lacks {key}"
        node = node[part]
    return node


# ----------------------------------------------------------------------------------------------
# The reference model, end to end
# ----------------------------------------------------------------------------------------------


def test_reference_model_reproduces_truth_statistics(model_report: tuple[dict[str, Any], Path]) -> None:
    report, _ = model_report
    assert report["mode"] == "model"
    assert report["divergent_fraction"] == 0.0
    assert report["climate_rollouts"] == N_TEST
    for key in ("charge", "lattice"):
        assert report["autocorr_max_abs_error"][key] < 0.1
        assert report["autocorr_mean_abs_error"][key] <= report["autocorr_max_abs_error"][key]
        spread = report["autocorr_max_abs_error_bootstrap"][key]
        assert 0.0 < spread["p05"] < spread["p95"] and spread["std"] > 0.0
        assert report["autocorr_noise_floor"][key] > 0.0
        assert report["wasserstein"][key] < 0.01
        assert report["power_spectrum_distance"][key] < 0.1
        # The shallow quench's rollouts share one oscillation, which the original model follows closely.
        window = report["coherent"][key][0]
        assert window["start"] == 1 and window["coherence"] > 0.9 and abs(window["lag_steps"]) < 0.5
    # What its slow fit leaves on the charge order is the electronic line the original model drops.
    window = report["coherent"]["charge"][0]
    assert window["model_fast"] < 0.5 * window["truth_fast"]
    assert window["residual"] == pytest.approx(window["truth_fast"], rel=0.2)
    assert "fast oscillation (> " in "\n".join(evaluate.summary_lines(report))
    assert any(line.startswith("  autocorr max error, sampling: bootstrap 5-95 % charge ") and
               line.endswith(f"with {N_TEST} rollouts") for line in evaluate.summary_lines(report))
    for key, values in report["rmse_by_step"].items():
        values = np.asarray(values)
        assert len(values) == N_STEPS + 1 and np.all(np.isfinite(values)), key
        assert values[0] == 0.0, key  # step 0 is the ground-truth input itself
        assert 0.0 < values[-1] < 0.02, key
    # each rollout's mean square at step 1 (the only kept step this short), pooled, is the RMSE at step 1
    per_rollout = report["mse_by_rollout"]
    assert per_rollout["steps"] == [1] and len(per_rollout["rollouts"]) == N_TEST
    for key in RMSE_COMPONENTS:
        assert np.sqrt(np.mean(per_rollout[key][0])) == pytest.approx(report["rmse_by_step"][key][1], rel=1e-12)
    # The shallow quench has no domains, and the original model keeps the lattice moving like the truth.
    motion = report["lattice_motion"]
    assert motion["windows"][0] == [1, min(100, N_STEPS)]
    assert max(motion["walls"]["truth"]) < 1
    for truth, model in zip(motion["kinetic"]["truth"], motion["kinetic"]["model"], strict=True):
        assert truth > 0 and model == pytest.approx(truth, rel=0.05)
    # A surrogate does not conserve energy exactly; the stored truth does to float precision.
    assert report["energy_drift"]["truth_integrator"]["max_abs"] < 1e-10
    assert report["energy_drift"]["truth"]["max_abs"] < 1e-6
    assert report["energy_drift"]["truth"]["max_abs"] < report["energy_drift"]["model"]["max_abs"] < 0.05


def test_report_has_the_promised_keys_and_shapes(model_report: tuple[dict[str, Any], Path]) -> None:
    report, out = model_report
    for key in REQUIRED_KEYS:
        dotted(report, key)
    max_lag = report["settings"]["max_lag"]
    assert max_lag == N_STEPS // 2  # default: min(200, steps // 2)
    for key in ("charge", "lattice"):
        for source in ("truth", "model"):
            curve = report["autocorr"][key][source]
            assert len(curve) == max_lag + 1 and curve[0] == pytest.approx(1.0)
    assert sorted(report["plots"]) == ["autocorr", "rmse", "spacetime", "structure_factor", "traces"]
    for name in report["plots"].values():
        assert (out / name).stat().st_size > 10_000  # a rendered figure, not an empty file
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert not list(out.glob(".*tmp"))  # the atomic write left no temporary file behind


def test_report_names_the_model_and_the_data(model_report: tuple[dict[str, Any], Path], reference_model: Path,
                                             shallow_data: Path) -> None:
    report, _ = model_report
    ckpt, data = report["checkpoint"], report["data"]
    weights = reference_model / "model_weights.pth"
    assert ckpt["format"] == "original"
    assert ckpt["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert ckpt["model_config"] == {"kind": "simple", "channels": 16, "n_blocks": 1, "kernel_size": 3,
                                    "dropout": 0.2, "constrain_rho": False, "symmetrize": False}
    assert ckpt["trained_on"]["L"] == 16
    assert data["manifest_sha256"] == hashlib.sha256((shallow_data / "manifest.json").read_bytes()).hexdigest()
    assert (data["split"], data["rollouts"], data["L"], data["g_f"]) == ("test", N_TEST, 16, 0.8)


def test_physics_baseline_reruns_the_same_rollouts(model_report: tuple[dict[str, Any], Path]) -> None:
    report, _ = model_report
    base, timing = report["physics_baseline"], report["timing"]
    assert base["snapshot_steps"] == N_STEPS and base["rk4_steps_per_snapshot"] == 64
    assert base["trajectory_steps"] == N_TEST * N_STEPS
    # Shallow dynamics is near periodic: the exact simulator lands on the stored snapshots.
    assert base["final_Q_max_abs_diff_vs_data"] < 1e-5
    assert base["seconds_per_snapshot_step_per_trajectory"] == pytest.approx(1.0 / base["rollout_steps_per_s"])
    assert base["surrogate_speedup"] == pytest.approx(timing["rollout_steps_per_s"] / base["rollout_steps_per_s"])


def test_our_checkpoint_format_gives_the_same_numbers(tmp_path: Path, shallow_data: Path, reference_model: Path,
                                                      model_report: tuple[dict[str, Any], Path]) -> None:
    # The reference weights re-saved as one of our checkpoints, trained (nominally) on this data set.
    save_ours(load_model(reference_model), shallow_data, tmp_path / "best.pt")
    assert run("--checkpoint", tmp_path / "best.pt", "--data", shallow_data, "--out", tmp_path / "out") == 0
    report = read_report(tmp_path / "out")
    assert report["checkpoint"]["format"] == "ours"
    assert report["checkpoint"]["sha256"] == hashlib.sha256((tmp_path / "best.pt").read_bytes()).hexdigest()
    assert report["checkpoint"]["trained_on"]["L"] == 16
    assert report["checkpoint"]["trained_on"]["snapshot_dt"] == pytest.approx(0.64)
    ignore = (*VOLATILE_SECTIONS, "checkpoint")
    assert numeric_differences(report, model_report[0], rtol=1e-9, atol=1e-12, ignore=ignore) == []


def test_truth_only_reports_ground_truth_and_the_baseline(tmp_path: Path, shallow_data: Path,
                                                          model_report: tuple[dict[str, Any], Path]) -> None:
    assert run("--truth-only", "--data", shallow_data, "--out", tmp_path) == 0
    report = read_report(tmp_path)
    assert report["mode"] == "truth-only"
    assert "checkpoint" not in report and "rmse_by_step" not in report and "divergent_fraction" not in report
    for key in ("charge", "lattice"):
        assert "model" not in report["autocorr"][key]
        np.testing.assert_allclose(report["autocorr"][key]["truth"], model_report[0]["autocorr"][key]["truth"],
                                   rtol=0, atol=1e-12)
    assert report["ranges"]["truth"] == model_report[0]["ranges"]["truth"]
    assert report["energy_drift"]["truth_integrator"]["max_abs"] < 1e-10
    assert report["physics_baseline"]["rollout_steps_per_s"] > 0
    assert sorted(report["plots"]) == ["autocorr", "spacetime", "structure_factor", "traces"]
    assert "model" not in report["structure_factor"]["Q"] and "model" not in report["structure_factor"]["Q"]["autocorr"]
    for key in ("Q", "density"):
        np.testing.assert_allclose(report["structure_factor"][key]["truth"]["mean"],
                                   model_report[0]["structure_factor"][key]["truth"]["mean"], rtol=0, atol=1e-12)


def test_bf16_autocast_runs_and_changes_the_rollout(tmp_path: Path, shallow_data: Path, reference_model: Path,
                                                    model_report: tuple[dict[str, Any], Path]) -> None:
    assert run("--checkpoint", reference_model, "--data", shallow_data, "--out", tmp_path, "--bf16",
               "--steps", 20, "--device", "cpu") == 0
    report = read_report(tmp_path)
    assert report["settings"]["bf16"] is True and report["divergent_fraction"] == 0.0
    bf16_rmse = np.asarray(report["rmse_by_step"]["Q"])
    fp32_rmse = np.asarray(model_report[0]["rmse_by_step"]["Q"][:21])
    assert np.all(np.isfinite(bf16_rmse)) and bf16_rmse[-1] < 0.05
    assert not np.allclose(bf16_rmse[1:], fp32_rmse[1:], rtol=1e-6)  # the autocast did take effect


def test_projected_rollouts_stay_physical_and_are_recorded(tmp_path: Path, shallow_data: Path,
                                                           reference_model: Path) -> None:
    assert run("--checkpoint", reference_model, "--data", shallow_data, "--out", tmp_path, "--project",
               "--steps", 20, "--rollouts", 2) == 0
    report = read_report(tmp_path)
    assert report["settings"]["project"] is True and report["divergent_fraction"] == 0.0
    # The particle number is an integer after every projected step: the density's q = 0 mode stays ~0.
    assert report["structure_factor"]["density"]["model"]["mean"][0] < 1e-8
    assert np.all(np.asarray(report["rmse_by_step"]["Q"]) < 0.05)


def test_conserving_rollouts_keep_the_energy_and_are_recorded(tmp_path: Path, shallow_data: Path,
                                                              reference_model: Path) -> None:
    assert run("--checkpoint", reference_model, "--data", shallow_data, "--out", tmp_path, "--conserve",
               "--steps", 20, "--rollouts", 2, "--no-plots") == 0
    report = read_report(tmp_path)
    assert report["settings"]["conserve"] is True and report["settings"]["project"] is False
    assert report["divergent_fraction"] == 0.0
    # Restored after every step in float64, stored in float32: the truth's own floor is ~1e-7 per site.
    assert report["energy_drift"]["model"]["max_abs"] < 1e-6
    assert report["structure_factor"]["density"]["model"]["mean"][0] < 1e-8  # the particle number is kept
    assert report["settings"]["energy_split"] == "momenta"
    # The swing per third of the rollouts, both sides, with the same spans.
    for key in ("charge", "lattice"):
        spans = [[p["span"] for p in report["swing"][key][side]] for side in ("truth", "model")]
        assert spans[0] == spans[1] == [[0, 7], [7, 14], [14, 21]]
    # The work split puts the same invariants back, with the lattice's share set by the work done on it.
    assert run("--checkpoint", reference_model, "--data", shallow_data, "--out", tmp_path / "work", "--conserve",
               "--energy-split", "work", "--work-share", 0.5, "--steps", 20, "--rollouts", 2, "--no-plots") == 0
    work = read_report(tmp_path / "work")
    assert work["settings"]["energy_split"] == "work" and work["settings"]["work_share"] == 0.5
    assert work["divergent_fraction"] == 0.0
    assert work["energy_drift"]["model"]["max_abs"] < 1e-6
    assert np.all(np.asarray(report["rmse_by_step"]["Q"]) < 0.05)


def test_symmetrized_rollouts_are_recorded_and_differ_from_plain_ones(tmp_path: Path, shallow_data: Path,
                                                                      reference_model: Path) -> None:
    common = ("--checkpoint", reference_model, "--data", shallow_data, "--steps", 20, "--rollouts", 2, "--no-plots")
    assert run(*common, "--out", tmp_path / "plain") == 0
    assert run(*common, "--out", tmp_path / "sym", "--symmetrize") == 0
    plain, sym = read_report(tmp_path / "plain"), read_report(tmp_path / "sym")
    assert sym["settings"]["symmetrize"] is True and sym["checkpoint"]["model_config"]["symmetrize"] is True
    assert plain["settings"]["symmetrize"] is False
    plain_q, sym_q = np.asarray(plain["rmse_by_step"]["Q"]), np.asarray(sym["rmse_by_step"]["Q"])
    assert np.all(sym_q < 0.05) and not np.allclose(plain_q[1:], sym_q[1:], rtol=1e-6)


def test_a_model_with_constant_output_gets_null_metrics_and_notes(tmp_path: Path, shallow_data: Path) -> None:
    # A fresh SimpleCNN's increment is exactly zero: the rollout stays at its initial state, and one
    # constant series has no defined autocorrelation or spectrum (with more rollouts the pooled mean
    # would still give C = 1 from the spread between them).
    model = build_model(ModelConfig(kind="simple", channels=4, n_blocks=1), dict.fromkeys(SCALE_KEYS, 1.0))
    save_ours(model, shallow_data, tmp_path / "fresh.pt")
    assert run("--checkpoint", tmp_path / "fresh.pt", "--data", shallow_data, "--out", tmp_path / "out",
               "--rollouts", 1, "--steps", 10) == 0
    report = read_report(tmp_path / "out")
    assert report["autocorr"]["charge"]["model"] is None
    assert report["autocorr_max_abs_error"]["charge"] is None
    assert report["power_spectrum_distance"]["lattice"] is None
    assert report["wasserstein"]["charge"] > 0
    assert any("constant" in note for note in report["notes"])
    assert report["divergent_fraction"] == 0.0  # a frozen state stays in range: bad, but not divergent


# ----------------------------------------------------------------------------------------------
# Mode-resolved observables and the finite-size trap
# ----------------------------------------------------------------------------------------------


def test_structure_factor_section_of_the_shallow_quench(model_report: tuple[dict[str, Any], Path]) -> None:
    report, _ = model_report
    section, n_sites, max_lag = report["structure_factor"], 16, report["settings"]["max_lag"]
    assert section["m"] == list(range(n_sites // 2 + 1))
    np.testing.assert_allclose(section["q"], 2 * np.pi * np.arange(n_sites // 2 + 1) / n_sites)
    assert section["density_offset"] == 0.5
    for key in ("Q", "density"):
        entry = section[key]
        # The shallow quench orders at q = pi, where the model agrees.
        assert entry["truth"]["peak_m"] == entry["model"]["peak_m"] == entry["autocorr"]["m"] == n_sites // 2
        assert entry["truth"]["peak_q"] == pytest.approx(np.pi)
        np.testing.assert_allclose(entry["mean_difference"],
                                   np.subtract(entry["model"]["mean"], entry["truth"]["mean"]), atol=1e-15)
        assert entry["max_abs_mean_difference"] == pytest.approx(np.max(np.abs(entry["mean_difference"])))
        for source in ("truth", "model"):
            assert len(entry["autocorr"][source]) == max_lag + 1 and entry["autocorr"][source][0] == pytest.approx(1)
        gap = np.abs(np.subtract(entry["autocorr"]["model"], entry["autocorr"]["truth"]))[1:]
        assert entry["autocorr_max_abs_error"] == pytest.approx(gap.max()) and entry["autocorr_max_abs_error"] < 0.1
    # Half filling subtracted: S of the density at q = 0 is the particle-number error, zero for the truth.
    assert section["density"]["truth"]["mean"][0] < 1e-10
    assert report["warnings"] == []  # the orders swing over ~0.1-0.4 here: far above the noise level


def test_mode_series_at_pi_are_the_order_parameters(shallow_data: Path) -> None:
    # S(pi, t) = L phi^2: the report's modes and its order parameters (docs/physics.md section 3) agree.
    split = open_dataset(shallow_data).split("test")
    data = split.read_many([0, 1], 0, 11)
    plan = evaluate.make_plan(evaluate.Options(checkpoint=None, data=shallow_data, truth_only=True, steps=10),
                              open_dataset(shallow_data), split)
    series = evaluate.state_series(data["rho"], data["Q"], data["P"], plan)
    modes = evaluate.mode_series(data["rho"], data["Q"])
    assert modes["Q"].shape == modes["density"].shape == (2, 11, 9) and modes["Q"].dtype == np.float32
    np.testing.assert_allclose(modes["Q"][..., -1], 16 * series["lattice"] ** 2, rtol=1e-5)
    np.testing.assert_allclose(modes["density"][..., -1], 16 * series["charge"] ** 2, rtol=1e-5)


def test_staggered_density_is_the_cdw_amplitude() -> None:
    # n_i = 1/2 + a (-1)^i: the pattern is a on every site, not the +-1/2 stripes of (-1)^i n_i.
    amplitude = np.array([0.0, 0.1, -0.2])
    n = 0.5 + amplitude[:, None] * (-1.0) ** np.arange(6)
    rho = np.zeros((3, 6, 6), np.complex64)
    rho[:, np.arange(6), np.arange(6)] = n
    np.testing.assert_allclose(physics.staggered_density(rho), np.repeat(amplitude[:, None], 6, axis=1), atol=1e-7)


@pytest.mark.parametrize(("charge", "lattice", "warned"), [
    (1e-4, 4e-4, ["charge", "lattice"]),  # the L=16 deep quench
    (0.35, 1.0, []),  # the L=32 deep quench
    (0.35, 1e-3, ["lattice"]),
])  # fmt: skip
def test_noise_level_warning_fires_only_below_the_threshold(charge: float, lattice: float, warned: list[str]) -> None:
    ranges = {"charge": {"max_range": charge}, "lattice": {"max_range": lattice}}
    structure = {"Q": {"truth": {"peak_m": 7, "peak_q": 7 * np.pi / 8}}}
    warnings = evaluate.noise_level_warnings(ranges, structure)
    assert [w.split()[1] for w in warnings] == warned
    for warning in warnings:
        assert "noise level" in warning and "structure factor" in warning and "L=32" in warning
        assert "q = 0.875 pi, not at pi" in warning


def synthetic_truth_share(span: float, with_modes: bool, n: int = 3, steps: int = 20, L: int = 8) -> evaluate.Share:
    """A merged truth-only share whose order parameters swing over ``span``."""
    swing = 0.5 * span * np.sin(np.linspace(0.0, 6.0, steps + 1) + np.arange(n)[:, None])
    modes = {"truth": dict.fromkeys(("Q", "density"), np.abs(_rng_normal((n, steps + 1, L // 2 + 1))))}
    return evaluate.Share(truth={"charge": swing, "lattice": 2 * swing, "energy": np.zeros((n, steps + 1)),
                                 "energy_stored": np.zeros((n, steps + 1)), "kinetic": np.full((n, steps + 1), 1e-3),
                                 "walls": np.zeros((n, steps + 1))},
                          model=None, squared_errors=None, pattern=None, rollout_seconds=0.0,
                          baseline={"seconds": 0.0, "trajectory_steps": 0}, modes=modes if with_modes else None)


def _rng_normal(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("with_modes", [True, False])
def test_build_report_warns_on_a_noise_level_ensemble_only(with_modes: bool) -> None:
    plan = evaluate.Plan(indices=(0, 1, 2), steps=20, max_lag=5, L=8, g_f=1.0, K0=1.0, eta=1.0, snapshot_dt=1.0,
                         rk4_per_snapshot=1, baseline_steps=0)
    quiet = evaluate.build_report(synthetic_truth_share(1e-4, with_modes), plan, {}, {}, {}, {})
    assert [w.split()[1] for w in quiet["warnings"]] == ["charge", "lattice"]
    assert quiet["notes"] == quiet["warnings"]
    assert ("structure_factor" in quiet) == with_modes  # a share without modes (a benchmark's) still reports
    loud = evaluate.build_report(synthetic_truth_share(0.3, with_modes), plan, {}, {}, {}, {})
    assert loud["warnings"] == [] and loud["notes"] == []


@pytest.fixture(scope="session")
def trap_data(tmp_path_factory: pytest.TempPathFactory, make_dataset) -> Path:
    # The L=16 deep quench, full transient, 40 snapshots: ~2 s, and the q = pi orders stay at ~1e-4.
    return make_dataset(tmp_path_factory.mktemp("data") / "deep_L16", TRAP_CONFIG, "--no-virtual", "splits.train=1",
                        "splits.val=0", "splits.test=2", "n_steps=40")


def test_finite_size_trap_is_flagged_and_resolved_by_the_structure_factor(
        tmp_path: Path, trap_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--truth-only", "--data", trap_data, "--out", tmp_path, "--baseline-steps", 0) == 0
    printed = capsys.readouterr().out
    report = read_report(tmp_path)
    assert report["ranges"]["truth"]["charge"]["max_range"] < 1e-3
    assert report["ranges"]["truth"]["lattice"]["max_range"] < 1e-3
    assert [w.split()[1] for w in report["warnings"]] == ["charge", "lattice"]
    assert all(w in report["notes"] for w in report["warnings"])
    assert printed.count("WARNING: truth") == 2 and "structure factor" in printed
    # Q grows in an odd mode below pi (7 pi / 8 here), orders of magnitude above the q = pi bin.
    spectrum = report["structure_factor"]["Q"]["truth"]
    assert spectrum["peak_m"] % 2 == 1 and spectrum["peak_m"] < 8
    assert spectrum["mean"][spectrum["peak_m"]] > 1e3 * spectrum["mean"][8]
    assert report["structure_factor"]["Q"]["autocorr"]["m"] == spectrum["peak_m"]
    assert "structure_factor" in report["plots"]


# ----------------------------------------------------------------------------------------------
# The reduction that the ranks rely on
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 5, 8, 13])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_rank_shares_cover_the_rollouts_once_in_order(n: int, world: int) -> None:
    shares = [evaluate.share_of(n, rank, world) for rank in range(world)]
    assert [i for share in shares for i in share] == list(range(n))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


@pytest.mark.parametrize("world", [3, 9])  # 9 > 8 rollouts: one rank has nothing to do
def test_merged_shares_give_the_single_share_report(world: int, shallow_data: Path, reference_model: Path) -> None:
    ds = open_dataset(shallow_data)
    split = ds.split("test")
    opts = evaluate.Options(checkpoint=reference_model, data=shallow_data, steps=20, baseline_steps=2)
    plan = evaluate.make_plan(opts, ds, split)
    model = load_model(reference_model)
    device = torch.device("cpu")

    def report_of(shares: list[evaluate.Share]) -> dict[str, Any]:
        merged = evaluate.merge_shares(shares)
        return evaluate.jsonable(evaluate.build_report(merged, plan, {}, {}, {}, {}))

    whole = report_of([evaluate.evaluate_share(split, plan, range(N_TEST), model, device, 32, False)])
    parts = report_of([evaluate.evaluate_share(split, plan, evaluate.share_of(N_TEST, r, world), model, device, 2,
                                               False) for r in range(world)])
    # Different batch sizes change float32 rounding inside the CNN, nothing else.
    assert numeric_differences(parts, whole, rtol=1e-6, atol=1e-6) == []


def test_numeric_differences_flags_changed_missing_and_reshaped_numbers(
        model_report: tuple[dict[str, Any], Path]) -> None:
    report = model_report[0]
    assert numeric_differences(report, report, rtol=0, atol=0) == []
    changed = json.loads(json.dumps(report))
    changed["rmse_by_step"]["Q"][5] *= 1 + 1e-5
    changed["wasserstein"]["charge"] = None
    del changed["divergent_fraction"]
    changed["autocorr"]["lattice"]["model"].append(0.0)
    changed["timing"]["wall_seconds"] += 1.0  # volatile: ignored
    assert numeric_differences(changed, report, rtol=1e-6, atol=0) == [
        "autocorr.lattice.model", "divergent_fraction", "rmse_by_step.Q", "wasserstein.charge"]


def test_jsonable_turns_non_finite_numbers_into_null() -> None:
    out = evaluate.jsonable({"a": np.array([1.0, np.nan]), "b": (np.float32(np.inf), np.int64(3)), "c": None})
    assert out == {"a": [1.0, None], "b": [None, 3], "c": None}
    json.dumps(out, allow_nan=False)


# ----------------------------------------------------------------------------------------------
# Bad input: one line that names the problem and the fix, exit status 2
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def small_l8_data(tmp_path_factory: pytest.TempPathFactory, make_dataset) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "shallow_L8", SHALLOW_CONFIG, "--no-virtual", "L=8",
                        "n_steps=2", "splits.train=1", "splits.val=0", "splits.test=1")


def save_ours(model: torch.nn.Module, trained_on: Path, path: Path) -> Path:
    """``model`` as one of our checkpoint files, nominally trained on the dataset ``trained_on``."""
    atomic_save(model_payload(model, data_signature(open_dataset(trained_on).config)), path)
    return path


def bad_input_cases(data: Path, model: Path, tmp: Path, l8_data: Path) -> list[tuple[list[Any], str]]:
    # An original-format copy of the reference weights whose directory name says it was trained at L=32.
    wrong_l = tmp / "tiny-quench_0p5_0p8-L_32"
    shutil.copytree(model, wrong_l)
    # Ours records its training data's signature itself: the check needs no path to that data.
    moved = tmp / "moved_L8"
    shutil.copytree(l8_data, moved)
    ours_l8 = save_ours(load_model(model), moved, tmp / "ours-L8.pt")
    shutil.rmtree(moved)
    (tmp / "a_file").write_text("")
    ckpt = ["--checkpoint", model, "--data", data]
    return [
        (["--data", data], "pass --checkpoint"),
        (["--truth-only", *ckpt], "drop --checkpoint"),
        (["--truth-only", "--data", data, "--symmetrize"], "drop them with --truth-only"),
        ([*ckpt, "--project", "--conserve"], "--project and --conserve are exclusive"),
        ([*ckpt, "--energy-split", "work"], "add --conserve or drop --energy-split"),
        ([*ckpt, "--conserve", "--work-share", 0.5], "set the energy split to work or drop --work-share"),
        ([*ckpt, "--conserve", "--energy-split", "work", "--work-share", 0], "--work-share is 0.0; use a number in"),
        ([*ckpt, "--split", "holdout"], "--split 'holdout'"),
        ([*ckpt, "--max-lag", N_STEPS], f"pass --max-lag {N_STEPS - 1} or less"),
        ([*ckpt, "--steps", 20, "--max-lag", 20], "pass --max-lag 19 or less"),
        ([*ckpt, "--steps", N_STEPS + 1], f"pass --steps {N_STEPS} or less"),
        ([*ckpt, "--rollouts", N_TEST + 1], f"pass --rollouts {N_TEST} or less"),
        ([*ckpt, "--batch-size", 0], "--batch-size is 0"),
        (["--checkpoint", wrong_l, "--data", data], "trained on L=32 but"),
        (["--checkpoint", ours_l8, "--data", data], "trained on L=8 but"),
        (["--checkpoint", tmp / "missing", "--data", data], "does not exist"),
        (["--checkpoint", model, "--data", tmp / "missing"], "does not exist"),
        ([*ckpt, "--out", tmp / "a_file"], "is a file, not a directory"),
        ([*ckpt, "--out", tmp / "a_file" / "report"], "lies under the file"),
    ]


def test_bad_inputs_give_one_line_errors(tmp_path: Path, shallow_data: Path, reference_model: Path,
                                         small_l8_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = bad_input_cases(shallow_data, reference_model, tmp_path, small_l8_data)
    for argv, expected in cases:
        capsys.readouterr()
        out = [] if "--out" in argv else ["--out", tmp_path / "out"]
        assert run(*argv, *out) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err
        assert expected in err, (argv, err)
    assert not (tmp_path / "out").exists()  # refused before any work was done
