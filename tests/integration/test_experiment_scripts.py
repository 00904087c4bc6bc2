"""The experiments' scripts run end to end (at rehearsal sizes), so the committed results stay reproducible."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from holstein_dist.checkpoints import load_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
@pytest.mark.slow
def test_gpu_budget_script_rehearses_on_cpu(tmp_path):
    """experiments/deep_L32_gpu/run.sh on a small deep L=32 set: pilot, two capped stages, selection by the
    validation climate score, test evaluations and the table, all inside one command."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
           "PYTHON": sys.executable, "WORK": str(tmp_path / "work"), "RESULTS": str(tmp_path / "results"),
           "BUDGET_S": "120", "RESERVE_S": "30", "WORKERS": "1", "DATA_ARGS": "splits.train=2 splits.val=2 "
           "splits.test=2 n_steps=30", "EVAL_STEPS": "20", "AT": "1 5 10", "PILOT_STEPS": "12 4", "MIN_STEPS": "10",
           "BATCH": "4", "TRAIN_ARGS": "num_workers=1 threads=1 val_windows=4 val_n_step=8", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "experiments/deep_L32_gpu/run.sh"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    results = tmp_path / "results"
    times = json.loads((results / "wall_times.json").read_text())
    assert {"generate", "pilot", "train_n1", "select_n1", "train_finetune", "evaluate"} <= set(times)
    assert times["pilot_steps_per_s_n1"] > 0 and times["steps_n1"] >= 10
    for stage in ("n1", "finetune"):
        rows = list(csv.DictReader((results / f"rollout_curve_val_{stage}.csv").open()))
        assert rows and all(0 <= float(r["score"]) <= 3 for r in rows)
    load_model(results / "model.pt")
    table = (results / "results.md").read_text()
    assert table.startswith("| metric | GPU recipe | GPU recipe + --project | CPU experiment's model |")
    assert json.loads((results / "report.json").read_text())["data"]["rollouts"] == 2
