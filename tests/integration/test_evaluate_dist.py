"""Distributed evaluation: two ranks (torchrun, or srun under slurm/evaluate.sh) must write the
single-process report."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from holstein_dist import evaluate
from holstein_dist.generate import main as generate_main
from holstein_dist.report import numeric_differences

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shallow_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "shallow_L16"
    rc = generate_main(["--config", str(ROOT / "configs/data/shallow_L16.yaml"), "--out", str(out), "--backend",
                        "serial", "--no-virtual", "splits.train=1", "splits.val=0", "splits.test=5", "n_steps=40"])
    assert rc == 0
    return out


def torchrun_evaluate(nproc: int, args: list[str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), "-m", "holstein_dist.evaluate", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "SLURM_"))}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def reference_model(pretrained_dir: Path) -> Path:
    model = pretrained_dir / "tiny-quench_0p5_0p8-L_16"
    if not model.is_dir():
        pytest.skip(f"reference model {model} not found")
    return model


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


@pytest.mark.integration
@pytest.mark.slurm
def test_sbatch_script_evaluates_with_two_srun_ranks(slurm_jobs: Any, tmp_path: Path, shallow_data: Path,
                                                     reference_model: Path) -> None:
    out = tmp_path / "eval"
    # The real script with its own #SBATCH header; only the size of the job and the interpreter are chosen here.
    proc = slurm_jobs.run([
        "sbatch", "--parsable", "--wait", "--ntasks-per-node=2", "--cpus-per-task=1", f"--chdir={ROOT}",
        f"--output={slurm_jobs.workdir}/%j.out", f"--export=ALL,HOLSTEIN_PYTHON={sys.executable}",
        str(ROOT / "slurm" / "evaluate.sh"), "--checkpoint", str(reference_model), "--data", str(shallow_data),
        "--out", str(out), "--steps", "20",
    ], timeout=180)
    job_id = proc.stdout.strip().split(";")[0]
    assert proc.returncode == 0, slurm_jobs.output(job_id)[-3000:] + proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["timing"]["world_size"] == 2
    assert report["data"]["rollouts"] == 5 and report["divergent_fraction"] == 0.0
    assert "holstein-evaluate: 2 ranks on 1 node(s), 1 threads each" in slurm_jobs.output(job_id)
