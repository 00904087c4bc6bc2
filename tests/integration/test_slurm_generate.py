"""Dataset generation on the local Slurm cluster, launched the ways users launch it.

* `sbatch -n 2 slurm/generate.sh CONFIG --out DIR`: the script's `srun` (pmix) starts 2 MPI ranks;
* `mpirun -n 2 python -m holstein_dist.generate --backend mpi` inside a 2-task batch job;
* `python -m holstein_dist.generate --dask-slurm`: dask-jobqueue submits the Dask workers as Slurm jobs.

Each must write the dataset the serial backend writes (`tiny_data`), bit for bit, and each must have
run with a world of 2: a launcher/MPI mismatch would start two independent rank-0 processes, so the
world size is read from the run record in manifest.json and the log, never inferred from exit codes.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from helpers import dataset_arrays

from holstein_dist import shards as sh

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[2]
GENERATE_SH = REPO / "slurm" / "generate.sh"
TINY = REPO / "configs" / "data" / "tiny.yaml"
# One trajectory per shard: 8 tasks, so both ranks/workers get some (the manifest records who did each).
SMALL_SHARDS = "shard_size=1"



@pytest.fixture(scope="module")
def reference(tiny_data) -> dict[tuple[str, str], np.ndarray]:
    return dataset_arrays(tiny_data)


def assert_bit_identical(reference: dict, out: Path) -> None:
    got = dataset_arrays(out)
    assert got.keys() == reference.keys()
    for key, want in reference.items():
        assert got[key].dtype == want.dtype, key
        np.testing.assert_array_equal(got[key], want, err_msg=str(key))  # bit-identical, not close


def last_run(out: Path) -> dict:
    manifest = json.loads((out / sh.MANIFEST).read_text())
    assert manifest["complete"], "the dataset is not complete"
    return manifest["runs"][-1] | {"shard_workers": {e["worker"] for e in manifest["shards"]}}


def assert_mpi_world_of_two(out: Path, log: str) -> None:
    run = last_run(out)
    assert (run["backend"], run["workers"]) == ("mpi", 2), run
    assert "running on mpi, 2 ranks" in log, log[-3000:]
    # Both ranks integrated shards (rank 0 coordinates and computes; shards name host:pid).
    assert len(run["shard_workers"]) == 2, run["shard_workers"]


def test_generate_sh_srun_two_mpi_ranks_bit_identical(slurm_scripts, reference, tmp_path):
    """`sbatch -n 2 slurm/generate.sh tiny.yaml --out DIR`: srun --mpi=pmix ranks reproduce the serial data."""
    out = tmp_path / "srun"
    result = slurm_scripts.submit_wait(GENERATE_SH, str(TINY), "--out", str(out), SMALL_SHARDS,
                                       sbatch_args=("--ntasks=2", "--time=5"), timeout=150)
    assert result.returncode == 0, result.output[-3000:]
    assert "holstein-generate: 2 ranks on 1 node(s)" in result.output
    assert_mpi_world_of_two(out, result.output)
    assert_bit_identical(reference, out)


def test_mpirun_two_ranks_in_a_batch_job_bit_identical(slurm_jobs, job_env, mpirun_cmd, reference, tmp_path):
    """`mpirun -n 2 python -m holstein_dist.generate --backend mpi` inside a 2-task allocation."""
    out = tmp_path / "mpirun"
    command = [*mpirun_cmd, "-n", "2", sys.executable, "-m", "holstein_dist.generate", "--config", str(TINY),
               "--out", str(out), "--backend", "mpi", SMALL_SHARDS]
    jobs = type(slurm_jobs)(job_env, tmp_path)  # the job needs job_env's MPI settings
    result = jobs.sbatch_wait(shlex.join(command) + "\n", "--ntasks=2", "--time=5", timeout=150)
    assert result.returncode == 0, result.output[-3000:]
    assert_mpi_world_of_two(out, result.output)
    assert_bit_identical(reference, out)


def sacct_jobs_named(jobs, name: str, expect: int, timeout: float = 30) -> list[str]:
    """Ids of the jobs called `name` in accounting; records reach slurmdbd a moment after the jobs start."""
    deadline = time.monotonic() + timeout
    while True:
        found = jobs.run(["sacct", "-n", "-X", "-P", "-o", "JobID", f"--name={name}"]).stdout.split()
        if len(found) >= expect or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_dask_workers_as_slurm_jobs_bit_identical(slurm_scripts, job_env, reference, tmp_path):
    """`--dask-slurm --workers 2`: two dask-jobqueue worker jobs compute every shard; same bits."""
    out = tmp_path / "dask-slurm"
    job_name = f"dask-{uuid.uuid4().hex[:8]}"  # to find this test's worker jobs in sacct
    env = {**job_env, "DASK_JOBQUEUE__SLURM__NAME": job_name}
    argv = [sys.executable, "-m", "holstein_dist.generate", "--config", str(TINY), "--out", str(out),
            "--dask-slurm", "--workers", "2", "--slurm-cores", "1", "--slurm-memory", "1GB",
            "--slurm-walltime", "00:05:00", SMALL_SHARDS]
    try:
        done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        slurm_scripts.run(["scancel", f"--name={job_name}"])
        pytest.fail("generate --dask-slurm did not finish within 180 s (cancelled its worker jobs)")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "running on dask SLURMCluster, 2 workers in jobs of 1" in done.stderr
    run = last_run(out)
    assert (run["backend"], run["workers"]) == ("dask", 2), run
    # The workers were Slurm jobs (which of the two computed what depends on when each started).
    worker_jobs = sacct_jobs_named(slurm_scripts, job_name, expect=2)
    assert len(worker_jobs) == 2, f"expected 2 dask worker jobs named {job_name}, sacct has {worker_jobs}"
    # job_env's DASK_JOBQUEUE__SLURM__INTERFACE=lo kept the scheduler on loopback; the workers reached it there.
    worker_logs = [slurm_scripts.workdir / f"slurm-{job}.out" for job in worker_jobs]
    assert any("Registered to:" in p.read_text() and "tcp://127.0.0.1:" in p.read_text()
               for p in worker_logs if p.exists()), [p.name for p in slurm_scripts.workdir.iterdir()]
    assert_bit_identical(reference, out)
