"""Benchmark: what the Fletcher32 chunk checksums cost when reading shards.

Writes two shard-shaped HDF5 files with the generator's chunk layout (one trajectory x TIME_CHUNK
snapshots per chunk), identical data, one with ``fletcher32=True`` (what ``generate`` writes) and one
without, then times in alternation, in one process:

* random training windows (what the DataLoader reads: n_step+1 consecutive snapshots of rho, Q, P
  and the n_step mid states of one random trajectory);
* a whole-split sequential read (what evaluation reads).

Prints medians and the ratio checked/unchecked. Run it alone on the machine (no training beside it).

    python benchmarks/shard_read.py [--L 32] [--trajectories 8] [--snapshots 1001] [--n-step 8] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from holstein_dist.shards import TIME_CHUNK


def write(path: Path, n: int, T: int, L: int, checked: bool, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        for suffix, length in (("", T), ("_mid", T - 1)):
            chunk = min(TIME_CHUNK, length)
            rho = (rng.standard_normal((n, length, L, L)) + 1j * rng.standard_normal((n, length, L, L)))
            f.create_dataset("rho" + suffix, data=rho.astype(np.complex64), chunks=(1, chunk, L, L),
                             fletcher32=checked)
            for key in ("Q", "P"):
                f.create_dataset(key + suffix, data=rng.standard_normal((n, length, L)).astype(np.float32),
                                 chunks=(1, chunk, L), fletcher32=checked)


def read_windows(path: Path, starts: np.ndarray, n_step: int) -> float:
    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        for traj, start in starts:
            for key in ("rho", "Q", "P"):
                f[key][traj, start:start + n_step + 1]
                f[key + "_mid"][traj, start:start + n_step]
    return time.perf_counter() - t0


def read_all(path: Path) -> float:
    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        for key in f:
            f[key][...]
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--L", type=int, default=32)
    parser.add_argument("--trajectories", type=int, default=8)
    parser.add_argument("--snapshots", type=int, default=1001)
    parser.add_argument("--n-step", type=int, default=8)
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    starts = np.stack([rng.integers(0, args.trajectories, args.windows),
                       rng.integers(0, args.snapshots - args.n_step, args.windows)], axis=1)
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: Path(tmp) / f"{name}.h5" for name in ("unchecked", "checked")}
        for name, path in files.items():
            write(path, args.trajectories, args.snapshots, args.L, checked=name == "checked")
        size = {name: path.stat().st_size for name, path in files.items()}
        times: dict[str, dict[str, list[float]]] = {k: {n: [] for n in files} for k in ("windows", "whole")}
        for _ in range(args.repeats):  # alternate, so drifts of a shared machine hit both alike
            for name, path in files.items():
                times["windows"][name].append(read_windows(path, starts, args.n_step))
                times["whole"][name].append(read_all(path))
    print(f"L={args.L}, {args.trajectories} trajectories x {args.snapshots} snapshots, chunk (1, {TIME_CHUNK}, ...); "
          f"file size unchecked {size['unchecked'] / 2**20:.1f} MiB, checked {size['checked'] / 2**20:.1f} MiB")
    for kind, label, count in (("windows", f"{args.windows} random windows (n_step {args.n_step})", args.windows),
                               ("whole", "whole file, sequential", 1)):
        med = {name: statistics.median(v) for name, v in times[kind].items()}
        rate = {name: count / med[name] for name in med}
        print(f"{label:42s} unchecked {med['unchecked']:.3f} s ({rate['unchecked']:.0f}/s)  checked "
              f"{med['checked']:.3f} s ({rate['checked']:.0f}/s)  ratio checked/unchecked "
              f"{med['checked'] / med['unchecked']:.3f}")


if __name__ == "__main__":
    main()
