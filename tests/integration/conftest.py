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
import sys
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


# --- the repository's own commands and slurm/*.sh scripts on the cluster (test_slurm_*.py) -------
# Everything below runs what users run: `sbatch slurm/<script>.sh ...`, `python -m ...`. The only
# test-specific inputs are sbatch flags and environment variables the scripts already document.

REPO = Path(__file__).resolve().parents[2]
TINY_TRAIN_CONFIG = REPO / "configs" / "train" / "tiny.yaml"

# Keep the servers these jobs start on loopback (slurm/local/README.md, "What listens where"):
# Open MPI ranks use shared memory only (the tcp BTL listens on 0.0.0.0); dask-jobqueue binds the
# scheduler and the workers to `lo`, and their HTTP servers (":8787" / ":0" by default, i.e. every
# interface, even without bokeh) to 127.0.0.1.
LOOPBACK_ENV = {
    "OMPI_MCA_btl": "self,vader",
    "OMPI_MCA_oob_tcp_if_include": "lo",
    "DASK_JOBQUEUE__SLURM__INTERFACE": "lo",
    "DASK_JOBQUEUE__SLURM__SCHEDULER_OPTIONS": '{"dashboard_address": "127.0.0.1:0"}',
    "DASK_JOBQUEUE__SLURM__WORKER_EXTRA_ARGS": '["--dashboard-address", "127.0.0.1:0"]',
}


@pytest.fixture(scope="session")
def job_env(slurm_cluster) -> dict[str, str]:
    """The cluster environment plus what the slurm/*.sh scripts read: this interpreter and its venv."""
    env = {k: v for k, v in slurm_cluster.items() if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))}
    env["SLURM_CONF"] = slurm_cluster["SLURM_CONF"]
    env.update(LOOPBACK_ENV)
    env.update(HOLSTEIN_PYTHON=sys.executable, HOLSTEIN_VENV=sys.prefix, PYTHONUNBUFFERED="1",
               SLURM_MPI_TYPE="pmix")
    return env


class ScriptJobs(SlurmJobs):
    """`SlurmJobs` for script files with arguments (slurm/*.sh), plus log polling. Every wait is bounded."""

    def submit(self, script: Path, *args: str, sbatch_args: tuple[str, ...] = (), env: dict | None = None) -> str:
        """`sbatch [sbatch_args] script args...` without waiting; returns the job id."""
        name = f"t-{uuid.uuid4().hex[:10]}"
        argv = ["sbatch", "--parsable", f"--job-name={name}", f"--output={self.workdir}/%j.out", *sbatch_args,
                str(script), *args]
        proc = subprocess.run(argv, env=env or self.env, cwd=self.workdir, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            pytest.fail(f"{shlex.join(argv)} failed: {proc.stderr.strip()}")
        return proc.stdout.strip().split(";")[0]

    def submit_wait(self, script: Path, *args: str, sbatch_args: tuple[str, ...] = (), timeout: float = 120,
                    env: dict | None = None) -> BatchResult:
        """Submit, then wait (sacct) until the job is finished; a job still running at `timeout` is cancelled."""
        job = self.submit(script, *args, sbatch_args=sbatch_args, env=env)
        state = self.wait_finished(job, timeout)
        code = self.run(["sacct", "-n", "-X", "-P", "-o", "ExitCode", "-j", job]).stdout.strip().split(":")[0]
        # Like sbatch --wait: 0 when completed, the script's status when it failed, 1 when killed/cancelled.
        returncode = 0 if state == "COMPLETED" else (int(code) if code.isdigit() and int(code) else 1)
        return BatchResult(job, returncode, self.output(job))

    def wait_finished(self, job: str, timeout: float) -> str:
        """Poll sacct until the job is over; cancel it and fail with its log when it is not by `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.sacct_state(job)
            if state.startswith(FINISHED_STATES):
                return state.split()[0]
            time.sleep(0.5)
        self.run(["scancel", job])
        pytest.fail(f"job {job} not finished after {timeout} s (cancelled it); log:\n{self.output(job)[-3000:]}")

    def wait_for_output(self, job: str, predicate, what: str, timeout: float = 60, poll: float = 0.25) -> str:
        """Poll the job's log until `predicate(log)` is true; fail (and cancel) if the job ends or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output(job)
            if predicate(text):
                return text
            if self.sacct_state(job).startswith(FINISHED_STATES):
                pytest.fail(f"job {job} ended before {what}; log:\n{self.output(job)[-3000:]}")
            time.sleep(poll)
        self.run(["scancel", job])
        pytest.fail(f"no {what} in job {job}'s log after {timeout} s (cancelled it); log:\n{self.output(job)[-3000:]}")


@pytest.fixture
def slurm_scripts(job_env, tmp_path) -> ScriptJobs:
    """Submits slurm/*.sh with arguments under `job_env`; logs go to the test's tmp_path as <jobid>.out."""
    return ScriptJobs(job_env, tmp_path)


