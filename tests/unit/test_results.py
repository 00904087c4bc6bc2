"""Result tables and training curves from real runs and reports (the README's Results numbers)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from holstein_dist import evaluate, results, train
from holstein_dist.checkpoints import load_model, scale_increments

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs/train/tiny.yaml")


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("results") / "run"
    assert train.main(["--config", TINY, f"data={tiny_data}", f"run_dir={run_dir}", "max_steps=20", "keep=5"]) == 0
    return run_dir


def test_curves_follow_the_runs_validation_and_checkpoints(tiny_run, tiny_data, tmp_path):
    rows = results.training_curve(tiny_run)
    assert [r["step"] for r in rows] == [10, 20]
    assert all(r["minutes"] >= 0 and r["val_rollout_error"] > 0 for r in rows)
    out = tmp_path / "rollouts.csv"
    model = tmp_path / "chosen.pt"
    assert results.main(["rollout-curve", str(tiny_run), "--data", str(tiny_data), "--split", "test", "--steps", "6",
                         "--at", "1", "6", "--out", str(out), "--export", str(model)]) == 0
    table = list(csv.DictReader(out.open()))
    assert [int(r["step"]) for r in table] == [10, 20]
    assert {"rmse_Q_at_1", "rmse_rho_offdiag_at_6", "autocorr_max_abs_error_charge", "score"} <= set(table[0])
    # The exported model is the lowest-scoring checkpoint's: same weights, and the score is the log-mean RMSE.
    best = min(table, key=lambda r: float(r["score"]))
    chosen = load_model(model)
    kept = load_model(tiny_run / "checkpoints" / f"step-{int(best['step']):08d}.pt")
    assert all(torch.equal(a, b) for a, b in zip(chosen.state_dict().values(), kept.state_dict().values()))
    logs = [math.log10(float(best[f"rmse_{c}_at_{k}"])) for c in results.RMSE_COMPONENTS for k in (1, 6)]
    assert float(best["score"]) == pytest.approx(sum(logs) / len(logs))


def test_table_compares_reports_on_one_test_set_only(tiny_run, tiny_data, tmp_path, capsys):
    for name, steps in (("a", 6), ("b", 6), ("c", 5)):
        assert evaluate.main(["--checkpoint", str(tiny_run), "--data", str(tiny_data), "--steps", str(steps),
                              "--baseline-steps", "0", "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    assert results.main(["table", str(tmp_path / "a"), str(tmp_path / "b"), "--names", "ours", "again",
                         "--steps", "1", "6"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| metric | ours | again |") and "RMSE rho_offdiag @ step 6" in table
    # The sampling rows give the noise of the climate test, the same floor for both: not a score to bold.
    floor_row = next(line for line in table.splitlines() if "lattice: a perfect model's (noise floor)" in line)
    assert "**" not in floor_row and floor_row.count("|") == 4
    assert "charge: bootstrap std" in table
    assert results.main(["table", str(tmp_path / "a"), str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: c was evaluated with other steps") and err.count("\n") == 1


def test_swing_rows_give_each_thirds_trough_lag_off_the_truths_and_tolerate_older_reports():
    def report(model_lags: list[int | None]) -> dict:
        def parts(lags: list[int | None]) -> list[dict]:
            return [{"span": [333 * i, 333 * (i + 1)], "zero": None, "trough_lag": lag, "trough": None}
                    for i, lag in enumerate(lags)]
        return {"swing": {"lattice": {"truth": parts([42, 55, 58]), "model": parts(model_lags)}}}

    rows = dict(results.swing_rows([report([57, 60, 57]), report([45, None, 47]), {}]))
    assert rows == {"lattice swing trough lag, steps off the truth's (42), steps 0-333": [15, 3, None],
                    "lattice swing trough lag, steps off the truth's (55), steps 333-666": [5, None, None],
                    "lattice swing trough lag, steps off the truth's (58), steps 666-999": [1, 11, None]}
    assert results.swing_rows([{}]) == []
    assert results._fmt(15) == "15" and results._fmt(15.0) == "15.000"  # lags print as counts


def test_coherent_rows_take_the_window_holding_each_step_and_tolerate_older_reports():
    def report(lag: float | None) -> dict:
        windows = [{"start": 1, "stop": 100, "lag_steps": lag, "amplitude_error": -0.01, "residual": 3e-3},
                   {"start": 101, "stop": 200, "lag_steps": None if lag is None else 2 * lag, "amplitude_error": None}]
        return {"coherent": {"charge": windows, "lattice": windows}}

    listed = results.coherent_rows([report(-0.1), report(0.05), {}], [1, 100, 150, 999])
    rows = dict(listed)
    assert len(rows) == len(listed)  # steps 1 and 100 share a window: its rows come once
    assert rows["mean lattice oscillation |lag| (steps), steps 1-100"] == [0.1, 0.05, None]
    assert rows["mean charge oscillation |lag| (steps), steps 101-200"] == [0.2, 0.1, None]
    assert rows["mean charge oscillation |amplitude error|, steps 101-200"] == [None, None, None]
    assert rows["mean charge oscillation error the slow fit leaves (RMS), steps 1-100"] == [3e-3, 3e-3, None]
    assert rows["mean charge oscillation error the slow fit leaves (RMS), steps 101-200"] == [None, None, None]
    assert not any("999" in label for label in rows)  # a step past every window adds no row
    assert len(rows) == 2 * 2 * 3


def test_lattice_motion_rows_measure_the_distance_to_the_truth_and_tolerate_older_reports():
    def report(kinetic: float, walls: float) -> dict:
        return {"lattice_motion": {"windows": [[1, 100], [101, 200]],
                                   "kinetic": {"truth": [0.01, 0.004], "model": [0.01, kinetic]},
                                   "walls": {"truth": [2.6, 2.5], "model": [2.6, walls]}}}

    frozen, hot, none_kept = report(0.0001, 0.5), report(0.012, 3.0), report(0.0, 2.0)
    none_kept["lattice_motion"]["kinetic"]["model"] = None
    rows = dict(results.lattice_motion_rows([frozen, hot, none_kept, {}]))
    assert rows["lattice kinetic energy, factor off the truth, steps 101-200"] == pytest.approx([40.0, 3.0, None, None])
    assert rows["domain walls per ring, abs error (truth 2.500), steps 101-200"] == pytest.approx([2.0, 0.5, 0.5, None])
    assert results.lattice_motion_rows([{}, {"coherent": {}}]) == []


def test_climate_score_ranks_rollout_curve_by_autocorrelation_and_divergence(tiny_run, tiny_data, tmp_path, capsys):
    out = tmp_path / "climate.csv"
    assert results.main(["rollout-curve", str(tiny_run), "--data", str(tiny_data), "--split", "test", "--steps", "8",
                         "--at", "1", "8", "--score", "climate", "--project", "--out", str(out)]) == 0
    table = list(csv.DictReader(out.open()))
    for row in table:  # bounded rollouts: the mean of the two order parameters' max autocorrelation errors
        expected = (float(row["autocorr_max_abs_error_charge"]) + float(row["autocorr_max_abs_error_lattice"])) / 2
        assert float(row["divergent_fraction"]) == 0 and float(row["score"]) == pytest.approx(expected)
    # Divergence ranks behind any bounded model, and more divergence behind less.
    bounded = {"divergent_fraction": 0.0, "autocorr_max_abs_error": {"charge": 1.9, "lattice": 1.9}}
    few = {**bounded, "divergent_fraction": 0.1}
    many = {**bounded, "divergent_fraction": 0.5}
    assert results.climate_score(bounded) < results.climate_score(few) < results.climate_score(many)
    # `score` prints the same number for a report of any model.
    capsys.readouterr()
    assert results.main(["score", str(tmp_path / "climate" / "step-10"), "--score", "climate"]) == 0
    assert float(capsys.readouterr().out.split()[0]) == pytest.approx(float(table[0]["score"]), abs=1e-4)


def test_pooled_rows_and_the_balanced_score_average_over_windows_of_steps(tiny_run, tiny_data, tmp_path, capsys):
    assert evaluate.main(["--checkpoint", str(tiny_run), "--data", str(tiny_data), "--steps", "6",
                          "--baseline-steps", "0", "--no-plots", "--out", str(tmp_path / "a")]) == 0
    report = results.read_report(tmp_path / "a")
    series = report["rmse_by_step"]["Q"]
    assert results.pooled_rmse(series, 2, 4) == pytest.approx(math.sqrt(sum(v * v for v in series[2:5]) / 3))
    assert results.pooled_rmse(series, 5, 7) is None  # past the rollout
    capsys.readouterr()
    assert results.main(["table", str(tmp_path / "a"), "--steps", "1", "6", "--window", "3"]) == 0
    table = capsys.readouterr().out
    assert "| RMSE Q over steps 4-6 |" in table and "over steps 1-1" not in table  # step 1 alone is no window
    assert f"{results.pooled_rmse(series, 4, 6):.2e}" in table.split("| RMSE Q over steps 4-6 |")[1].split("\n")[0]
    # balanced: half the mean log pooled RMSE (windows of POOL_WINDOW steps, clipped at step 1), half the mean log
    # autocorrelation error; a divergent report ranks last.
    pooled = [results.pooled_rmse(report["rmse_by_step"][c], 1, k) for c in results.RMSE_COMPONENTS for k in (3, 6)]
    climate = [report["autocorr_max_abs_error"][o] for o in ("charge", "lattice")]
    expected = 0.5 * sum(map(math.log10, pooled)) / len(pooled) + 0.5 * sum(map(math.log10, climate)) / 2
    assert results.balanced_score(report, (3, 6)) == pytest.approx(expected)
    assert results.balanced_score({**report, "divergent_fraction": 0.1}, (3, 6)) == math.inf
    with pytest.raises(ValueError, match="before the last --at step"):
        results.balanced_score(report, (3, 7))
    assert results.main(["table", str(tmp_path / "a"), "--window", "-1"]) == 2


def test_average_writes_the_mean_weights_of_checkpoints_of_one_run(tiny_run, tiny_data, tmp_path, capsys):
    from hpc.checkpoint import atomic_save, load_checkpoint

    kept = sorted((tiny_run / "checkpoints").glob("step-*.pt"))
    assert len(kept) >= 2
    out = tmp_path / "mean.pt"
    assert results.main(["average", *map(str, kept), "--out", str(out)]) == 0
    mean, members = load_model(out), [load_model(p) for p in kept]
    for name, tensor in mean.state_dict().items():
        stacked = torch.stack([m.state_dict()[name].double() for m in members])
        assert torch.allclose(tensor.double(), stacked.mean(0), atol=1e-6), name
    assert mean.scales == members[0].scales
    # A checkpoint of another architecture is refused in one line naming it, and nothing is written.
    other = tmp_path / "other"
    assert train.main(["--config", TINY, f"data={tiny_data}", f"run_dir={other}", "max_steps=2", "val_every=2",
                       "model.channels=4"]) == 0
    capsys.readouterr()
    refused = tmp_path / "refused.pt"
    assert results.main(["average", str(kept[0]), str(other), "--out", str(refused)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "another model_config" in err and "(model.channels differ)" in err
    assert err.count("\n") == 1 and not refused.exists()
    # Dropout has no weights: a model fine-tuned without it averages with its parent (the first source's kept).
    no_dropout = tmp_path / "no_dropout.pt"
    payload = load_checkpoint(kept[1])
    payload["model_config"]["dropout"] = 0.0
    atomic_save(payload, no_dropout)
    assert results.main(["average", str(kept[0]), str(no_dropout), "--out", str(tmp_path / "mix.pt")]) == 0
    assert load_model(tmp_path / "mix.pt").config == members[0].config
    # A file written before a ModelConfig field existed (no "symmetrize" key) averages with a newer one.
    old = tmp_path / "old.pt"
    payload = load_checkpoint(kept[0])
    payload["model_config"].pop("symmetrize")
    atomic_save(payload, old)
    assert results.main(["average", str(old), str(kept[1]), "--out", str(tmp_path / "mixed.pt")]) == 0


def test_average_with_weights_interpolates_between_a_model_and_its_fine_tune(tiny_run, tmp_path, capsys):
    from holstein_dist.checkpoints import scale_increments

    kept = sorted((tiny_run / "checkpoints").glob("step-*.pt"))
    first, last = tmp_path / "first.pt", tmp_path / "last.pt"
    scale_increments(kept[0], 0.9, first)  # both carry the record 0.9, which the interpolation keeps
    scale_increments(kept[-1], 0.9, last)
    out = tmp_path / "between.pt"
    assert results.main(["average", str(first), str(last), "--weights", "3", "1", "--out", str(out)]) == 0
    a, b, mix = load_model(first), load_model(last), load_model(out)
    moved = 0
    for name, tensor in mix.state_dict().items():
        expected = 0.75 * a.state_dict()[name].double() + 0.25 * b.state_dict()[name].double()
        assert torch.allclose(tensor.double(), expected, atol=1e-6), name
        moved += not torch.equal(a.state_dict()[name], b.state_dict()[name])
    assert moved > 0  # the two checkpoints differ, so the weights matter
    assert mix.increment_factors == a.increment_factors == {k: pytest.approx(0.9) for k in a.increment_factors}
    # A weight per checkpoint, none negative: else one line naming the fix, and nothing written.
    for weights in (["1"], ["1", "-1"], ["0", "0"], ["nan", "1"]):
        refused = tmp_path / "refused.pt"
        assert results.main(["average", str(first), str(last), "--weights", *weights, "--out", str(refused)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "weight" in err and err.count("\n") == 1, weights
        assert not refused.exists()


def test_scale_increments_multiplies_every_predicted_increment(tiny_run, tmp_path, capsys):
    from holstein_dist.checkpoints import export_model

    plain = load_model(tiny_run)
    scaled_path = scale_increments(tiny_run, 1.5, tmp_path / "scaled.pt")
    scaled = load_model(scaled_path)
    g = torch.Generator().manual_seed(0)
    L = 16
    # Small states: the tiny model's increments are ~1e-6, so float32 states must be small to resolve them.
    rho = torch.randn(2, L, L, dtype=torch.complex64, generator=g) * 1e-3
    Q, P = torch.randn(2, L, generator=g) * 1e-3, torch.randn(2, L, generator=g) * 1e-3
    for a, b in zip(plain.rollout(rho, Q, P, 1), scaled.rollout(rho, Q, P, 1)):
        step_a, step_b = a[:, 1] - a[:, 0], b[:, 1] - b[:, 0]
        assert step_a.abs().max() > 0
        assert torch.allclose(step_b, 1.5 * step_a, rtol=1e-3, atol=1e-10)
    assert scaled.scales["delta_Q"] == pytest.approx(1.5 * plain.scales["delta_Q"])
    assert scaled.scales["Q"] == plain.scales["Q"]
    # Factors compose and survive an export; a bad factor is refused before anything is written.
    again = scale_increments(scaled_path, 2.0, tmp_path / "again.pt")
    exported = export_model(again, tmp_path / "exported.pt")
    from hpc.checkpoint import load_checkpoint

    assert load_checkpoint(exported, required=("format",))["increment_factor"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="must be a positive number"):
        scale_increments(tiny_run, 0.0, tmp_path / "zero.pt")
    assert not (tmp_path / "zero.pt").exists()


def test_scale_increments_per_component_scales_only_those_components(tiny_run, tmp_path, capsys):
    from hpc.checkpoint import load_checkpoint

    plain = load_model(tiny_run)
    g = torch.Generator().manual_seed(1)
    L = 16
    rho = torch.randn(2, L, L, dtype=torch.complex64, generator=g) * 1e-3
    Q, P = torch.randn(2, L, generator=g) * 1e-3, torch.randn(2, L, generator=g) * 1e-3
    # The CLI: --all and --lattice multiply (rho x0.9, Q and P x0.9 * 1.2), recorded per component.
    out = tmp_path / "lattice.pt"
    assert results.main(["scale", str(tiny_run), "--out", str(out), "--all", "0.9", "--lattice", "1.2"]) == 0
    assert "rho 0.9, Q 1.08, P 1.08" in capsys.readouterr().out
    scaled = load_model(out)
    for factor, a, b in zip((0.9, 1.08, 1.08), plain.rollout(rho, Q, P, 1), scaled.rollout(rho, Q, P, 1)):
        step_a, step_b = a[:, 1] - a[:, 0], b[:, 1] - b[:, 0]
        assert step_a.abs().max() > 0
        assert torch.allclose(step_b, factor * step_a, rtol=1e-3, atol=1e-10)
    assert scaled.scales["delta_Q"] == pytest.approx(1.08 * plain.scales["delta_Q"])
    assert scaled.scales["delta_rho"] == pytest.approx(0.9 * plain.scales["delta_rho"])
    assert load_checkpoint(out, required=("format",))["increment_factor"] == pytest.approx(
        {"rho": 0.9, "Q": 1.08, "P": 1.08})
    # Per-component records compose with a later uniform factor; equal factors are recorded as one number.
    again = scale_increments(out, {"rho": 1.2}, tmp_path / "again.pt")
    assert load_checkpoint(again, required=("format",))["increment_factor"] == pytest.approx(1.08)
    # Bad factors are refused in one line, before anything is written.
    capsys.readouterr()
    assert results.main(["scale", str(tiny_run), "--out", str(tmp_path / "bad.pt"), "--electrons", "-1"]) == 2
    err = capsys.readouterr().err
    assert "must be a positive number" in err and "rho" in err and err.count("\n") == 1
    assert not (tmp_path / "bad.pt").exists()
    with pytest.raises(ValueError, match="the components are rho, Q, P"):
        scale_increments(tiny_run, {"phonons": 2.0}, tmp_path / "bad.pt")


def test_calibrate_scores_a_grid_of_factors_and_exports_the_best(tiny_run, tiny_data, tmp_path, capsys):
    out, model = tmp_path / "factors.csv", tmp_path / "calibrated.pt"
    assert results.main(["calibrate", str(tiny_run), "--data", str(tiny_data), "--split", "test", "--steps", "6",
                         "--at", "1", "6", "--span", "0.1", "--points", "3", "--out", str(out),
                         "--export", str(model)]) == 0
    rows = list(csv.DictReader(out.open()))
    factors = [float(r["factor"]) for r in rows]
    assert factors == sorted(factors) and {0.9, 1.0, 1.1} <= set(factors) and len(factors) > 3  # coarse + refined
    best = best_row(rows)
    assert load_model(model).scales["delta_rho"] == pytest.approx(
        float(best["factor"]) * load_model(tiny_run).scales["delta_rho"], rel=1e-6)
    assert f"best increment factor on test: {float(best['factor']):.6f}" in capsys.readouterr().out
    # --symmetrize: every candidate is evaluated with group averaging, and the export keeps it switched on.
    sym = tmp_path / "symmetrized.pt"
    assert results.main(["calibrate", str(tiny_run), "--data", str(tiny_data), "--split", "test", "--steps", "6",
                         "--at", "1", "6", "--span", "0.1", "--points", "3", "--symmetrize", "--score", "balanced",
                         "--work", str(tmp_path / "sym"), "--out", str(tmp_path / "sym.csv"),
                         "--export", str(sym)]) == 0
    assert load_model(sym).config.symmetrize is True
    assert results.read_report(tmp_path / "sym" / "factor-1.000000")["checkpoint"]["model_config"]["symmetrize"]
    # --conserve (here with the work split): every candidate is rolled out with the guard (evaluate's, not the model's).
    assert results.main(["calibrate", str(tiny_run), "--data", str(tiny_data), "--split", "test", "--steps", "6",
                         "--at", "1", "6", "--span", "0.1", "--points", "3", "--conserve", "--score", "climate",
                         "--energy-split", "work", "--work-share", "0.5", "--work", str(tmp_path / "cons"),
                         "--out", str(tmp_path / "cons.csv"), "--export", str(tmp_path / "cons.pt")]) == 0
    candidates = sorted(p for p in (tmp_path / "cons").glob("factor-*") if p.is_dir())
    settings = [results.read_report(p)["settings"] for p in candidates]
    assert len(candidates) > 3 and all(s["conserve"] and s["energy_split"] == "work" and s["work_share"] == 0.5
                                   for s in settings)
    # --components lattice: the factor scales Q's and P's increments only, in every candidate and the export.
    lattice = tmp_path / "lattice.pt"
    assert results.main(["calibrate", str(tiny_run), "--data", str(tiny_data), "--split", "test", "--steps", "6",
                         "--at", "1", "6", "--span", "0.1", "--points", "3", "--components", "lattice",
                         "--work", str(tmp_path / "lat"), "--out", str(tmp_path / "lat.csv"),
                         "--export", str(lattice)]) == 0
    best = best_row(list(csv.DictReader((tmp_path / "lat.csv").open())))
    tried = load_model(tmp_path / "lat" / "factor-0.900000.pt")
    assert tried.scales["delta_P"] == pytest.approx(0.9 * load_model(tiny_run).scales["delta_P"], rel=1e-6)
    assert tried.scales["delta_rho"] == load_model(tiny_run).scales["delta_rho"]
    assert load_model(lattice).scales["delta_Q"] == pytest.approx(
        float(best["factor"]) * load_model(tiny_run).scales["delta_Q"], rel=1e-6)


def best_row(rows):
    return min(rows, key=lambda r: (float(r["score"]), abs(float(r["factor"]) - 1)))


def test_calibrate_an_ensemble_writes_a_new_ensemble_of_calibrated_members(tiny_data, tmp_path, capsys):
    from holstein_dist.ensemble import member_checkpoints

    ens = tmp_path / "ens"
    assert train.main(["--config", TINY, f"data={tiny_data}", f"run_dir={ens}", "max_steps=10",
                       "ensemble.members=2"]) == 0
    out, export = tmp_path / "factors.csv", tmp_path / "calibrated"
    argv = ["calibrate", str(ens), "--data", str(tiny_data), "--split", "test", "--steps", "6", "--at", "1", "6",
            "--span", "0.1", "--points", "3", "--out", str(out), "--export", str(export)]
    assert results.main(argv) == 0
    rows = list(csv.DictReader(out.open()))
    assert {r["member"] for r in rows} == {"0", "1"}
    for i, (before, after) in enumerate(zip(member_checkpoints(ens), member_checkpoints(export))):
        mine = [r for r in rows if r["member"] == str(i)]
        best = best_row(mine)
        assert load_model(after).scales["delta_P"] == pytest.approx(
            float(best["factor"]) * load_model(before).scales["delta_P"], rel=1e-6)
    assert evaluate.main(["--checkpoint", str(export), "--data", str(tiny_data), "--steps", "4", "--rollouts", "2",
                          "--baseline-steps", "0", "--out", str(tmp_path / "eval")]) == 0
    # An existing export directory is never overwritten.
    capsys.readouterr()
    assert results.main(argv) == 2
    assert "exists; pass a new directory" in capsys.readouterr().err


def test_calibrate_refuses_an_original_format_model_in_one_line(reference_model, tiny_data, tmp_path, capsys):
    export = tmp_path / "calibrated.pt"
    assert results.main(["calibrate", str(reference_model), "--data", str(tiny_data), "--split", "test", "--steps",
                         "4", "--at", "1", "--span", "0.01", "--points", "3", "--out", str(tmp_path / "f.csv"),
                         "--export", str(export)]) == 2
    err = capsys.readouterr().err
    assert "is an original-format model" in err and "init_from" in err and err.count("\n") == 1
    assert not export.exists()


def test_candidate_evaluations_write_the_report_without_plots(tiny_run, tiny_data, tmp_path):
    row = results.long_rollout_row(tiny_run, tiny_data, "test", 6, [1, 6], tmp_path / "candidate")
    assert sorted(p.name for p in (tmp_path / "candidate").iterdir()) == ["report.json"]
    report = results.read_report(tmp_path / "candidate")
    assert report["plots"] == {} and row["rmse_Q_at_6"] == report["rmse_by_step"]["Q"][6]


def test_score_warns_when_the_best_two_climate_scores_are_within_their_sampling_noise(tmp_path, capsys):
    def write(name: str, error: float, std: float | None) -> str:
        spread = None if std is None else {"std": std, "p05": error - 2 * std, "p95": error + 2 * std}
        report = {"mode": "model", "divergent_fraction": 0.0,
                  "autocorr_max_abs_error": {"charge": error, "lattice": error},
                  "autocorr_max_abs_error_bootstrap": {"charge": spread, "lattice": spread}}
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(report))
        return str(tmp_path / name)

    close, best, far = write("close", 0.15, 0.02), write("best", 0.136, 0.02), write("far", 0.30, 0.03)
    assert results.main(["score", far, close, best, "--score", "climate"]) == 0
    captured = capsys.readouterr()
    assert [line.split()[0] for line in captured.out.splitlines()] == ["0.3000", "0.1500", "0.1360"]
    assert captured.err.startswith("note: the best two scores (0.1360 ") and "does not rank them" in captured.err
    assert captured.err.count("\n") == 1
    assert results.main(["score", far, best, "--score", "climate"]) == 0  # 0.164 apart: ranked, no note
    assert capsys.readouterr().err == ""
    older = write("older", 0.14, None)  # a report made before the bootstrap existed: nothing to say
    assert results.main(["score", older, best, "--score", "climate"]) == 0
    assert capsys.readouterr().err == ""


def test_target_counts_the_checks_a_model_meets_against_a_reference(tmp_path, capsys):
    def write(name: str, scale: float, charge: float, steps: int = 1201, split: str = "abc") -> str:
        report = {"mode": "model", "divergent_fraction": 0.0,
                  "data": {"split_sha256": split, "rollouts": 4}, "settings": {"steps": steps - 1},
                  "rmse_by_step": {comp: [scale * (k + 1)] * steps for k, comp in enumerate(results.RMSE_COMPONENTS)},
                  "autocorr_max_abs_error": {"charge": charge, "lattice": 0.01}}
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(report))
        return str(tmp_path / name)

    reference = write("reference", 1e-3, 0.02)
    better, worse = write("better", 0.5e-3, 0.03), write("worse", 2e-3, 0.02)
    assert results.main(["target", better, "--reference", reference]) == 0
    table = capsys.readouterr().out
    # reports without each rollout's errors (made before mse_by_rollout existed) get no interval
    assert "| RMSE P @ step 1200 | 2.00e-03 | 4.00e-03 | 0.500 | yes | — | — |" in table
    assert "| autocorr max abs error, charge | 0.030 | 0.020 | 1.500 | no | — | — |" in table
    assert table.splitlines()[-1].startswith("13/14 checks met")  # ties (the lattice autocorrelation) count as met
    assert results.main(["target", worse, "--reference", reference, "--steps", "100"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("2/6 checks met")
    short = write("short", 0.5e-3, 0.01, steps=601)  # stops before step 1200: those checks are not met
    checks = results.target_checks(results.read_report(short), results.read_report(reference))
    assert sum(results.check_met(value, ref) for _, value, ref in checks) == 10
    other = write("other", 0.5e-3, 0.01, split="def")
    assert results.main(["target", other, "--reference", reference]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "other test set" in err and err.count("\n") == 1


def test_reports_on_two_generations_of_one_split_compare_by_its_values():
    def report(files: str, values: str | None) -> dict:
        data = {"split_sha256": files, "rollouts": 4, **({"split_content_sha256": values} if values else {})}
        return {"data": data, "settings": {"steps": 1200}}

    names = ["a", "b"]
    results.check_same_test_set([report("f1", "v"), report("f2", "v")], names)  # regenerated: files differ
    with pytest.raises(ValueError, match="other test set"):
        results.check_same_test_set([report("f1", "v"), report("f1", "w")], names)
    results.check_same_test_set([report("f1", None), report("f1", "v")], names)  # older report: the files decide
    with pytest.raises(ValueError, match="other test set"):
        results.check_same_test_set([report("f1", None), report("f2", "v")], names)


def test_target_gives_each_rmse_ratio_a_paired_bootstrap_interval_over_the_rollouts(tmp_path, capsys):
    rng = np.random.default_rng(3)
    difficulty = rng.lognormal(0.0, 1.0, 64)  # some rollouts are much harder than others, for both models

    def write(name: str, mse: np.ndarray, rollouts: list[int]) -> str:
        report = {"mode": "model", "divergent_fraction": 0.0, "data": {"split_sha256": "abc", "rollouts": 64},
                  "settings": {"steps": 1200},
                  "rmse_by_step": {comp: [float(np.sqrt(mse.mean()))] * 1201 for comp in results.RMSE_COMPONENTS},
                  "mse_by_rollout": {"steps": [1, 100, 600, 1200], "rollouts": rollouts,
                                     **{comp: [mse.tolist()] * 4 for comp in results.RMSE_COMPONENTS}},
                  "autocorr_max_abs_error": {"charge": 0.02, "lattice": 0.01}}
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(report))
        return str(tmp_path / name)

    def row(out: str, check: str) -> list[str]:
        line = next(line for line in out.splitlines() if line.startswith(f"| {check} |"))
        return [cell.strip() for cell in line.strip("|").split("|")]

    rollouts = list(range(64))
    reference = write("reference", difficulty * 1e-6, rollouts)
    # 1.1x the reference's RMSE on every rollout: lost on every resample (the pairing cancels the rollouts' spread)
    uniform = write("uniform", difficulty * 1.21e-6, rollouts)
    assert results.main(["target", uniform, "--reference", reference]) == 0
    assert row(capsys.readouterr().out, "RMSE Q @ step 600")[3:] == ["1.100", "no", "1.100-1.100", "0.00"]
    # the same errors shuffled over the rollouts: a ratio of 1 whose interval is wide and straddles it
    shuffled = write("shuffled", rng.permutation(difficulty) * 1e-6, rollouts)
    assert results.main(["target", shuffled, "--reference", reference]) == 0
    cells = row(capsys.readouterr().out, "RMSE Q @ step 600")
    low, high = (float(x) for x in cells[5].split("-"))
    assert cells[3:5] == ["1.000", "yes"] and low < 0.9 and high > 1.1 and 0.2 < float(cells[6]) < 0.8
    # on other rollouts (another --rollouts selection) there is nothing to pair: no interval
    other = write("other", difficulty * 1e-6, list(range(1, 65)))
    assert results.main(["target", other, "--reference", reference]) == 0
    assert row(capsys.readouterr().out, "RMSE Q @ step 600")[5:] == ["—", "—"]
