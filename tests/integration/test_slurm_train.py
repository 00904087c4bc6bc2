"""Training on the local Slurm cluster, launched the ways users launch it.

* `sbatch --ntasks-per-node=2 --gpus-per-node=0 --cpus-per-task=1 slurm/train_parc.sh CONFIG data=.. run_dir=..`:
  two gloo ranks; the world size is read back from the checkpoint and TensorBoard, not the exit code;
* the same job warned with the script's own signal (SIGUSR1 to the tasks, what `--signal=USR1@120`
  sends): it checkpoints, requeues itself (`scontrol requeue`), and the restarted job resumes from the
  checkpoint and runs to the end;
* `python -m hpc.submit train ...` (submitit) runs the same training and returns; a job cancelled with
  `scancel` while it runs is reported as cancelled instead of being waited on forever.
"""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hpc import checkpoint as ckpt

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[2]
TRAIN_SH = REPO / "slurm" / "train_parc.sh"
TINY = REPO / "configs" / "train" / "tiny.yaml"
TINY_STEPS = 30  # configs/train/tiny.yaml: 10 batches per epoch, stages of 1 and 1 x 2 epochs
# The CPU-only form from the script's header: 2 tasks on one node, no GPUs, one core each.
CPU_FLAGS = ("--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=5")


def checkpoints(run_dir: Path) -> dict[int, Path]:
    return {int(p.stem.split("-")[1]): p for p in (run_dir / "checkpoints").glob("step-*.pt")}


def load(path: Path) -> dict:
    return ckpt.load_checkpoint(path)


def tensorboard_world_size_and_steps(run_dir: Path) -> tuple[float | None, list[int]]:
    """world_size from the run's TensorBoard hparams, and the steps of its train/loss scalars."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    world, steps = None, []
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == "train/loss":
                    steps.append(event.step)
                if value.metadata.plugin_data.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    if data.HasField("session_start_info"):
                        world = data.session_start_info.hparams["world_size"].number_value
    return world, sorted(steps)


def assert_two_rank_run(run_dir: Path, end: int) -> None:
    """The run reached `end` with both ranks: the checkpoint holds one RNG state per rank."""
    found = checkpoints(run_dir)
    assert max(found, default=0) == end, sorted(found)
    last = load(found[end])
    assert last["step"] == end
    assert last["world_size"] == 2 and len(last["rng"]) == 2, "checkpoint written by a world of 1"
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["run_dir"] == str(run_dir)
    world, steps = tensorboard_world_size_and_steps(run_dir)
    assert world == 2, f"TensorBoard hparams world_size is {world}"
    assert steps and steps[-1] == end, steps


def test_train_parc_sh_two_gloo_ranks(slurm_scripts, tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    result = slurm_scripts.submit_wait(TRAIN_SH, str(TINY), f"data={tiny_data}", f"run_dir={run_dir}",
                                       sbatch_args=CPU_FLAGS, timeout=150)
    assert result.returncode == 0, result.output[-3000:]
    assert "(restart 0) on" in result.output and ": 2 task(s);" in result.output
    assert "on 2 rank(s), device cpu" in result.output, result.output[-3000:]
    assert f"step {TINY_STEPS}/{TINY_STEPS} val rollout error" in result.output
    assert_two_rank_run(run_dir, TINY_STEPS)


def test_train_parc_sh_usr1_checkpoints_requeues_and_resumes(slurm_scripts, tiny_data, tmp_path):
    """SIGUSR1 to the tasks mid-run: checkpoint, `scontrol requeue`, restart resumes at that step."""
    run_dir, end = tmp_path / "run", 150  # 50 batches per epoch: ~5 s of steps left when the signal lands
    job = slurm_scripts.submit(TRAIN_SH, str(TINY), f"data={tiny_data}", f"run_dir={run_dir}",
                               "curriculum.batches_per_epoch=50", "ckpt_every=5", "val_every=1000",
                               sbatch_args=CPU_FLAGS)
    # Signal once training is under way (a first periodic checkpoint is on disk).
    deadline = time.monotonic() + 90
    while not checkpoints(run_dir):
        if time.monotonic() > deadline or slurm_scripts.sacct_state(job).startswith(("COMPLETED", "FAILED")):
            slurm_scripts.run(["scancel", job])
            pytest.fail(f"no checkpoint before the deadline or the end; log:\n{slurm_scripts.output(job)[-3000:]}")
        time.sleep(0.2)
    # Without --batch/--full, scancel signals the job's steps: the python ranks, as --signal=USR1@120 does.
    assert slurm_scripts.run(["scancel", "--signal=USR1", job]).returncode == 0
    state = slurm_scripts.wait_finished(job, timeout=150)  # includes the ~11 s requeue hold (cred_expire)
    log = slurm_scripts.output(job)
    assert state == "COMPLETED", log[-3000:]

    assert "received SIGUSR1" in log, log[-3000:]
    stopped = re.search(r"stopped at step (\d+) by a signal; checkpoint written; job requeued", log)
    assert stopped, log[-3000:]
    at = int(stopped.group(1))
    assert 0 < at < end
    first, _, second = log.partition("(restart 1) on")
    assert second, f"the job did not run a second time; log:\n{log[-3000:]}"
    assert re.search(rf"resuming from \S+step-0*{at}\.pt at step {at}\b", second), second[:2000]
    assert f"steps {at}..{end} of {end}" in second
    after = [int(s) for s in re.findall(r"^step (\d+)/\d+ ", second, re.M)]
    assert after and min(after) > at and after[-1] == end, after  # continued, no restart from step 0
    history = slurm_scripts.run(["sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", job]).stdout.split()
    assert history == ["REQUEUED", "COMPLETED"], history
    assert_two_rank_run(run_dir, end)


def submit_cli(folder: Path, run_dir: Path, data: Path, *overrides: str) -> list[str]:
    """`python -m hpc.submit train --config ... [options] KEY=VALUE...`, as its docstring shows."""
    return [sys.executable, "-m", "hpc.submit", "train", "--config", str(TINY), "--tasks-per-node", "2",
            "--cpus-per-task", "1", "--timeout-min", "5", "--folder", str(folder), "--poll-s", "1",
            f"data={data}", f"run_dir={run_dir}", *overrides]


def test_submitit_two_task_training_returns(job_env, tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    argv = submit_cli(tmp_path / "submitit", run_dir, tiny_data)  # a fresh folder: job ids repeat after wipes
    done = subprocess.run(argv, env=job_env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    output = done.stdout + done.stderr
    job = re.search(r"submitted train job (\d+) \(slurm\)", output)
    assert job, output
    assert done.returncode == 0, output[-3000:]
    assert f"job {job.group(1)} finished" in output
    assert_two_rank_run(run_dir, TINY_STEPS)


def test_submitit_cancelled_job_is_reported_not_awaited(slurm_jobs, job_env, tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    argv = submit_cli(tmp_path / "submitit", run_dir, tiny_data, "curriculum.batches_per_epoch=100000")
    proc = subprocess.Popen(argv, env=job_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    job_id = None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "hpc.submit printed nothing within 60 s"
        first = proc.stdout.readline()  # "submitted train job N (slurm); log: ..."
        job = re.search(r"submitted train job (\d+)", first)
        assert job, first
        job_id = job.group(1)
        slurm_jobs.wait_state(job_id, ("RUNNING",), timeout=60)
        # Cancel while the ranks train (a first checkpoint exists), not while python starts.
        deadline = time.monotonic() + 90
        while not checkpoints(run_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert slurm_jobs.run(["scancel", job_id]).returncode == 0
        cancelled = time.monotonic()
        rest, _ = proc.communicate(timeout=90)
        waited = time.monotonic() - cancelled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if job_id is not None:
            slurm_jobs.run(["scancel", job_id])  # no-op when it is already over
    assert slurm_jobs.wait_state(job_id, timeout=30).startswith("CANCELLED")
    lines = rest.strip().splitlines()
    assert proc.returncode != 0, rest
    assert lines and "cancel" in lines[-1].lower(), f"last line does not say cancelled: {rest}"
    assert waited < 60, f"hpc.submit took {waited:.0f} s to notice the cancellation"


def assert_finished_ensemble(run_dir: Path, members: int) -> dict:
    manifest = json.loads((run_dir / "ensemble.json").read_text())
    assert [(m["name"], m["state"], m["step"]) for m in manifest["members"]] == [
        (f"member-{i:02d}", "finished", TINY_STEPS) for i in range(members)]
    for i in range(members):
        assert load(run_dir / f"member-{i:02d}" / "checkpoints" / "best.pt")["config"]["seed"] == i
    return manifest


def test_submitit_ensemble_is_one_job_array(job_env, tiny_data, tmp_path):
    """`python -m hpc.submit ensemble --members 2`: one array job, task i trains member i."""
    run_dir = tmp_path / "ens"
    argv = [sys.executable, "-m", "hpc.submit", "ensemble", "--members", "2", "--config", str(TINY),
            "--cpus-per-task", "1", "--timeout-min", "5", "--folder", str(tmp_path / "submitit"), "--poll-s", "1",
            f"data={tiny_data}", f"run_dir={run_dir}"]
    done = subprocess.run(argv, env=job_env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    jobs = re.findall(r"submitted ensemble job (\d+)_(\d+) \(slurm\)", output)
    assert len(jobs) == 2 and jobs[0][0] == jobs[1][0] and sorted(t for _, t in jobs) == ["0", "1"], output
    manifest = assert_finished_ensemble(run_dir, 2)
    assert sorted(m["job"] for m in manifest["members"]) == [f"{jobs[0][0]}_0", f"{jobs[0][0]}_1"]


def test_train_ensemble_sh_array_of_two(slurm_scripts, tiny_data, tmp_path):
    """`sbatch --array=0-1 slurm/train_ensemble.sh CONFIG ... ensemble.members=2`."""
    run_dir = tmp_path / "ens"
    job = slurm_scripts.submit(REPO / "slurm" / "train_ensemble.sh", str(TINY), f"data={tiny_data}",
                               f"run_dir={run_dir}", "ensemble.members=2",
                               sbatch_args=("--array=0-1", "--ntasks-per-node=1", "--gpus-per-node=0",
                                            "--cpus-per-task=1", "--time=5"))
    for task in ("0", "1"):
        assert slurm_scripts.wait_finished(f"{job}_{task}", timeout=150) == "COMPLETED"
    manifest = assert_finished_ensemble(run_dir, 2)
    assert sorted(m["job"] for m in manifest["members"]) == [f"{job}_0", f"{job}_1"]
