"""Benchmark: dataset generation throughput, 1 vs 2 Dask workers, against the bare integrator.

Generates the same dataset (default: the paper's deep quench at L=32 with fewer, shorter
trajectories) with a local Dask cluster of 1 and of 2 worker processes and prints, side by side:

* trajectory-steps/s (one RK4 step of one trajectory), from the first task to the last shard
  recorded, the cluster already up and its workers warmed (imports, numba cache);
* parallel efficiency = rate(2 workers) / (2 x rate(1 worker));
* the fraction of the workers' task time spent writing (HDF5 writes, fsync, sha256);
* the rate per worker while inside a task (trajectory-steps / task seconds): next to the wall-clock
  rate it separates time lost between tasks from time lost inside them (e.g. to a busy machine);
* the single-process integrator speed: the same batch stepped with no I/O at all (the ceiling).

Both runs must produce bit-identical data; the benchmark checks that too.

    python benchmarks/generate.py [--config configs/data/deep_L32.yaml] [--trajectories 32]
        [--shard-size 8] [--n-steps 250] [--workers 1 2] [--out DIR] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from holstein_dist import generate, physics
from holstein_dist.config import load_config
from holstein_dist.shards import DataConfig, open_dataset
from hpc.fanout import DaskFanout

ROOT = Path(__file__).resolve().parents[1]


def warm_worker() -> None:
    """Import and load the compiled kernel once, outside the timed region."""
    rho, Q, P = physics.initial_state(4, 0.0, seed=0)
    physics.make_stepper(rho[None], Q[None], P[None], g=1.0, threads=1).advance(1)


def integrator_rate(cfg: DataConfig, repeats: int = 3) -> float:
    """Trajectory-steps/s of one process stepping one shard-sized batch with threads=1 and no I/O."""
    states = [generate.initial_conditions(cfg, k)[:3] for k in range(cfg.shard_size)]
    rho, Q, P = (np.stack([s[i] for s in states]) for i in range(3))
    stepper = physics.make_stepper(rho, Q, P, g=cfg.g_f, dt=cfg.dt, threads=1)
    stepper.advance(10)
    n_steps = max(200, 2_000_000 // (cfg.shard_size * cfg.L * cfg.L))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        stepper.advance(n_steps)
        best = min(best, time.perf_counter() - start)
    return cfg.shard_size * n_steps / best


def generation_run(cfg: DataConfig, out: Path, workers: int) -> dict[str, float]:
    with DaskFanout.local(workers) as fanout:
        start = time.perf_counter()
        fanout.start()
        fanout.client.run(warm_worker)
        startup = time.perf_counter() - start
        summary = generate.run(cfg, out, fanout, interactive=False, virtual=False)
    return {"workers": workers, "startup_s": startup, "wall_s": summary.wall_s,
            "rate": summary.traj_steps_per_s, "write_fraction": summary.write_fraction,
            "task_rate": summary.traj_steps / (summary.compute_s + summary.write_s),
            "traj_steps": summary.traj_steps, "bytes": summary.bytes}


def same_data(a: Path, b: Path) -> bool:
    da, db = open_dataset(a), open_dataset(b)
    keys = ("rho", "Q", "P", "rho_mid", "Q_mid", "P_mid")
    for name in da.splits:
        sa, sb = da.split(name), db.split(name)
        xa = sa.read_many(range(len(sa)), keys=keys)
        xb = sb.read_many(range(len(sb)), keys=keys)
        if not all(np.array_equal(xa[k], xb[k]) for k in keys):
            return False
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "data" / "deep_L32.yaml"))
    p.add_argument("--trajectories", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=8)
    p.add_argument("--n-steps", type=int, default=250)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", help="keep the datasets here (default: a temporary directory, removed)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args()
    cfg = load_config(DataConfig, args.config, [
        f"splits.train={args.trajectories}", "splits.val=0", "splits.test=0", f"shard_size={args.shard_size}",
        f"n_steps={args.n_steps}", *args.overrides])

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.out) if args.out else Path(tmp)
        single = integrator_rate(cfg)
        runs = [generation_run(cfg, base / f"workers{n}", n) for n in args.workers]
        identical = all(same_data(base / f"workers{args.workers[0]}", base / f"workers{n}") for n in args.workers[1:])

    print(f"# {platform.node()}, {platform.processor() or platform.machine()}; L={cfg.L}, "
          f"{args.trajectories} trajectories x {cfg.trajectory_steps(0):,}+ RK4 steps, shard_size {cfg.shard_size}, "
          f"{runs[0]['bytes'] / 1e6:.0f} MB per dataset")
    print(f"single-process integrator (batch {cfg.shard_size}, no I/O): {single:,.0f} trajectory-steps/s "
          f"({1e6 / single:.2f} us per trajectory-step)")
    print(f"{'workers':>8} {'startup s':>10} {'wall s':>8} {'traj-steps/s':>14} {'vs integrator':>14} "
          f"{'efficiency':>11} {'writing':>8} {'in-task/worker':>15}")
    base_rate = runs[0]["rate"] / runs[0]["workers"]
    for r in runs:
        efficiency = r["rate"] / (r["workers"] * base_rate)
        print(f"{r['workers']:>8} {r['startup_s']:>10.2f} {r['wall_s']:>8.2f} {r['rate']:>14,.0f} "
              f"{r['rate'] / (r['workers'] * single):>13.0%} {efficiency:>11.0%} {r['write_fraction']:>8.1%} "
              f"{r['task_rate']:>15,.0f}")
    print(f"bit-identical across worker counts: {identical}")


if __name__ == "__main__":
    main()
