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

from holstein_dist import evaluate
from holstein_dist.model import SCALE_KEYS, ModelConfig, build_model, load_model, model_payload
from holstein_dist.report import VOLATILE_SECTIONS, numeric_differences
from holstein_dist.shards import open_dataset

ROOT = Path(__file__).resolve().parents[2]
SHALLOW_CONFIG = ROOT / "configs" / "data" / "shallow_L16.yaml"
N_TEST, N_STEPS = 8, 60

REQUIRED_KEYS = [
    "autocorr.charge.truth", "autocorr.charge.model", "autocorr.lattice.truth", "autocorr.lattice.model",
    "autocorr_max_abs_error.charge", "autocorr_max_abs_error.lattice",
    "autocorr_mean_abs_error.charge", "autocorr_mean_abs_error.lattice",
    "divergent_fraction",
    "rmse_by_step.rho_diag", "rmse_by_step.rho_offdiag", "rmse_by_step.Q", "rmse_by_step.P",
    "wasserstein.charge", "wasserstein.lattice",
    "power_spectrum_distance.charge", "power_spectrum_distance.lattice",
    "energy_drift.model", "energy_drift.truth", "energy_drift.truth_integrator",
    "checkpoint.path", "checkpoint.format", "checkpoint.sha256", "checkpoint.model_config",
    "data.path", "data.manifest_sha256", "data.split", "data.rollouts",
    "timing.rollout_steps_per_s", "timing.wall_seconds", "timing.world_size",
    "physics_baseline.seconds_per_snapshot_step_per_trajectory", "physics_baseline.rollout_steps_per_s",
    "physics_baseline.surrogate_speedup",
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
        assert report["wasserstein"][key] < 0.01
        assert report["power_spectrum_distance"][key] < 0.1
    for key, values in report["rmse_by_step"].items():
        values = np.asarray(values)
        assert len(values) == N_STEPS + 1 and np.all(np.isfinite(values)), key
        assert values[0] == 0.0, key  # step 0 is the ground-truth input itself
        assert 0.0 < values[-1] < 0.02, key
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
    assert sorted(report["plots"]) == ["autocorr", "rmse", "spacetime", "traces"]
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
                                    "dropout": 0.2}
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
    payload = {**model_payload(load_model(reference_model)), "config": {"data": str(shallow_data)}}
    torch.save(payload, tmp_path / "best.pt")
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
    assert sorted(report["plots"]) == ["autocorr", "spacetime", "traces"]


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


def test_a_model_with_constant_output_gets_null_metrics_and_notes(tmp_path: Path, shallow_data: Path) -> None:
    # A fresh SimpleCNN's increment is exactly zero: the rollout stays at its initial state, and one
    # constant series has no defined autocorrelation or spectrum (with more rollouts the pooled mean
    # would still give C = 1 from the spread between them).
    model = build_model(ModelConfig(kind="simple", channels=4, n_blocks=1), dict.fromkeys(SCALE_KEYS, 1.0))
    torch.save({**model_payload(model), "config": {"data": str(shallow_data)}}, tmp_path / "fresh.pt")
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


def bad_input_cases(data: Path, model: Path, tmp: Path, l8_data: Path) -> list[tuple[list[Any], str]]:
    # An original-format copy of the reference weights whose directory name says it was trained at L=32.
    wrong_l = tmp / "tiny-quench_0p5_0p8-L_32"
    shutil.copytree(model, wrong_l)
    ours_l8 = tmp / "ours-L8.pt"
    torch.save({**model_payload(load_model(model)), "config": {"data": str(l8_data)}}, ours_l8)
    ckpt = ["--checkpoint", model, "--data", data]
    return [
        (["--data", data], "pass --checkpoint"),
        (["--truth-only", *ckpt], "drop --checkpoint"),
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
    ]


def test_bad_inputs_give_one_line_errors(tmp_path: Path, shallow_data: Path, reference_model: Path,
                                         small_l8_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = bad_input_cases(shallow_data, reference_model, tmp_path, small_l8_data)
    for argv, expected in cases:
        capsys.readouterr()
        assert run(*argv, "--out", tmp_path / "out") == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("evaluate: error: "), err
        assert expected in err, (argv, err)
    assert not (tmp_path / "out").exists()  # refused before any work was done
