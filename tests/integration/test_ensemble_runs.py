"""Ensembles end to end, started the way users start them: `holstein_dist.train ... ensemble.members=2` with one
member killed (SIGKILL) and resumed, then `holstein_dist.evaluate --checkpoint ENS`, on one rank and on two."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import free_port

from holstein_dist import ensemble, evaluate, results
from holstein_dist.checkpoints import data_signature, load_model, model_payload
from holstein_dist.metrics import RMSE_COMPONENTS
from holstein_dist.report import numeric_differences
from holstein_dist.shards import open_dataset
from holstein_dist.train import load_train_config
from hpc import checkpoint as ckpt

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "train" / "tiny.yaml"
STEPS = 300  # 100 batches per epoch: stages of 1 and 1 x 2 epochs


def train_cmd(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "holstein_dist.train", "--config", str(TINY), f"data={data}", f"run_dir={run_dir}",
            "ensemble.members=2", "curriculum.batches_per_epoch=100", "ckpt_every=10", "val_every=1000", *extra]


def test_two_members_one_killed_and_resumed_then_evaluated(tiny_data, tmp_path, capsys):
    ens = tmp_path / "ens"
    proc = subprocess.Popen(train_cmd(tiny_data, ens), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    # Kill -9 (no checkpoint on the way out) once the second member is under way.
    second = ens / "member-01" / "checkpoints"
    deadline = time.monotonic() + 120
    while not list(second.glob("step-*.pt")):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "member-01 wrote no checkpoint within 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    states = {m["name"]: m for m in ensemble.member_status(ens)}
    assert states["member-00"]["state"] == "finished" and states["member-00"]["step"] == STEPS
    assert states["member-01"]["state"] == "stopped", states  # "running" in the manifest, but nobody holds it
    killed_at = max(int(p.stem.split("-")[1]) for p in second.glob("step-*.pt"))
    assert killed_at < STEPS

    # The same command again: member 0 is done, member 1 resumes from its newest checkpoint.
    again = subprocess.run(train_cmd(tiny_data, ens), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    resumed = re.search(r"resuming from \S+member-01/checkpoints/step-0*(\d+)\.pt at step (\d+)", again.stdout)
    assert resumed and int(resumed.group(2)) >= killed_at, again.stdout[-3000:]
    assert f"steps {STEPS}..{STEPS} of {STEPS}" in again.stdout  # member 0 had nothing left to do
    manifest = json.loads((ens / "ensemble.json").read_text())
    assert [(m["state"], m["step"], m["seed"]) for m in manifest["members"]] == [("finished", STEPS, 0),
                                                                                 ("finished", STEPS, 1)]

    out = tmp_path / "eval"
    assert evaluate.main(["--checkpoint", str(ens), "--data", str(tiny_data), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    members = report["checkpoint"]["members"]
    assert report["checkpoint"]["format"] == "ensemble of 2" and len(members) == 2
    assert members[0]["sha256"] != members[1]["sha256"]  # different seeds, different weights
    section = report["ensemble"]
    assert section["K"] == 2 and [m["name"] for m in section["members"]] == ["member-00", "member-01"]
    # The report's model sections are the ensemble mean's.
    assert section["rmse_by_step"]["ensemble_mean"] == report["rmse_by_step"]
    cal = section["calibration"]
    assert cal["K"] == 2 and set(cal["components"]) == set(RMSE_COMPONENTS)
    for comp in cal["components"].values():
        assert len(comp["coverage_2sigma_by_step"]) == report["settings"]["steps"] + 1
    assert {"spread_vs_error", "reliability"} <= set(report["plots"])
    assert (out / "spread_vs_error.png").stat().st_size > 0 and (out / "reliability.png").stat().st_size > 0
    # Temperature scaling: the per-component scales fitted on one report, fed back with --spread-scale-from,
    # widen each component's spread by its own factor and leave the ensemble mean alone. (On this tiny set
    # some fitted scales are undefined; a report naming them is refused, so they are set by hand here.)
    fitted = {c: comp["fitted_spread_scale"] for c, comp in cal["components"].items()}
    validation = tmp_path / "validation_report.json"
    validation.write_text(json.dumps({"ensemble": {"calibration": {"components": {
        c: {"fitted_spread_scale": None} for c in fitted}}}}))
    assert evaluate.main(["--checkpoint", str(ens), "--data", str(tiny_data), "--out", str(tmp_path / "refused"),
                          "--spread-scale-from", str(validation)]) == 2
    assert "no usable fitted scale for rho_diag" in capsys.readouterr().err
    scales = {c: (v if v else 1.5) for c, v in fitted.items()}
    validation.write_text(json.dumps({"ensemble": {"calibration": {"components": {
        c: {"fitted_spread_scale": v} for c, v in scales.items()}}}}))
    scaled = tmp_path / "eval_scaled"
    assert evaluate.main(["--checkpoint", str(ens), "--data", str(tiny_data), "--out", str(scaled),
                          "--spread-scale-from", str(validation)]) == 0
    again = json.loads((scaled / "report.json").read_text())
    assert again["rmse_by_step"] == report["rmse_by_step"]
    assert again["ensemble"]["calibration"]["spread_scale"] == scales
    for c, scale in scales.items():
        spread = [np.asarray(r["ensemble"]["calibration"]["components"][c]["spread_by_step"], dtype=float)
                  for r in (report, again)]
        np.testing.assert_allclose(spread[1][1:], spread[0][1:] * scale, rtol=1e-9)
    assert results.main(["ensemble", str(out), "--steps", "1", "40"]) == 0
    assert "| RMSE Q @ step 40 |" in capsys.readouterr().out


def write_ensemble(root: Path, models: list[torch.nn.Module], signature: dict) -> None:
    """An ensemble directory holding the given models as its members' best.pt (as training leaves them)."""
    cfg = load_train_config(TINY, [f"run_dir={root}", f"ensemble.members={len(models)}"])
    ensemble.open_ensemble(cfg)
    for i, model in enumerate(models):
        ckpt.atomic_save(model_payload(model, signature), ensemble.member_dir(root, i) / "checkpoints" / "best.pt")
        ensemble.set_member_state(root, i, "finished", step=1)


@pytest.fixture(scope="module")
def shallow_data(tmp_path_factory: pytest.TempPathFactory, make_dataset) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "shallow_L16", ROOT / "configs/data/shallow_L16.yaml",
                        "--no-virtual", "splits.train=1", "splits.val=0", "splits.test=5", "n_steps=40")


def test_two_ranks_write_the_single_process_ensemble_report(tmp_path, shallow_data, reference_model):
    """Ranks share members x rollouts (each rank all members on its rollouts): same report as one process."""
    models = []
    for k in range(3):  # the original model and two perturbed copies: three members that disagree a little
        model = load_model(reference_model)
        with torch.no_grad():
            gen = torch.Generator().manual_seed(k)
            for p in model.parameters():
                p.mul_(1 + 0.02 * k * torch.randn(p.shape, generator=gen))
        models.append(model)
    ens = tmp_path / "ens"
    write_ensemble(ens, models, data_signature(open_dataset(shallow_data).config))
    args = ["--checkpoint", str(ens), "--data", str(shallow_data), "--batch-size", "2", "--max-lag", "25"]
    assert evaluate.main([*args, "--out", str(tmp_path / "one")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "holstein_dist.evaluate", *args, "--out", str(tmp_path / "two")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "SLURM_"))}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    one, two = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("one", "two"))
    assert (one["timing"]["world_size"], two["timing"]["world_size"]) == (1, 2)
    assert one["ensemble"]["K"] == 3 and one["ensemble"]["calibration"]["n_rollouts"] == 5
    # Only float32 rounding inside the CNNs differs (batch composition). Statistics of the members' small
    # disagreements (spread/skill ratios, correlations, a histogram count at a bin edge) amplify it, so the
    # calibration is compared at 1e-3; everything else, the ensemble mean and the members included, at 1e-6.
    differ = numeric_differences(two, one, rtol=1e-6, atol=1e-6)
    assert [key for key in differ if not key.startswith("ensemble.calibration.")] == []
    calibration = [two["ensemble"]["calibration"], one["ensemble"]["calibration"]]
    assert numeric_differences(*calibration, rtol=1e-3, atol=1e-5, ignore=()) == []


def test_members_as_parallel_processes(tiny_data, tmp_path):
    """`ensemble.parallel=2`: one process per member at a time, each with its own log; same manifest."""
    ens = tmp_path / "ens"
    cmd = [sys.executable, "-m", "holstein_dist.train", "--config", str(TINY), f"data={tiny_data}", f"run_dir={ens}",
           "ensemble.members=3", "ensemble.parallel=2"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for i in range(3):
        assert f"member-0{i}: exit 0" in done.stdout
        assert "val rollout error" in (ens / f"member-0{i}.log").read_text()
    assert [(m["state"], m["step"]) for m in ensemble.member_status(ens)] == [("finished", 30)] * 3
