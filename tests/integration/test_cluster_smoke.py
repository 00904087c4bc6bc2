"""The local Slurm cluster (slurm/local/start.sh) is real: batch jobs run, MPI gets a true world
under srun and mpirun, accounting records finished and cancelled jobs, and requeue and preemption
behave as the submitit launcher expects."""

import re
import shlex
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

# Each rank prints its rank and the world size. A launcher that silently starts independent
# singletons would print "rank 0 size 1" twice, so the tests compare the whole set of lines.
WORLD = "from mpi4py import MPI; c = MPI.COMM_WORLD; print(f'rank {c.Get_rank()} size {c.Get_size()}')"
TWO_RANKS = ["rank 0 size 2", "rank 1 size 2"]


def rank_lines(text: str) -> list[str]:
    # Two ranks writing to one job output can interleave without a newline between them
    # ("rank 0 size 2rank 1 size 2"), so find the records rather than split lines.
    return sorted(re.findall(r"rank \d+ size \d+", text))


def test_sbatch_wait_runs_a_batch_script(slurm_jobs):
    result = slurm_jobs.sbatch_wait('echo "job $SLURM_JOB_ID ran on $SLURMD_NODENAME"\n', timeout=60)
    assert result.returncode == 0, result.output
    assert f"job {result.job_id} ran on " in result.output


def test_srun_pmix_gives_mpi4py_a_world_of_two(slurm_jobs):
    proc = slurm_jobs.run(["srun", "-n", "2", "--mpi=pmix", "-t", "2", sys.executable, "-c", WORLD])
    assert proc.returncode == 0, proc.stderr
    assert rank_lines(proc.stdout) == TWO_RANKS


def test_mpirun_in_a_batch_job_gives_mpi4py_a_world_of_two(slurm_jobs, mpirun_cmd):
    command = shlex.join([*mpirun_cmd, "-n", "2", sys.executable, "-c", WORLD])
    result = slurm_jobs.sbatch_wait(command + "\n", "-n", "2", timeout=60)
    assert result.returncode == 0, result.output
    assert rank_lines(result.output) == TWO_RANKS


def test_sacct_lists_finished_jobs(slurm_jobs):
    ok = slurm_jobs.sbatch("true\n")
    failed = slurm_jobs.sbatch("exit 3\n")
    assert slurm_jobs.wait_state(ok, timeout=60) == "COMPLETED"
    assert slurm_jobs.wait_state(failed, timeout=60) == "FAILED"
    exit_code = slurm_jobs.run(["sacct", "-n", "-X", "-P", "-o", "ExitCode", "-j", failed]).stdout.strip()
    assert exit_code == "3:0"


def test_scancel_shows_cancelled_in_sacct(slurm_jobs):
    job = slurm_jobs.sbatch("sleep 300\n")
    slurm_jobs.wait_state(job, ("RUNNING",), timeout=30)
    assert slurm_jobs.run(["scancel", job]).returncode == 0
    assert slurm_jobs.wait_state(job, timeout=30).startswith("CANCELLED")


def test_requeued_job_runs_again(slurm_jobs):
    # The requeued copy starts after AuthInfo's cred_expire (10 s here, 120 s by default).
    script = 'echo "restart ${SLURM_RESTART_COUNT:-0}"\n[ "${SLURM_RESTART_COUNT:-0}" -ge 1 ] || sleep 300\n'
    job = slurm_jobs.sbatch(script, "--requeue", "--open-mode=append")
    slurm_jobs.wait_state(job, ("RUNNING",), timeout=30)
    proc = slurm_jobs.run(["scontrol", "requeue", job])
    assert proc.returncode == 0, proc.stderr
    assert slurm_jobs.wait_state(job, timeout=90) == "COMPLETED"
    assert "restart 0" in slurm_jobs.output(job) and "restart 1" in slurm_jobs.output(job)


def test_urgent_job_preempts_with_the_user_signal(slurm_jobs):
    # --exclusive on both: the urgent job can only preempt this test's own job, never someone else's.
    victim = slurm_jobs.sbatch(
        "trap 'echo got USR2; exit 0' USR2\nfor i in $(seq 300); do sleep 1; done\n",
        "--exclusive", "--signal=B:USR2@60",
    )
    slurm_jobs.wait_state(victim, ("RUNNING",), timeout=30)
    urgent = slurm_jobs.sbatch_wait("echo urgent ran\n", "--partition=urgent", "--exclusive", timeout=60)
    assert urgent.returncode == 0, urgent.output
    assert "got USR2" in slurm_jobs.output(victim)
