"""Fixtures for the real-cluster integration tests.

`slurm_cluster` finds the local Slurm cluster that `slurm/local/start.sh` brings up (through the
`env.sh` it writes) and skips the test when it is not running; `slurm_jobs` submits batch jobs and
waits for them with a bounded timeout; `mpirun_cmd` is the `mpirun` argv prefix that works on this
machine. Nothing here is mocked: every helper calls the real Slurm commands.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

DEFAULT_PREFIX = "/tmp/holstein-slurm"
START_HINT = "local Slurm cluster not running: bash slurm/local/start.sh"
# States after which a job will not run again on its own (sacct prints "CANCELLED by 0").
FINISHED_STATES = (
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT",
)


def _read_env_file(path: Path) -> dict[str, str]:
    """The variables `path` exports (start.sh writes one `export NAME=VALUE` per line)."""
    exported = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, value = words[1].split("=", 1)
            exported[name] = value
    return exported


@pytest.fixture(scope="session")
def slurm_cluster():
    """The environment (a full copy of os.environ plus the cluster's variables) for using the cluster.

    The cluster's variables (SLURM_CONF, ...) are also exported into os.environ for the session, so
    libraries that call sbatch themselves (submitit, dask-jobqueue) find the cluster too.
    """
    prefix = Path(os.environ.get("HOLSTEIN_SLURM_PREFIX", DEFAULT_PREFIX))
    env_file = prefix / "env.sh"
    if not env_file.is_file():
        pytest.skip(f"{START_HINT} (no {env_file})")
    if shutil.which("sinfo") is None:
        pytest.skip(f"{START_HINT} (no sinfo on PATH)")
    added = _read_env_file(env_file)
    env = {**os.environ, **added}
    try:
        probe = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.skip(f"{START_HINT} (sinfo did not answer within 15 s)")
    if probe.returncode != 0:
        pytest.skip(f"{START_HINT} (sinfo: {probe.stderr.strip()})")

    saved = {k: os.environ.get(k) for k in added}
    os.environ.update(added)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@dataclass
class BatchResult:
    job_id: str
    returncode: int  # sbatch --wait's exit status: the job's own, or non-zero if it was cancelled
    output: str  # the job's stdout and stderr


class SlurmJobs:
    """Submit batch jobs to the local cluster and wait for them, always with a deadline.

    Scripts and job output live in `workdir`; job `N` writes `workdir/N.out`.
    """

    def __init__(self, env: dict[str, str], workdir: Path):
        self.env = env
        self.workdir = workdir

    def run(self, argv: list[str], timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
        """Run a Slurm command (or any command) against the cluster; text output captured."""
        return subprocess.run(argv, env=self.env, cwd=self.workdir, capture_output=True, text=True,
                              timeout=timeout, check=check)

    def output(self, job_id: str) -> str:
        path = self.workdir / f"{job_id}.out"
        return path.read_text() if path.exists() else ""

    def _submit_argv(self, script: str, sbatch_args: tuple[str, ...]) -> tuple[list[str], str]:
        name = f"t-{uuid.uuid4().hex[:10]}"  # unique, so a timed-out job can be cancelled by name
        path = self.workdir / f"{name}.sh"
        path.write_text(script if script.startswith("#!") else "#!/bin/bash\n" + script)
        argv = ["sbatch", "--parsable", f"--job-name={name}", f"--output={self.workdir}/%j.out", *sbatch_args]
        return [*argv, str(path)], name

    def sbatch_wait(self, script: str, *sbatch_args: str, timeout: float = 120) -> BatchResult:
        """`sbatch --wait` the script text; on timeout the job is cancelled and the test fails."""
        argv, name = self._submit_argv(script, ("--wait", *sbatch_args))
        try:
            proc = self.run(argv, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.run(["scancel", f"--name={name}"])
            pytest.fail(f"batch job {name} did not finish within {timeout} s (cancelled it)")
        job_id = proc.stdout.strip().split(";")[0]
        if not job_id:
            pytest.fail(f"sbatch failed: {proc.stderr.strip()}")
        return BatchResult(job_id, proc.returncode, self.output(job_id))

    def sbatch(self, script: str, *sbatch_args: str) -> str:
        """Submit the script text without waiting; returns the job id."""
        argv, _ = self._submit_argv(script, sbatch_args)
        proc = self.run(argv, timeout=30)
        if proc.returncode != 0:
            pytest.fail(f"sbatch failed: {proc.stderr.strip()}")
        return proc.stdout.strip().split(";")[0]

    def sacct_state(self, job_id: str) -> str:
        """The job's state in accounting ("" until slurmdbd has heard of it)."""
        proc = self.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id])
        lines = proc.stdout.splitlines()
        return lines[-1].strip() if lines else ""

    def wait_state(self, job_id: str, states: tuple[str, ...] = FINISHED_STATES, timeout: float = 60,
                   poll: float = 0.25) -> str:
        """Poll sacct until the job's state starts with one of `states`; returns that state."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.sacct_state(job_id)
            if state.startswith(states):
                return state
            time.sleep(poll)
        pytest.fail(f"job {job_id} still {state or 'unknown to sacct'} after {timeout} s; wanted {states}")


@pytest.fixture
def slurm_jobs(slurm_cluster, tmp_path) -> SlurmJobs:
    """Job helper bound to the cluster; scripts and their output go to the test's tmp_path."""
    return SlurmJobs(slurm_cluster, tmp_path)


@pytest.fixture(scope="session")
def mpirun_cmd() -> list[str]:
    """The `mpirun` argv prefix that works here (Open MPI refuses root without the flags)."""
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("mpirun not found (apt-get install openmpi-bin, or bash slurm/local/start.sh)")
    cmd = [mpirun]
    if os.geteuid() == 0:
        # --oversubscribe: these machines have 2 cores, tests may start more ranks.
        cmd += ["--allow-run-as-root", "--oversubscribe"]
    return cmd


# --- per-test wall time of the tests that use the cluster, printed at the end of the run ----------
_slurm_durations: dict[str, float] = {}


def pytest_runtest_logreport(report):
    if "slurm" in report.keywords:
        _slurm_durations[report.nodeid] = _slurm_durations.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if not _slurm_durations:
        return
    terminalreporter.section("slurm test durations (setup + call + teardown)")
    for nodeid, seconds in sorted(_slurm_durations.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds:7.2f} s  {nodeid}")
