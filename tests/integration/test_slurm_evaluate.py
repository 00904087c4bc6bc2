"""Evaluation on the local Slurm cluster: `sbatch slurm/evaluate.sh ...` with 2 tasks (srun, gloo) must
write the report one plain process writes, to float32 round-off, and must really have run 2 ranks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from holstein_dist.report import numeric_differences

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[2]
EVALUATE_SH = REPO / "slurm" / "evaluate.sh"
TINY_TRAIN = REPO / "configs" / "train" / "tiny.yaml"


@pytest.fixture(scope="module")
def trained_run(tiny_data, tmp_path_factory) -> Path:
    """A short single-process training run on the tiny data: the checkpoint to evaluate."""
    run_dir = tmp_path_factory.mktemp("eval-model") / "run"
    argv = [sys.executable, "-m", "holstein_dist.train", "--config", str(TINY_TRAIN), f"data={tiny_data}",
            f"run_dir={run_dir}", "max_steps=10"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return run_dir


def test_evaluate_sh_two_ranks_write_the_single_process_report(slurm_scripts, trained_run, tiny_data, tmp_path):
    args = ["--checkpoint", str(trained_run), "--data", str(tiny_data), "--device", "cpu"]
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    one = subprocess.run([sys.executable, "-m", "holstein_dist.evaluate", *args, "--out", str(one_dir)],
                         cwd=REPO, capture_output=True, text=True, timeout=180)
    assert one.returncode == 0, one.stderr[-3000:]
    result = slurm_scripts.submit_wait(EVALUATE_SH, *args, "--out", str(two_dir),
                                       sbatch_args=("--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
                                                    "--time=5"), timeout=150)
    assert result.returncode == 0, result.output[-3000:]
    assert "holstein-evaluate: 2 ranks on 1 node(s)" in result.output
    assert "2 rank(s)" in result.output, result.output[-3000:]

    single, double = (json.loads((d / "report.json").read_text()) for d in (one_dir, two_dir))
    # Two independent one-rank processes would both write a world_size 1 report.
    assert (single["timing"]["world_size"], double["timing"]["world_size"]) == (1, 2)
    assert double["mode"] == single["mode"] == "model"
    assert double["data"]["rollouts"] == single["data"]["rollouts"] == 2
    assert double["physics_baseline"]["trajectory_steps"] == single["physics_baseline"]["trajectory_steps"] > 0
    # Every number outside the timing sections agrees to float32 round-off (batch composition differs).
    assert numeric_differences(double, single, rtol=1e-6, atol=1e-6) == []
    assert sorted(double["plots"]) == sorted(single["plots"])
    assert all((two_dir / name).is_file() for name in double["plots"].values())
