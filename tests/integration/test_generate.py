"""End-to-end generation of the tiny config: physics, schema, backends, resume and faults.

Every run here integrates real trajectories and writes real shards; backends run real processes
(Dask LocalCluster workers, mpirun ranks) and faults are real process deaths and signals. The
Slurm launchers (slurm/generate.sh, --dask-slurm) are exercised in test_slurm_generate.py.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import h5py
import numpy as np
import pytest
from helpers import dataset_arrays

import holstein_dist
from holstein_dist import generate, physics
from holstein_dist import shards as sh
from holstein_dist.config import load_config
from hpc.fanout import DaskFanout
from hpc.files import LOCK_NAME, file_sha256, is_temp_name

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "data" / "tiny.yaml"
# More, smaller shards for the interruption tests: a signal then lands between shards with room to spare.
MANY_SHARDS = ["splits.train=16", "shard_size=1", "n_steps=120"]

# Dask ships the fault-injecting task below to its workers by value (this module is not importable there).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def cli(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "holstein_dist.generate", "--config", str(TINY), "--out", str(out), *args]


def run_cli(out: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cli(out, *args), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def generate_serial(out: Path, *overrides: str) -> generate.RunSummary:
    cfg = load_config(sh.DataConfig, TINY, overrides)
    return generate.run(cfg, out, generate.Fanout(), interactive=False)



def assert_same_data(a: Path | dict, b: Path) -> None:
    left = a if isinstance(a, dict) else dataset_arrays(a)
    right = dataset_arrays(b)
    assert left.keys() == right.keys()
    for key in left:
        assert left[key].dtype == right[key].dtype, key
        np.testing.assert_array_equal(left[key], right[key], err_msg=str(key))  # bit-identical, not close


def temporaries(root: Path) -> list[Path]:
    return [p for d in (root, root / sh.SHARD_DIR) for p in d.iterdir() if is_temp_name(p)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The tiny dataset made serially in this process: what every other run must reproduce bit for bit."""
    out = tmp_path_factory.mktemp("reference") / "tiny"
    generate_serial(out)
    return out


@pytest.fixture(scope="module")
def reference_arrays(reference) -> dict:
    return dataset_arrays(reference)


@pytest.fixture(scope="module")
def many_shards_arrays(tmp_path_factory) -> dict:
    """Reference data of the MANY_SHARDS variant (20 one-trajectory shards)."""
    out = tmp_path_factory.mktemp("many") / "tiny"
    generate_serial(out, *MANY_SHARDS)
    return dataset_arrays(out)


def copy_of(reference: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    (out / LOCK_NAME).unlink()
    return out


# ----------------------------------------------------------------------------- content


def test_trajectory_equals_independent_integration(reference):
    """A stored trajectory is the reference RK4 (physics.evolve, float64) rounded to float32, exactly."""
    ds = sh.open_dataset(reference)
    cfg = ds.config
    split = ds.split("val")
    k = cfg.split_start("val") + 1
    got = split.read(1, keys=physics.STATE_KEYS + sh.MID_KEYS + ("t0", "traj_id"))
    rho, Q, P, phase = generate.initial_conditions(cfg, k)
    assert got["traj_id"] == k and got["t0"] == (cfg.transient_steps + phase) * cfg.dt
    state = physics.evolve(rho, Q, P, g=cfg.g_f, n_steps=cfg.transient_steps + phase)
    half = cfg.save_interval // 2
    for t in range(cfg.n_snapshots):
        for key, x in zip(physics.STATE_KEYS, state):
            np.testing.assert_array_equal(got[key][t], x.astype(got[key].dtype), err_msg=f"{key}[{t}]")
        if t < cfg.n_steps:
            state = physics.evolve(*state, g=cfg.g_f, n_steps=half)
            for key, x in zip(sh.MID_KEYS, state):
                np.testing.assert_array_equal(got[key][t], x.astype(got[key].dtype), err_msg=f"{key}[{t}]")
            state = physics.evolve(*state, g=cfg.g_f, n_steps=half)


def test_schema_manifest_and_invariants(reference):
    ds = sh.open_dataset(reference, verify=True)
    cfg, m = ds.config, ds.manifest
    assert m.complete and m.seed == cfg.seed == 7 and m.software_version == holstein_dist.__version__
    assert [(e.file, e.traj_start, e.traj_stop) for e in m.shards] == [
        ("shards/train-00000.h5", 0, 2), ("shards/train-00001.h5", 2, 4), ("shards/val-00000.h5", 4, 6),
        ("shards/test-00000.h5", 6, 8)]
    assert sorted(p.name for p in (reference / sh.SHARD_DIR).iterdir()) == [
        "test-00000.h5", "train-00000.h5", "train-00001.h5", "val-00000.h5"]
    for e in m.shards:
        path = reference / e.file
        assert e.bytes == path.stat().st_size and e.sha256 == file_sha256(path)
        with h5py.File(path) as f:
            assert f["rho"].shape == (2, 41, 16, 16) and f["rho"].dtype == np.complex64
            assert f["P_mid"].shape == (2, 40, 16) and f["P_mid"].dtype == np.float32
            assert f["rho"].chunks == (1, 17, 16, 16)
            assert f.attrs["L"] == 16 and f.attrs["g_f"] == 1.0
            assert f.attrs["software_version"] == holstein_dist.__version__
            assert all(f[key].fletcher32 for key in f)  # every dataset checksummed per chunk
            assert f.attrs["transient_steps"] == 128 and f.attrs["splits.train"] == 4 and "created" in f.attrs
    for name in ds.splits:
        data = ds.split(name).read_many(range(len(ds.split(name))), keys=physics.STATE_KEYS + ("energy", "t0"))
        phase = np.rint(data["t0"] / cfg.dt).astype(int) - cfg.transient_steps
        assert ((0 <= phase) & (phase <= cfg.max_phase)).all()
        # float64 integration: the stored energy per site is conserved to round-off
        assert np.ptp(data["energy"], axis=1).max() < 1e-12
        # recomputed from the single-precision snapshots it is constant to float32 rounding
        e32 = physics.energy(*(data[k].astype(np.result_type(data[k], np.float64)) for k in physics.STATE_KEYS),
                             g=cfg.g_f) / cfg.L
        assert np.abs(e32 - data["energy"]).max() < 1e-6
        trace = np.trace(data["rho"], axis1=-2, axis2=-1).real
        np.testing.assert_allclose(trace, cfg.L / 2, atol=1e-5)
    with h5py.File(reference / "val.h5") as f:  # the virtual view stitches the shards
        np.testing.assert_array_equal(f["Q"][:], ds.split("val").read_many([0, 1], keys=("Q",))["Q"])


def test_scales_equal_brute_force_maxima(reference):
    ds = sh.open_dataset(reference)
    train = ds.split("train")
    data = train.read_many(range(len(train)), keys=physics.STATE_KEYS + sh.MID_KEYS)
    up = {k: v.astype(np.result_type(v, np.float64)) for k, v in data.items()}
    derivative = physics.derivatives(up["rho_mid"], up["Q_mid"], up["P_mid"], g=ds.g_f)
    for key, d in zip(physics.STATE_KEYS, derivative):
        assert ds.scales[key] == np.abs(up[key]).max()
        assert ds.scales[f"d{key}"] == np.abs(d).max()
        assert ds.scales[f"delta_{key}"] == np.abs(np.diff(up[key], axis=1)).max()
    assert all(v > 0 for v in ds.scales.values())


def test_shard_size_does_not_change_the_data(reference_arrays, tmp_path):
    """Each trajectory gets the same bits whether integrated in a batch of 3, 2 or 1."""
    generate_serial(tmp_path / "s3", "shard_size=3")
    assert_same_data(reference_arrays, tmp_path / "s3")


# ----------------------------------------------------------------------------- backends


def test_dask_two_workers_bit_identical(reference_arrays, tmp_path):
    out = tmp_path / "dask"
    done = run_cli(out, "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert "trajectory-steps/s on 2 worker(s)" in done.stderr
    assert_same_data(reference_arrays, out)
    run = json.loads((out / sh.MANIFEST).read_text())["runs"][-1]
    assert (run["backend"], run["workers"]) == ("dask", 2)


def dask_cli(kind: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"distributed.cli.dask_{kind}", *args]


def test_existing_dask_scheduler_bit_identical(reference_arrays, tmp_path):
    """--dask-scheduler-file: a scheduler and workers started apart from generate, as on a cluster."""
    sched = tmp_path / "scheduler.json"
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    procs = [subprocess.Popen(dask_cli("scheduler", "--scheduler-file", str(sched), "--host", "127.0.0.1",
                                       "--port", "0", "--no-dashboard"), **quiet)]
    try:
        deadline = time.monotonic() + 60
        while not sched.exists():
            assert time.monotonic() < deadline, "the Dask scheduler did not start"
            time.sleep(0.05)
        procs.append(subprocess.Popen(dask_cli("worker", "--scheduler-file", str(sched), "--nworkers", "2",
                                               "--nthreads", "1", "--no-dashboard"), **quiet))
        out = tmp_path / "external"
        done = run_cli(out, "--dask-scheduler-file", str(sched))
        assert done.returncode == 0, done.stderr
        assert f"dask scheduler from {sched}" in done.stderr
        assert_same_data(reference_arrays, out)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(30)


def mpirun_command(n: int) -> list[str]:
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("mpirun not found: install Open MPI (apt-get install -y openmpi-bin libopenmpi-dev)")
    flags = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return [mpirun, *flags, "-n", str(n)]


def test_mpi_two_ranks_bit_identical(many_shards_arrays, tmp_path):
    out = tmp_path / "mpi"
    done = subprocess.run(mpirun_command(2) + cli(out, "--backend", "mpi", *MANY_SHARDS), capture_output=True,
                          text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert_same_data(many_shards_arrays, out)
    manifest = json.loads((out / sh.MANIFEST).read_text())
    assert (manifest["runs"][-1]["backend"], manifest["runs"][-1]["workers"]) == ("mpi", 2), "world size must be 2"
    workers = {e["worker"] for e in manifest["shards"]}
    assert len(workers) == 2, f"both ranks must compute (rank 0 too), got {workers}"
    assert done.stderr.count("[generate] done:") == 1, "only rank 0 reports"


def kill_own_process_once(task: generate.ShardTask, marker: str, delay_s: float) -> generate.ShardResult:
    """The first task to claim ``marker`` SIGKILLs its own worker process while it writes its shard."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return generate.compute_shard(task)
    threading.Timer(delay_s, os.kill, (os.getpid(), signal.SIGKILL)).start()
    generate.compute_shard(task)
    time.sleep(60)  # never return: the process dies before any result leaves it
    raise AssertionError("the worker process should have been killed")


def test_dask_worker_killed_mid_run_is_retried(reference_arrays, tmp_path):
    out, marker = tmp_path / "killed", tmp_path / "killed-once"
    cfg = load_config(sh.DataConfig, TINY)
    task = functools.partial(kill_own_process_once, marker=str(marker), delay_s=0.02)
    with DaskFanout.local(2) as fanout:
        summary = generate.run(cfg, out, fanout, task=task, interactive=False)
    assert marker.exists(), "the fault was not injected"
    assert summary.shards_done == 4
    assert temporaries(out) == [], "the dead worker's partial file must be cleaned up"
    assert_same_data(reference_arrays, out)


# MPI fan-out on its own: 3 ranks, fewer/more tasks than ranks, and a task that raises on some rank.
FANOUT_SCRIPT = """
import sys, time
from hpc.fanout import MPIFanout

def square(x):
    time.sleep(0.02)
    if x == int(sys.argv[1]):
        raise ValueError(f"bad task {x}")
    return x * x

with MPIFanout() as fan:
    if fan.is_coordinator:
        print("results", sorted(r for _, r in fan.map_unordered(square, list(range(int(sys.argv[2]))))))
    else:
        fan.serve(square)
"""


@pytest.mark.parametrize("fail, n_tasks", [(-1, 0), (-1, 1), (-1, 12), (7, 12)])
def test_mpi_fanout_collects_every_result_or_reports_the_failure(tmp_path, fail, n_tasks):
    script = tmp_path / "fanout_script.py"
    script.write_text(FANOUT_SCRIPT)
    done = subprocess.run(mpirun_command(3) + [sys.executable, str(script), str(fail), str(n_tasks)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    if fail < 0:
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"results {[i * i for i in range(n_tasks)]}"
    else:
        assert done.returncode != 0 and "results" not in done.stdout
        assert "task 7 failed on MPI rank" in done.stderr and "ValueError: bad task 7" in done.stderr


def fail_on_second_train_shard(task: generate.ShardTask) -> generate.ShardResult:
    if task.spec.file == "shards/train-00001.h5":
        raise RuntimeError("disk on fire")
    return generate.compute_shard(task)


def test_failed_task_leaves_a_resumable_directory(reference_arrays, tmp_path):
    out = tmp_path / "failed"
    cfg = load_config(sh.DataConfig, TINY)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate.run(cfg, out, generate.Fanout(), task=fail_on_second_train_shard, interactive=False)
    manifest = json.loads((out / sh.MANIFEST).read_text())
    assert [e["status"] for e in manifest["shards"]] == ["complete", "pending", "pending", "pending"]
    assert sorted(p.name for p in (out / sh.SHARD_DIR).iterdir()) == ["train-00000.h5"]
    summary = generate_serial(out)
    assert (summary.shards_done, summary.shards_skipped) == (3, 1)
    assert_same_data(reference_arrays, out)


# ----------------------------------------------------------------------------- resume and faults


def wait_for_complete_shards(out: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"generate exited before {n} shards were done: {proc.stderr.read()}"
        try:
            done = sum(e["status"] == "complete" for e in json.loads((out / sh.MANIFEST).read_text())["shards"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            done = 0
        if done >= n:
            return done
        time.sleep(0.005)
    raise AssertionError(f"{n} shards not complete within {timeout} s")


def assert_no_partial_shard(out: Path, n_snapshots: int = 121) -> None:
    """Every visible shard file is complete: right shapes, readable to the last snapshot."""
    for path in (out / sh.SHARD_DIR).glob("*.h5"):
        with h5py.File(path) as f:
            assert f["rho"].shape[1] == n_snapshots and f["energy"].shape == (1, n_snapshots), path
            assert np.isfinite(f["Q"][:, -1]).all() and np.isfinite(f["energy"][:]).all()


def test_interrupt_and_kill_then_resume(many_shards_arrays, tmp_path):
    out = tmp_path / "interrupted"
    args = ("--backend", "serial", *MANY_SHARDS)

    # A test run started in the background (`cmd &` in a script) inherits SIGINT as ignored, and so would the
    # generator: give it the default disposition, as a terminal's foreground process has.
    proc = subprocess.Popen(cli(out, *args), stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = wait_for_complete_shards(out, 2, proc)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "re-run the same command to resume" in err, err[-3000:]
    manifest = json.loads((out / sh.MANIFEST).read_text())
    recorded = sum(e["status"] == "complete" for e in manifest["shards"])
    assert first <= recorded < len(manifest["shards"])
    assert_no_partial_shard(out)

    proc = subprocess.Popen(cli(out, *args), stderr=subprocess.PIPE, text=True, cwd=ROOT)
    wait_for_complete_shards(out, recorded + 2, proc)
    proc.kill()  # SIGKILL: no cleanup at all
    proc.communicate(timeout=60)
    assert_no_partial_shard(out)

    done = run_cli(out, *args)
    assert done.returncode == 0, done.stderr
    assert "already complete" in done.stderr and temporaries(out) == []
    assert_same_data(many_shards_arrays, out)


def test_corrupt_and_missing_shards_are_regenerated(reference, reference_arrays, tmp_path):
    out = copy_of(reference, tmp_path)
    corrupt, missing = out / "shards" / "train-00001.h5", out / "shards" / "test-00000.h5"
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2: len(data) // 2 + 8] = bytes(8 * [0x5A])
    corrupt.write_bytes(bytes(data))
    missing.unlink()
    stale = out / "shards" / ".val-00000.h5.123-abcd.tmp"
    stale.write_bytes(b"half a shard")
    untouched = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.h5") if p != corrupt}
    done = run_cli(out, "--backend", "serial")
    assert done.returncode == 0, done.stderr
    assert "train-00001.h5 is missing or corrupt" in done.stderr and "test-00000.h5 is missing" in done.stderr
    assert "2 shard(s) to generate, 2 already complete" in done.stderr
    assert not stale.exists()
    assert {p: (out / "shards" / p).stat().st_mtime_ns for p in untouched} == untouched
    assert_same_data(reference_arrays, out)


def test_complete_dataset_is_left_alone(reference, tmp_path):
    out = copy_of(reference, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.h5")}
    done = run_cli(out, "--backend", "serial")
    assert done.returncode == 0 and "done: all 4 shards were complete" in done.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.h5")} == before


def test_different_parameters_are_refused(reference, tmp_path):
    out = copy_of(reference, tmp_path)
    manifest = (out / sh.MANIFEST).read_bytes()
    done = run_cli(out, "--backend", "serial", "n_steps=41", "splits.val=3")
    assert done.returncode == 2
    assert done.stderr == (f"error: {out} holds a dataset made with different parameters (n_steps: 40 != 41; "
                           "splits.val: 2 != 3); use a new --out or delete it\n")
    assert (out / sh.MANIFEST).read_bytes() == manifest


def test_foreign_directory_is_refused(tmp_path):
    out = tmp_path / "somebody-elses"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    done = run_cli(out, "--backend", "serial")
    assert done.returncode == 2 and "is not empty (notes.txt) and has no manifest.json" in done.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

