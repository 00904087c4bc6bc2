"""``python -m holstein_dist.generate``: integrate quench trajectories into a sharded HDF5 dataset.

    python -m holstein_dist.generate --config configs/data/deep_L32.yaml --out DIR --workers 64 [KEY=VALUE ...]
    mpirun -n 64 python -m holstein_dist.generate --config ... --backend mpi
    python -m holstein_dist.generate --config ... --dask-scheduler-file sched.json   # existing cluster

The run is planned as fixed shards (``shard_size`` trajectories each, see ``shards.plan_shards``),
fanned out with ``hpc.fanout``; each task integrates its shard as one batch and writes it under a
temporary name; the coordinator publishes it (rename) and records it in the manifest at once, so
an interrupted or killed run resumes where it stopped. Trajectory ``k`` depends only on
``(seed, k)``: the dataset is bit-identical for any worker count and backend.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import holstein_dist
from holstein_dist import physics
from holstein_dist.config import load_config, save_resolved, to_dict
from holstein_dist.shards import (
    MANIFEST,
    SHARD_DIR,
    SPLIT_NAMES,
    DataConfig,
    Manifest,
    ShardEntry,
    ShardSpec,
    ShardWriter,
    config_differences,
    plan_shards,
    write_virtual_split,
)
from hpc.cli import UserError, bad_input, command_parser, report_error
from hpc.fanout import BACKENDS, Fanout, is_coordinator_process, open_fanout
from hpc.files import LOCK_NAME, DirectoryLock, LockHeld, check_output_dir, file_sha256, is_temp_name, publish

RESOLVED_CONFIG = "config.yaml"
LOG_EVERY_S = 10.0


def log(message: str) -> None:
    print(f"[generate] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- one shard


def initial_conditions(cfg: DataConfig, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Pre-quench state and phase offset of global trajectory ``k``: a function of (seed, k) only.

    The phase is drawn after the noise, so the noise does not depend on ``max_phase``.
    """
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, int(k)]))
    rho, Q, P = physics.initial_state(cfg.L, cfg.g_i, noise=cfg.noise, seed=rng)
    return rho, Q, P, int(rng.integers(0, cfg.max_phase + 1))


def integrate_shard(cfg: DataConfig, spec: ShardSpec, writer: ShardWriter) -> tuple[np.ndarray, int]:
    """Feed ``writer`` every snapshot and mid state of the shard; return (t0 per trajectory, RK4 steps).

    The batch shares the transient and the snapshot loop; only the per-trajectory phase offsets run
    one trajectory at a time. The kernel gives a trajectory the same bits in any batch, so shard
    composition does not change the data.
    """
    starts = [initial_conditions(cfg, k) for k in spec.traj_ids]
    rho, Q, P = (np.stack([s[i] for s in starts]) for i in range(3))
    phases = np.array([s[3] for s in starts], dtype=np.int64)

    def stepper(rho: np.ndarray, Q: np.ndarray, P: np.ndarray):
        # threads=1: one single-threaded process per core is how every backend uses the machine.
        return physics.make_stepper(rho, Q, P, g=cfg.g_f, dt=cfg.dt, threads=1)

    batch = stepper(rho, Q, P)
    batch.advance(cfg.transient_steps)
    rho, Q, P = (np.array(x) for x in batch.state())
    for j, phase in enumerate(phases):
        if phase:
            one = stepper(rho[j:j + 1], Q[j:j + 1], P[j:j + 1])
            one.advance(int(phase))
            rho[j], Q[j], P[j] = (x[0] for x in one.state())
    batch = stepper(rho, Q, P)
    half = cfg.save_interval // 2
    writer.snapshot(0, rho, Q, P)
    for t in range(cfg.n_steps):
        batch.advance(half)
        writer.mid(t, *batch.state())
        batch.advance(half)
        writer.snapshot(t + 1, *batch.state())
    t0 = (cfg.transient_steps + phases) * cfg.dt
    return t0, sum(cfg.trajectory_steps(p) for p in phases)


@dataclass(frozen=True)
class ShardTask:
    """What a worker needs to produce one shard (plain data: crosses process and node boundaries)."""

    root: str
    cfg: DataConfig
    spec: ShardSpec


@dataclass(frozen=True)
class ShardResult:
    """A sealed shard waiting under its temporary name ``tmp`` (in the shard's directory)."""

    file: str
    tmp: str
    sha256: str
    bytes: int
    scales: dict[str, float]
    n: int
    traj_steps: int
    compute_s: float
    write_s: float
    worker: str


def compute_shard(task: ShardTask) -> ShardResult:
    """Integrate and write one shard (runs on a worker). The coordinator publishes the result."""
    start = time.perf_counter()
    with ShardWriter(Path(task.root), task.cfg, task.spec) as writer:
        t0, steps = integrate_shard(task.cfg, task.spec, writer)
        tmp, sha, size = writer.seal(t0)
    elapsed = time.perf_counter() - start
    return ShardResult(file=task.spec.file, tmp=tmp.name, sha256=sha, bytes=size, scales=dict(writer.scales.values),
                       n=task.spec.n, traj_steps=steps, compute_s=elapsed - writer.write_s, write_s=writer.write_s,
                       worker=f"{socket.gethostname()}:{os.getpid()}")


# ----------------------------------------------------------------------------- output directory


class _CtrlC:
    pressed = False


@contextlib.contextmanager
def remembered_ctrl_c() -> Iterator[_CtrlC]:
    """Ctrl-C raises KeyboardInterrupt as usual and is also remembered.

    Python raises KeyboardInterrupt in whatever code runs when the signal arrives; inside a weakref callback
    or a ``__del__`` (garbage collection during HDF5 or Dask clean-up) it is printed as "Exception ignored"
    and lost, and the run would go on to the end. The caller checks ``pressed`` after each shard. A SIGINT
    that this process inherited as ignored (a job started with ``&``) stays ignored.
    """
    state = _CtrlC()
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler or threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum: int, frame: object) -> None:
        state.pressed = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def exclusive(root: Path) -> Iterator[None]:
    """Hold ``<root>/.lock`` so that two generate runs never clean up each other's files."""
    try:
        with DirectoryLock(root):
            yield
    except LockHeld:
        raise UserError(f"another generate run is writing to {root}; wait for it or use a new --out") from None


def remove_temporaries(root: Path) -> int:
    """Delete leftovers of killed writers (hidden ``.*.tmp`` files); no run is active (lock held)."""
    stale = [p for d in (root, root / SHARD_DIR) if d.is_dir() for p in d.iterdir() if is_temp_name(p)]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def check_fresh_directory(root: Path) -> None:
    """Refuse a non-empty directory that is not a dataset: we would mix files with somebody else's."""
    ours = {LOCK_NAME, SHARD_DIR, RESOLVED_CONFIG}
    foreign = [p.name for p in root.iterdir() if p.name not in ours and not is_temp_name(p)]
    shard_dir = root / SHARD_DIR
    if shard_dir.is_dir():
        foreign += [f"{SHARD_DIR}/{p.name}" for p in shard_dir.iterdir() if not is_temp_name(p)]
    if foreign:
        raise UserError(f"{root} is not empty ({foreign[0]}) and has no {MANIFEST}; use a new --out or an "
                        "empty directory")


def shard_intact(root: Path, entry: ShardEntry) -> bool:
    path = root / entry.file
    return path.is_file() and path.stat().st_size == entry.bytes and file_sha256(path) == entry.sha256


@dataclass
class PendingWork:
    """An output directory made ready to (re)start: its manifest and the shards still to compute."""

    manifest: Manifest
    todo: list[ShardSpec]


def prepare_output(root: Path, cfg: DataConfig) -> PendingWork:
    """Create or resume ``root``: refuse other parameters, verify finished shards, list what is left."""
    if (root / MANIFEST).exists():
        try:
            manifest = Manifest.load(root)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        diffs = config_differences(manifest.config_data, to_dict(cfg))
        if diffs:
            raise UserError(f"{root} holds a dataset made with different parameters ({'; '.join(diffs[:3])}); "
                            "use a new --out or delete it")
        if manifest.software_version != holstein_dist.__version__:
            log(f"note: {root} was started by version {manifest.software_version}, this is "
                f"{holstein_dist.__version__}")
    else:
        check_fresh_directory(root)
        manifest = Manifest.new(cfg)
    (root / SHARD_DIR).mkdir(exist_ok=True)
    removed = remove_temporaries(root)
    if removed:
        log(f"removed {removed} stale temporary file(s) left by an interrupted run")
    specs = plan_shards(cfg)
    todo = []
    for entry, spec in zip(manifest.shards, specs, strict=True):
        if entry.complete and not shard_intact(root, entry):
            log(f"{entry.file} is missing or corrupt (size/sha256 differ from the manifest); regenerating it")
            manifest.mark_pending(entry.file)
        if not entry.complete:
            todo.append(spec)
    manifest.refresh()
    manifest.save(root)
    save_resolved(cfg, root / RESOLVED_CONFIG)
    return PendingWork(manifest, todo)


# ----------------------------------------------------------------------------- progress and summary


class Progress:
    """tqdm bar on an interactive terminal, otherwise a log line every ``LOG_EVERY_S`` seconds."""

    def __init__(self, total: int, interactive: bool) -> None:
        self.total, self.done, self.start, self.last_line = total, 0, time.perf_counter(), time.perf_counter()
        self.bar = None
        if interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="traj", desc="generate", file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last_line >= LOG_EVERY_S or self.done == self.total:
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            log(f"{self.done}/{self.total} trajectories ({100 * self.done / max(self.total, 1):.0f}%), "
                f"{rate:.2f} traj/s, ETA {eta:.0f} s")
            self.last_line = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class RunSummary:
    """What one invocation did; ``traj_steps`` counts RK4 steps of single trajectories."""

    root: Path
    workers: int
    shards_done: int = 0
    shards_skipped: int = 0
    trajectories: int = 0
    bytes: int = 0
    traj_steps: int = 0
    compute_s: float = 0.0
    write_s: float = 0.0
    wall_s: float = 0.0
    dataset_bytes: int = 0

    def add(self, result: ShardResult) -> None:
        self.shards_done += 1
        self.trajectories += result.n
        self.bytes += result.bytes
        self.traj_steps += result.traj_steps
        self.compute_s += result.compute_s
        self.write_s += result.write_s

    @property
    def traj_steps_per_s(self) -> float:
        return self.traj_steps / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def write_fraction(self) -> float:
        """Share of the workers' task time spent writing (HDF5 writes, fsync, sha256)."""
        busy = self.compute_s + self.write_s
        return self.write_s / busy if busy > 0 else 0.0

    def describe(self) -> str:
        if not self.shards_done:
            return (f"done: all {self.shards_skipped} shards were complete ({self.dataset_bytes / 1e6:.1f} MB) "
                    f"-> {self.root}")
        return (f"done: {self.trajectories} trajectories in {self.shards_done} shards "
                f"({self.shards_skipped} already complete), {self.bytes / 1e6:.1f} MB written "
                f"(dataset {self.dataset_bytes / 1e6:.1f} MB), wall {self.wall_s:.1f} s, "
                f"{self.traj_steps_per_s:.3g} trajectory-steps/s on {self.workers} worker(s), "
                f"writing {100 * self.write_fraction:.1f}% of task time -> {self.root}")


# ----------------------------------------------------------------------------- orchestration


def run(cfg: DataConfig, root: Path, fanout: Fanout, *, task: Callable[[ShardTask], ShardResult] = compute_shard,
        virtual: bool = True, interactive: bool | None = None) -> RunSummary | None:
    """Generate (or finish) the dataset in ``root``; None on MPI ranks other than the coordinator.

    ``task`` is what the workers run per shard (``compute_shard``; tests wrap it to inject faults).
    """
    if not fanout.is_coordinator:
        fanout.serve(task)
        return None
    start = time.perf_counter()
    root = Path(root)
    if root.is_dir() and not (root / MANIFEST).exists():
        check_fresh_directory(root)  # before the lock file: leave a foreign directory exactly as it was
    root.mkdir(parents=True, exist_ok=True)
    with exclusive(root):
        plan = prepare_output(root, cfg)
        summary = RunSummary(root, 1, shards_skipped=len(plan.manifest.shards) - len(plan.todo))
        if plan.todo:
            interactive = sys.stderr.isatty() if interactive is None else interactive
            execute(plan, root, cfg, fanout, task, summary, interactive)
        if virtual:
            for split in SPLIT_NAMES:
                if cfg.splits.count(split) and (plan.todo or not (root / f"{split}.h5").exists()):
                    write_virtual_split(root, plan.manifest, split)
        summary.wall_s = time.perf_counter() - start
        summary.dataset_bytes = plan.manifest.total_bytes
        if plan.todo:
            plan.manifest.finish_run(summary.shards_done, summary.wall_s, summary.traj_steps_per_s)
            plan.manifest.save(root)
    return summary


def execute(plan: PendingWork, root: Path, cfg: DataConfig, fanout: Fanout, task: Callable[[ShardTask], ShardResult],
            summary: RunSummary, interactive: bool) -> None:
    """Fan the pending shards out; publish and record each one the moment it comes back."""
    manifest = plan.manifest
    log(f"{len(plan.todo)} shard(s) to generate, {summary.shards_skipped} already complete -> {root}")
    fanout.start()
    summary.workers = fanout.n_workers
    log(f"running on {fanout.describe()}")
    if fanout.dashboard_link:
        log(f"Dask dashboard: {fanout.dashboard_link}")
    manifest.start_run(fanout.name, summary.workers, socket.gethostname())
    manifest.save(root)
    tasks = [ShardTask(str(root), cfg, spec) for spec in plan.todo]
    progress = Progress(sum(s.n for s in plan.todo), interactive)
    try:
        with remembered_ctrl_c() as ctrl_c:
            for _, result in fanout.map_unordered(task, tasks):
                shard = root / result.file
                publish(shard.with_name(result.tmp), shard)
                manifest.mark_complete(result.file, sha256=result.sha256, size=result.bytes, scales=result.scales,
                                       worker=result.worker)
                manifest.save(root)  # progress survives any interruption from here on
                summary.add(result)
                progress.update(result.n)
                if ctrl_c.pressed:  # a Ctrl-C whose KeyboardInterrupt was swallowed (see remembered_ctrl_c)
                    raise KeyboardInterrupt
    finally:
        progress.close()
    remove_temporaries(root)  # anything left now is from a worker that died and was replaced


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """``--config``, the run's flags (where, how many workers, which backend) and DataConfig ``KEY=VALUE``."""
    p = command_parser("python -m holstein_dist.generate", __doc__.split("\n\n")[0],
                       config_help="data config YAML (configs/data/*.yaml)",
                       override_example="splits.train=8 L=16")
    p.add_argument("--out", help="dataset directory (default: data/<config name>)")
    p.add_argument("--workers", type=int, help="worker processes (default: usable cores; mpi: the world size)")
    p.add_argument("--backend", choices=BACKENDS, default="dask", help="dask (default), mpi (under mpirun/srun), "
                                                                       "serial")
    p.add_argument("--dask-scheduler-file", help="connect to a running Dask scheduler instead of a local cluster")
    p.add_argument("--dask-slurm", action="store_true", help="start Dask workers as Slurm jobs (dask-jobqueue)")
    p.add_argument("--slurm-cores", type=int, help="--dask-slurm: cores (= worker processes) per job")
    p.add_argument("--slurm-memory", help="--dask-slurm: memory per job, e.g. 64GB")
    p.add_argument("--slurm-walltime", help="--dask-slurm: job time limit, e.g. 02:00:00")
    p.add_argument("--slurm-partition", help="--dask-slurm: partition")
    p.add_argument("--slurm-account", help="--dask-slurm: account")
    p.add_argument("--no-virtual", action="store_true", help="skip the <out>/<split>.h5 virtual-dataset files")
    return p


def make_fanout(args: argparse.Namespace) -> Fanout:
    slurm = None
    if args.dask_slurm:
        slurm = dict(cores=args.slurm_cores, memory=args.slurm_memory, walltime=args.slurm_walltime,
                     queue=args.slurm_partition, account=args.slurm_account)
    return open_fanout(args.backend, workers=args.workers, scheduler_file=args.dask_scheduler_file, slurm=slurm)


def main(argv: list[str] | None = None) -> int:
    """CLI: 0 when the dataset is complete, 2 with one ``error:`` line for bad input, 130 on Ctrl-C."""
    args = None
    try:
        args = build_parser().parse(argv)
        with bad_input():  # bad file, key, type or value; bad flag combination; unusable --out
            cfg = load_config(DataConfig, args.config, args.overrides)
            root = Path(args.out) if args.out else Path("data") / Path(args.config).stem
            check_output_dir(root, "--out")
            fanout = make_fanout(args)  # last: it may start a cluster
    except UserError as exc:
        # Under mpirun every rank fails alike: the coordinator alone says so.
        return report_error(exc, show=args is None or is_coordinator_process(args.backend))
    try:
        with fanout:
            summary = run(cfg, root, fanout, virtual=not args.no_virtual)
    except UserError as exc:  # the directory holds another dataset, or another run is writing to it
        return report_error(exc)
    except KeyboardInterrupt:
        if fanout.is_coordinator:
            print(f"\ninterrupted: finished shards are recorded in {root / MANIFEST}; "
                  "re-run the same command to resume", file=sys.stderr)
        return 130
    if summary is not None:
        log(summary.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
