"""Multi-process training: 2-rank gloo DDP on CPU (spawn with a real TCP store, torchrun), and on the local
Slurm cluster the submitit launcher through a preemption (submitit's USR2). The sbatch script and
submitit's plain and cancelled runs are covered by tests/integration/test_slurm_train.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import free_port

from holstein_dist import train
from holstein_dist.data import open_data
from hpc import checkpoint as ckpt
from hpc import dist

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs/train/tiny.yaml")
pytestmark = pytest.mark.integration





def _clean_env() -> dict[str, str]:
    # Launcher variables of an enclosing job would confuse the launchers under test.
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "SUBMITIT_")) and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}


# --------------------------------------------------------------------------- spawn


def _rank_main(rank: int, world: int, port: int, data: str, run_dir: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    env = dist.init_distributed()
    try:
        helpers = {
            "env": (env.rank, env.world_size, env.is_main, env.device.type),
            "mean": dist.all_reduce_mean(float(rank)),
            "tensor_sum": dist.all_reduce_sum(torch.tensor([1.0, rank])).tolist(),
            "any": (dist.any_rank(rank == 1), dist.any_rank(False)),
            "gathered": dist.gather_objects_to_main({"rank": rank}),
            "broadcast": dist.broadcast_object(f"from {rank}"),
        }
        cfg = train.load_train_config(TINY, [f"data={data}", f"run_dir={run_dir}", "model=small", "threads=1"])
        with ckpt.PreemptionGuard() as guard:
            trainer = train.build_trainer(cfg, env, open_data(data))
            result = trainer.fit(guard)
        params = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        torch.save({"helpers": helpers, "result": result, "params": params}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.shutdown()


def test_two_rank_ddp_keeps_replicas_in_sync(tiny_data, tmp_path):
    """Ranks draw different windows, noise and dropout; DDP's gradient averaging keeps weights identical."""
    run_dir = tmp_path / "run"
    mp.start_processes(_rank_main, args=(2, free_port(), str(tiny_data), str(run_dir), str(tmp_path)),
                       nprocs=2, join=True, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["helpers"]["env"] == (0, 2, True, "cpu") and r1["helpers"]["env"] == (1, 2, False, "cpu")
    assert r0["helpers"]["mean"] == r1["helpers"]["mean"] == 0.5
    assert r0["helpers"]["tensor_sum"] == [2.0, 1.0]
    assert r0["helpers"]["any"] == r1["helpers"]["any"] == (True, False)
    assert r0["helpers"]["gathered"] == [{"rank": 0}, {"rank": 1}] and r1["helpers"]["gathered"] is None
    assert r1["helpers"]["broadcast"] == "from 0"
    assert r0["result"].status == r1["result"].status == "finished" and r0["result"].step == 30
    # Validation is reduced over ranks: both report the same (exact) mean.
    assert r0["result"].best_metric == r1["result"].best_metric
    for key, value in r0["params"].items():
        assert torch.equal(value, r1["params"][key]), key
    saved = ckpt.load_checkpoint(run_dir / "checkpoints" / "step-00000030.pt")
    assert saved["world_size"] == 2 and len(saved["rng"]) == 2
    assert not torch.equal(saved["rng"][0]["torch"], saved["rng"][1]["torch"])
    for key, value in r0["params"].items():
        assert torch.equal(value, saved["model"][key]), key
    # The weights moved: the run trained, so equality above is not the trivial "nothing changed".
    init = train.build_model(train.load_train_config(TINY, ["model=small"]).model, open_data(tiny_data).scales)
    moved = [k for k, v in init.state_dict().items() if not torch.equal(v, r0["params"][k])]
    assert len(moved) > 10


def test_torchrun_runs_the_cli_on_two_ranks(tiny_data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "holstein_dist.train", "--config", TINY, f"data={tiny_data}", f"run_dir={tmp_path}", "max_steps=12"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "on 2 rank(s)" in proc.stdout
    saved = ckpt.load_checkpoint(tmp_path / "checkpoints" / "step-00000012.pt")
    assert saved["world_size"] == 2 and saved["step"] == 12


# --------------------------------------------------------------------------- Slurm


def _wait_for(path: Path, job_state, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s (job: {job_state()})"
        time.sleep(0.1)


def _submit_cmd(tiny_data: Path, tmp_path: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "hpc.submit", "train", "--config", TINY, "--tasks-per-node", "2",
            "--cpus-per-task", "1", "--timeout-min", "10", "--folder", str(tmp_path / "submitit"), "--poll-s", "0.5",
            f"data={tiny_data}", f"run_dir={tmp_path / 'run'}", *overrides]


@pytest.mark.slurm
def test_submit_cli_survives_preemption_and_reports_the_result(tiny_data, tmp_path, slurm_cluster, slurm_jobs):
    """`python -m hpc.submit train` with 2 tasks; USR2 (submitit's warning signal) makes the trainer checkpoint
    and requeue; the waiting client follows the restarted job and reports its final result."""
    cmd = _submit_cmd(tiny_data, tmp_path, "curriculum.batches_per_epoch=50", "ckpt_every=10")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=slurm_cluster, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    job_id = None
    try:
        first = proc.stdout.readline()
        assert first.startswith("submitted train job"), first
        job_id = first.split()[3]
        _wait_for(tmp_path / "run" / "checkpoints" / "step-00000010.pt", lambda: slurm_jobs.sacct_state(job_id))
        slurm_jobs.run(["scancel", "--signal=USR2", job_id])
        out = proc.communicate(timeout=240)[0]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        if job_id:
            slurm_jobs.run(["scancel", job_id], check=False)
    assert proc.returncode == 0, out
    assert f"job {job_id} finished: RunResult(status='finished', step=150" in out
    log = (tmp_path / "submitit" / f"{job_id}_0_log.out").read_text()
    assert "received SIGUSR2" in log and "job requeued" in log and "resuming from" in log
    assert ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000150.pt")["world_size"] == 2
