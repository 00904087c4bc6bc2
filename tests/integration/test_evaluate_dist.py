"""Distributed evaluation: two ranks (torchrun, or srun under slurm/evaluate.sh) must write the
single-process report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port

from holstein_dist import evaluate
from holstein_dist.report import numeric_differences

ROOT = Path(__file__).resolve().parents[2]



@pytest.fixture(scope="module")
def shallow_data(tmp_path_factory: pytest.TempPathFactory, make_dataset) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "shallow_L16", ROOT / "configs/data/shallow_L16.yaml",
                        "--no-virtual", "splits.train=1", "splits.val=0", "splits.test=5", "n_steps=40")


def torchrun_evaluate(nproc: int, args: list[str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), "-m", "holstein_dist.evaluate", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "SLURM_"))}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]




@pytest.mark.integration
def test_two_ranks_write_the_single_process_report(tmp_path: Path, shallow_data: Path, reference_model: Path) -> None:
    model = reference_model
    # 5 rollouts in batches of 2: the ranks get 2 and 3, so batch boundaries differ from one process.
    args = ["--checkpoint", str(model), "--data", str(shallow_data), "--batch-size", "2", "--max-lag", "25"]
    assert evaluate.main([*args, "--out", str(tmp_path / "one")]) == 0
    torchrun_evaluate(2, [*args, "--out", str(tmp_path / "two")])
    one, two = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("one", "two"))
    # Guards against two independent single-process runs that both wrote the file.
    assert (one["timing"]["world_size"], two["timing"]["world_size"]) == (1, 2)
    assert two["physics_baseline"]["trajectory_steps"] == 5 * 40
    # Only float32 rounding inside the CNN differs (thread count, batch composition).
    assert numeric_differences(two, one, rtol=1e-6, atol=1e-6) == []
    assert sorted(two["plots"]) == sorted(one["plots"])
