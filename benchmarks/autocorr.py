"""Benchmark: FFT ensemble autocorrelation vs the original per-lag loop.

Paper-scale evaluation: 256 rollouts x 1000 steps, lags 0..200 (docs/physics.md section 3). Prints the median
of several repeats for :func:`holstein_dist.metrics.autocorrelation` (FFT) and for the naive loop
over lags (one pooled numpy product-mean per lag, the original code's approach), their ratio, and
the largest difference between the two results so that a fast but wrong version cannot pass.

    python benchmarks/autocorr.py [--trajectories 256] [--steps 1000] [--max-lag 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from holstein_dist.metrics import autocorrelation, autocorrelation_direct


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call (first-call costs excluded)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sample_series(n_traj: int, n_times: int, seed: int = 0) -> np.ndarray:
    """AR(1) ensemble with a non-zero mean: correlated like an order parameter, not white noise."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(n_traj, n_times))
    x = np.empty_like(noise)
    x[:, 0] = noise[:, 0]
    for t in range(1, n_times):
        x[:, t] = 0.95 * x[:, t - 1] + noise[:, t]
    return x + 0.5


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--max-lag", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    x = sample_series(args.trajectories, args.steps)
    fast = median_seconds(lambda: autocorrelation(x, args.max_lag), args.repeats)
    naive = median_seconds(lambda: autocorrelation_direct(x, args.max_lag), args.repeats)
    max_diff = float(
        np.max(np.abs(autocorrelation(x, args.max_lag) - autocorrelation_direct(x, args.max_lag)))
    )

    print(
        f"autocorrelation of {args.trajectories} x {args.steps} series, lags 0..{args.max_lag}, "
        f"median of {args.repeats}"
    )
    print(f"  FFT (metrics.autocorrelation):      {fast * 1e3:9.2f} ms")
    print(f"  naive per-lag loop (direct formula): {naive * 1e3:9.2f} ms")
    print(f"  speed-up: {naive / fast:.1f}x   max |difference|: {max_diff:.2e}")


if __name__ == "__main__":
    main()
