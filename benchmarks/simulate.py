"""Benchmark: RK4 integration cost per trajectory per step, every backend, vs the reference C++ simulator.

For L = 16, 32, 64 and each backend (fused numba kernel, batched numpy, torch eager on CPU, and
torch on CUDA when a GPU is visible) this measures microseconds per trajectory per RK4 step on one
core (numba ``threads=1``, ``torch.set_num_threads(1)``) and on the whole machine, as the median of
``--repeats`` timed runs after a warm-up (compilation and first-touch excluded). Each timed run is
long enough to last about ``--seconds``. With ``--reference-bin PATH`` (the original C++ simulator
``qdyn``, built by you from github.com/apning/holstein-parc ``data/data_src``) its cost per step is
measured in the same run, on one core, and every row gets the speed-up over it. A last column gives the
largest deviation of the backend from the numpy reference after a short run, so that a fast but
wrong kernel cannot pass unnoticed.

    python benchmarks/simulate.py [--L 16 32 64] [--backends numba numba1 numpy torch cuda] [--batch 64]
                                  [--cuda-batch 4096] [--repeats 3] [--seconds 0.4] [--json PATH]
                                  [--reference-bin PATH/qdyn]

The C++ figure is the difference of two runs of different length divided by their difference in steps,
so its start-up (the self-consistent initial state) and file writing cancel; it runs the deep quench
(g 0 -> 1) with ``OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=1``.

``numba1`` is the numba kernel on a single trajectory (a batch of one pads nothing but has only
one chunk, hence one thread). numpy's elementwise operations are single-threaded, so its two rows
differ only by noise. Each backend runs in a fresh process (``--in-process`` to disable), because
idle OpenMP threads of one runtime spinning beside another's distort multi-core timings. The
"process CPU" column is the CPU time per step: on one thread it equals the wall time unless
other processes took the core (this machine is shared; compare the two before trusting a row).
The default run takes about one minute on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone

import numpy as np

from holstein_dist import physics as ph

CHECK_STEPS = 50


def initial_batch(L: int, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``batch`` distinct deep-quench starts, moved off the symmetric start so every entry is non-trivial."""
    states = [ph.initial_state(L, 0.0, seed=seed + i) for i in range(min(batch, 8))]
    rho = np.stack([states[i % len(states)][0] for i in range(batch)])
    Q = np.stack([states[i % len(states)][1] for i in range(batch)])
    P = np.stack([states[i % len(states)][2] for i in range(batch)])
    return ph.evolve(rho, Q, P, g=1.0, n_steps=20, backend="numpy")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_per_step(advance: Callable[[int], None], sync: Callable[[], None], repeats: int, seconds: float,
                  warmup_steps: int = 3) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds per ``advance(1)`` of ``repeats`` timed runs, each ~``seconds`` long.

    Runs follow a warm-up (compilation, allocation, first touch). On one thread the CPU time is the
    cost without the time the scheduler gave to other processes (a check on a busy machine).
    """
    advance(warmup_steps)
    sync()
    n = 1
    while True:  # calibrate: double until a run lasts >= seconds / 8
        start = time.perf_counter()
        advance(n)
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds / 8 or n >= 1 << 20:
            break
        n *= 2
    n = max(1, int(n * seconds / max(elapsed, 1e-9)))
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        advance(n)
        sync()
        wall.append((time.perf_counter() - start) / n)
        cpu.append((time.process_time() - start_cpu) / n)
    return wall, cpu


def make(backend: str, L: int, batch: int, threads: int | None):
    """``(advance, sync, state)`` for one backend on a fresh batch (``sync`` waits for the device)."""
    rho, Q, P = initial_batch(L, batch)
    if backend == "numba":
        stepper = ph.make_stepper(rho, Q, P, g=1.0, backend="numba", threads=threads)
        return stepper.advance, (lambda: None), stepper.state
    if backend == "numpy":
        stepper = ph.make_stepper(rho, Q, P, g=1.0, backend="numpy")
        return stepper.advance, (lambda: None), stepper.state
    import torch

    if backend == "torch":
        stepper = ph.TorchStepper(rho, Q, P, g=1.0, dt=ph.DT_DEFAULT, K0=ph.K0_DEFAULT, eta=ph.ETA_DEFAULT)
        return stepper.advance, (lambda: None), stepper.state
    # The GPU default (what make_stepper gives CUDA tensors): fused, compiled, CUDA-graph replay.
    stepper = ph.FusedTorchStepper(rho, Q, P, g=1.0, device="cuda")
    return stepper.advance, torch.cuda.synchronize, stepper.state


class torch_threads:
    """Context manager: ``torch.set_num_threads(n)`` inside, the previous value restored after."""

    def __init__(self, n: int | None) -> None:
        self.n = n

    def __enter__(self) -> None:
        if self.n is None:
            return
        import torch

        self.previous = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc) -> None:
        if self.n is not None:
            import torch

            torch.set_num_threads(self.previous)


def deviation(backend: str, L: int) -> float:
    """Max |backend - numpy| over (rho, Q, P) after ``CHECK_STEPS`` steps of a 3-trajectory batch."""
    rho, Q, P = initial_batch(L, 3, seed=100)
    ref = ph.evolve(rho, Q, P, g=1.0, n_steps=CHECK_STEPS, backend="numpy")
    if backend == "cuda":
        import torch

        args = [torch.from_numpy(x).cuda() for x in (rho, Q, P)]
        out = [x.cpu().numpy() for x in ph.evolve(*args, g=1.0, n_steps=CHECK_STEPS, backend="torch")]
    else:
        out = ph.evolve(rho, Q, P, g=1.0, n_steps=CHECK_STEPS, backend=backend)
    return max(float(np.abs(np.asarray(x) - y).max()) for x, y in zip(out, ref))


def run_reference(binary: str, L: int, steps: int) -> tuple[float, float]:
    """(wall, child CPU) seconds of one run of the original simulator over ``steps`` + 2 RK4 steps.

    Positional arguments as the original's data pipeline passes them: out dir, sim number, phase, save
    interval, save mid-interval, L, dt, pre-steps, saved steps, g_i, g_f, noise, zero displacement, zero
    momentum, on-site V. Saving one snapshot after 2 steps keeps its file writing negligible.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as out:
        cmd = [binary, out, "0", "0", "2", "0", str(L), str(ph.DT_DEFAULT), str(steps), "1", "0.0", "1.0", "0.0001",
               "0", "1", "0.0"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise SystemExit(f"error: --reference-bin {binary} failed at L={L} (exit {proc.returncode}: {tail}); "
                         "pass the qdyn built from the original data/data_src")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu


def measure_reference(binary: str, L: int, repeats: int, seconds: float) -> dict:
    """us per RK4 step of the original C++ simulator at ``L``: median over ``repeats`` pairs of runs."""
    short = 100
    long = 1000
    while True:  # lengthen until the long run lasts about ``seconds``
        wall, _ = run_reference(binary, L, long)
        if wall >= seconds or long >= 1 << 24:
            break
        long = max(2 * long, int(long * seconds / max(wall, 1e-6)))
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = run_reference(binary, L, short)
        w1, c1 = run_reference(binary, L, long)
        walls.append((w1 - w0) / (long - short) * 1e6)
        cpus.append((c1 - c0) / (long - short) * 1e6)
    us = statistics.median(walls)
    print(f"  C++ reference  L={L:3d}: {us:9.3f} us/step (runs {min(walls):.3g}..{max(walls):.3g}; "
          f"process CPU time {statistics.median(cpus):.3g})", flush=True)
    return {"L": L, "us_per_step": us, "us_runs": walls, "cpu_us_per_step": statistics.median(cpus),
            "steps": [short, long]}


def check_reference_bin(path: str) -> str:
    resolved = os.path.abspath(os.path.expanduser(path))
    if not (os.path.isfile(resolved) and os.access(resolved, os.X_OK)):
        raise SystemExit(f"error: --reference-bin {path} is not an executable file; build the original simulator "
                         "(make in the original data/data_src) and pass its qdyn")
    return resolved


def measure(backend: str, args: argparse.Namespace, n_cores: int) -> list[dict]:
    """All rows of one backend (every L; one core and the whole machine)."""
    if backend == "cuda":
        modes = [("GPU", None)]
    elif backend == "numba1":  # one trajectory is one chunk: a single thread whatever the machine
        modes = [("1 core", 1)]
    else:
        modes = [("1 core", 1), (f"{n_cores} cores", n_cores)]
    batch = {"numba": args.batch, "numba1": 1, "cuda": args.cuda_batch}.get(backend, args.slow_batch)
    kind = "numba" if backend == "numba1" else backend
    rows = []
    for L in args.L:
        dev = deviation(kind, L)
        for label, threads in modes:
            with torch_threads(threads if kind == "torch" else None):
                advance, sync, _ = make(kind, L, batch, threads if kind == "numba" else None)
                wall, cpu = time_per_step(advance, sync, args.repeats, args.seconds)
            runs = [t / batch * 1e6 for t in wall]
            us = statistics.median(runs)
            cpu_us = statistics.median(cpu) / batch * 1e6
            rows.append({
                "backend": backend, "cores": label, "threads": threads, "batch": batch, "L": L,
                "us_per_trajectory_step": us, "us_runs": runs, "cpu_us_per_trajectory_step": cpu_us,
                "max_dev_vs_numpy": dev,
            })
            print(f"  {backend:6s} {label:8s} L={L:3d} batch={batch:5d}: {us:9.3f} us/trajectory/step "
                  f"(runs {min(runs):.3g}..{max(runs):.3g}; process CPU time {cpu_us:.3g})", flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--L", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--backends", nargs="+", default=["numba", "numba1", "numpy", "torch", "cuda"],
                        choices=["numba", "numba1", "numpy", "torch", "cuda"],
                        help="numba1 = the numba kernel on a single trajectory (batch of 1); "
                             "cuda is skipped when torch sees no GPU")
    parser.add_argument("--batch", type=int, default=64, help="trajectories per CPU batch (numba)")
    parser.add_argument("--slow-batch", type=int, default=16, help="trajectories per batch for numpy / torch CPU")
    parser.add_argument("--cuda-batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.4, help="length of one timed run")
    parser.add_argument("--json", type=str, default=None, help="also write the numbers to this file")
    parser.add_argument("--in-process", action="store_true",
                        help="measure every backend in this process (default: one fresh process per backend, "
                             "so that one runtime's idle spinning threads cannot slow the next)")
    parser.add_argument("--reference-bin", default=None, metavar="PATH",
                        help="the original C++ simulator (qdyn, built from the original sources): measure its "
                             "cost per step in this run and report the speed-ups")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error("--repeats must be >= 3 (the median of at least three runs is reported)")
    if args.reference_bin:
        args.reference_bin = check_reference_bin(args.reference_bin)

    n_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    backends = list(dict.fromkeys(args.backends))
    if args.worker:  # child of the default mode: one backend, rows to --json
        rows = [r for b in backends for r in measure(b, args, n_cores)]
        with open(args.json, "w") as f:
            json.dump(rows, f)
        return rows
    if "cuda" in backends:
        try:
            import torch

            if not torch.cuda.is_available():
                backends.remove("cuda")
        except ImportError:
            backends.remove("cuda")

    reference = {}
    if args.reference_bin:
        reference = {L: measure_reference(args.reference_bin, L, args.repeats, args.seconds) for L in args.L}
    rows = []
    for backend in backends:
        if args.in_process:
            rows += measure(backend, args, n_cores)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "rows.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--backends", backend, "--json", out,
                   "--L", *map(str, args.L), "--batch", str(args.batch), "--slow-batch", str(args.slow_batch),
                   "--cuda-batch", str(args.cuda_batch), "--repeats", str(args.repeats),
                   "--seconds", str(args.seconds)]
            subprocess.run(cmd, check=True)
            with open(out) as f:
                rows += json.load(f)

    print()
    print(f"RK4 step cost, median of {args.repeats} runs; {cpu_name()}, {n_cores} cores")
    print()
    print("| backend | cores | batch | L | µs / trajectory / step | process CPU µs | C++ reference µs "
          f"| speed-up vs C++ | max dev vs numpy ({CHECK_STEPS} steps) |")
    print("|---|---|---|---|---|---|---|---|---|")
    names = {"numba": "numba (fused kernel)", "numba1": "numba, 1 trajectory", "numpy": "numpy (batched)",
             "torch": "torch eager CPU", "cuda": "torch CUDA (fused)"}
    for r in rows:
        ref = reference.get(r["L"], {}).get("us_per_step")
        r["reference_cpp_us"] = ref
        r["speedup_vs_cpp"] = ref / r["us_per_trajectory_step"] if ref else None
        speedup = f"{r['speedup_vs_cpp']:.1f}x" if ref else "- (pass --reference-bin)"
        print(f"| {names[r['backend']]} | {r['cores']} | {r['batch']} | {r['L']} | {r['us_per_trajectory_step']:.3g} "
              f"| {r['cpu_us_per_trajectory_step']:.3g} | {f'{ref:.3g}' if ref else '-'} "
              f"| {speedup} | {r['max_dev_vs_numpy']:.1e} |")
    if args.json:
        import numba
        import torch

        meta = {"cpu": cpu_name(), "cores": n_cores, "numpy": np.__version__, "numba": numba.__version__,
                "torch": torch.__version__, "repeats": args.repeats, "seconds_per_run": args.seconds,
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "reference_bin": args.reference_bin}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows, "reference_cpp": list(reference.values())}, f, indent=2)
        print(f"\nwrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
