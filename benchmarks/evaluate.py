"""Benchmark: the costs of a paper-scale evaluation, and the surrogate's speed next to the exact simulator.

1. Metrics on rank 0 for 256 rollouts x 1000 steps: the FFT autocorrelation (lags 0..200) alone, and
   the whole metric stage of ``holstein_dist.evaluate.build_report`` (truth + model autocorrelations,
   divergence test, Wasserstein, spectra, energy drift, RMSE, the climate test's sampling noise) on synthetic
   order-parameter series, and that sampling noise (noise floor + bootstrap) of one order parameter alone.
2. Rollout throughput at L=32, batch 64, on CPU: the tiny and medium models of configs/model (built
   with ``build_model`` and random scales; the tiny one also with ``symmetrize``) against the exact RK4
   simulator (``physics.make_stepper``, numba) from the same deep-quench states, one snapshot = 256 RK4
   steps; and each rollout guard's per-step restore alone (``--project``, ``--conserve``, and ``--conserve``
   where the electrons must give up energy the lattice cannot: its isospectral shift), which a guarded
   rollout adds to its model's time. Both sides get the same threads. Throughput is in rollout-steps per
   second (one step = one snapshot of one trajectory).

    python benchmarks/evaluate.py [--threads N] [--tiny-steps 20] [--medium-steps 2] [--exact-steps 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from autocorr import median_seconds, sample_series  # sibling benchmark: same workload definition

from holstein_dist import evaluate, physics
from holstein_dist.config import load_config
from holstein_dist.guards import Couplings, Guard
from holstein_dist.metrics import RMSE_COMPONENTS, autocorrelation
from holstein_dist.model import SCALE_KEYS, ModelConfig, build_model
from holstein_dist.sampling import autocorrelation_error_bootstrap, autocorrelation_noise_floor

ROOT = Path(__file__).resolve().parents[1]


def synthetic_share(n_traj: int, n_times: int, L: int) -> evaluate.Share:
    """A merged share with order-parameter-like series, as rank 0 holds it after the gather."""
    truth = {"charge": sample_series(n_traj, n_times, seed=1), "lattice": sample_series(n_traj, n_times, seed=2),
             "energy": np.full((n_traj, n_times), -0.6), "energy_stored": np.full((n_traj, n_times), -0.6),
             "kinetic": np.full((n_traj, n_times), 4e-3), "walls": np.full((n_traj, n_times), 2.0)}
    model = {"charge": sample_series(n_traj, n_times, seed=3), "lattice": sample_series(n_traj, n_times, seed=4),
             "energy": -0.6 + 1e-4 * sample_series(n_traj, n_times, seed=5),
             "kinetic": np.full((n_traj, n_times), 2e-3), "walls": np.full((n_traj, n_times), 1.0)}
    errors = {key: np.tile(np.linspace(0.0, 1.0, n_times) * L, (n_traj, 1)) for key in RMSE_COMPONENTS}
    return evaluate.Share(truth, model, errors, None, 1.0, {"seconds": 1.0, "trajectory_steps": 1})


def bench_metrics(n_traj: int, n_steps: int, max_lag: int, repeats: int) -> tuple[float, float, float]:
    """(seconds for one autocorrelation, for one order parameter's sampling noise (floor + bootstrap), and for
    the whole rank-0 metric stage, which includes both for both order parameters)."""
    x = sample_series(n_traj, n_steps + 1)
    acf = median_seconds(lambda: autocorrelation(x, max_lag), repeats)
    other = sample_series(n_traj, n_steps + 1, seed=3)
    noise = median_seconds(lambda: (autocorrelation_noise_floor(x, max_lag),
                                    autocorrelation_error_bootstrap(other, x, max_lag)), repeats)
    L = 32
    share = synthetic_share(n_traj, n_steps + 1, L)
    plan = evaluate.Plan(indices=tuple(range(n_traj)), steps=n_steps, max_lag=max_lag, L=L, g_f=1.0,
                         K0=physics.K0_DEFAULT, eta=physics.ETA_DEFAULT, snapshot_dt=2.56, rk4_per_snapshot=256,
                         baseline_steps=0)
    stage = median_seconds(lambda: evaluate.build_report(share, plan, {}, {}, {}, {}), repeats)
    return acf, noise, stage


def deep_quench_states(n: int, L: int, rk4_steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` deep-quench (g 0 -> 1) states ``rk4_steps`` after the quench, past the linear regime."""
    states = [physics.initial_state(L, 0.0, seed=k) for k in range(n)]
    rho, Q, P = (np.stack(parts) for parts in zip(*states))
    stepper = physics.make_stepper(rho, Q, P, g=1.0)
    stepper.advance(rk4_steps)
    return stepper.state()


def surrogate_rate(cfg: ModelConfig, state: tuple[np.ndarray, ...], steps: int) -> tuple[float, int]:
    """(rollout-steps/s of a randomly scaled model over ``steps`` snapshots, parameter count)."""
    rng = np.random.default_rng(0)
    model = build_model(cfg, {key: float(rng.uniform(0.05, 1.0)) for key in SCALE_KEYS}).eval()
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in state)
    model.rollout(*tensors, 1)  # warm-up: allocator and oneDNN kernel selection
    start = time.perf_counter()
    model.rollout(*tensors, steps)
    seconds = time.perf_counter() - start
    return state[1].shape[0] * steps / seconds, sum(p.numel() for p in model.parameters())


def guard_rate(guard: Guard, state: tuple[np.ndarray, ...], steps: int, start_momentum: float = 1.0) -> float:
    """Rollout-steps/s of a rollout guard's per-step restore alone, applied ``steps`` times to float32 states.

    ``start_momentum`` < 0.5 starts the guard from the same state with its momenta scaled by it, so every restore
    finds the electrons holding more energy than the lattice can give (the electronic-energy shift's path)."""
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(x)).to(torch.complex64 if np.iscomplexobj(x)
                                                                  else torch.float32) for x in state)
    rho, Q, P = tensors
    restore = guard.start(rho, Q, start_momentum * P)
    restore(*tensors)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        restore(*tensors)
    return state[1].shape[0] * steps / (time.perf_counter() - start)


def exact_rate(state: tuple[np.ndarray, ...], steps: int, rk4_per_snapshot: int, threads: int) -> float:
    """Rollout-steps/s of the exact simulator over ``steps`` snapshots (numba, ``threads`` threads)."""
    rho, Q, P = state
    physics.make_stepper(rho[:1], Q[:1], P[:1], g=1.0, threads=threads).advance(1)  # JIT / cache load
    stepper = physics.make_stepper(rho, Q, P, g=1.0, threads=threads)
    start = time.perf_counter()
    stepper.advance(steps * rk4_per_snapshot)
    return rho.shape[0] * steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=256, help="rollouts in the metric benchmark")
    parser.add_argument("--steps", type=int, default=1000, help="rollout length in the metric benchmark")
    parser.add_argument("--max-lag", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--L", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rk4-per-snapshot", type=int, default=256, help="deep quench: 256 (2.56 time units)")
    parser.add_argument("--tiny-steps", type=int, default=20, help="snapshots rolled out by the tiny model")
    parser.add_argument("--medium-steps", type=int, default=2, help="snapshots rolled out by the medium model")
    parser.add_argument("--exact-steps", type=int, default=20, help="snapshots advanced by the exact simulator")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch and numba threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    acf, noise, stage = bench_metrics(args.trajectories, args.steps, args.max_lag, args.repeats)
    print(f"metrics for {args.trajectories} rollouts x {args.steps} steps, lags 0..{args.max_lag} "
          f"(median of {args.repeats})")
    print(f"  one autocorrelation (FFT):              {acf * 1e3:9.1f} ms")
    print(f"  one order's sampling noise (floor + bootstrap): {noise * 1e3:9.1f} ms")
    print(f"  whole rank-0 metric stage (build_report): {stage * 1e3:9.1f} ms")

    state = deep_quench_states(args.batch, args.L, 6400)
    exact = exact_rate(state, args.exact_steps, args.rk4_per_snapshot, args.threads)
    print(f"\nrollout throughput, L={args.L}, batch {args.batch}, CPU, {args.threads} thread(s); "
          f"1 snapshot = {args.rk4_per_snapshot} RK4 steps")
    print(f"  {'':34s}{'params':>11s}{'steps/s':>11s}{'ms/step/traj':>14s}{'vs exact':>10s}")
    print(f"  {'exact RK4 (numba)':34s}{'-':>11s}{exact:11.1f}{1e3 / exact:14.3f}{1.0:9.2f}x")
    for name, steps, symmetrize in (("tiny", args.tiny_steps, False), ("tiny", args.tiny_steps, True),
                                    ("medium", args.medium_steps, False)):
        cfg = load_config(ModelConfig, ROOT / "configs" / "model" / f"{name}.yaml")
        cfg = dataclasses.replace(cfg, symmetrize=symmetrize)  # group averaging: 4 network passes per step
        rate, params = surrogate_rate(cfg, state, steps)
        label = f"{name} ({cfg.kind}, C={cfg.channels}x{cfg.n_blocks}){', symm.' if symmetrize else ''}"
        print(f"  {label:34s}{params:11,d}{rate:11.1f}{1e3 / rate:14.3f}{rate / exact:9.2f}x")
    # The guards alone, on the physical states: a random model's own rollout drifts into huge or tiny numbers
    # that change its speed, so a guarded random rollout would not isolate the guard's cost.
    couplings = Couplings(g=1.0, K0=physics.K0_DEFAULT, eta=physics.ETA_DEFAULT)
    for label, guard, start_momentum in (("--project", Guard(bounds=True), 1.0),
                                         ("--conserve", Guard(conserve=couplings), 1.0),
                                         ("--conserve, hot electrons", Guard(conserve=couplings), 0.2)):
        rate = guard_rate(guard, state, args.tiny_steps, start_momentum)
        print(f"  {'guard ' + label:34s}{'-':>11s}{rate:11.1f}{1e3 / rate:14.3f}{rate / exact:9.2f}x")


if __name__ == "__main__":
    main()
