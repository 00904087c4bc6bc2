"""Benchmark: what evaluating an ensemble costs beyond rolling its members out.

One batch of deep-quench states at L=32 is rolled out by K small PARCs (configs/model/small, random scales)
for T snapshots; then the ensemble's reductions run on those rollouts: the members' order-parameter series
and error sums, and the calibration sums (``holstein_dist.calibration.accumulate``). The figure of merit is
the reduction time as a fraction of the rollout time (the rollouts are the unavoidable part), next to the
same reductions for ONE model (``evaluate.state_series`` + ``squared_error_sums``), measured in the same run.
Peak memory of the reduction is measured with tracemalloc (numpy allocations are traced).

    python benchmarks/ensemble_eval.py [--members 5] [--batch 16] [--steps 200] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from holstein_dist import evaluate, physics
from holstein_dist.config import load_config
from holstein_dist.evaluate_ensemble import Ensemble
from holstein_dist.model import SCALE_KEYS, ModelConfig, build_model

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> tuple[float, object]:
    seconds, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), out


def peak_mib(fn) -> float:
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    L = 32
    states = [physics.initial_state(L, 0.0, seed=k) for k in range(args.batch)]
    rho, Q, P = (np.stack(parts) for parts in zip(*states))
    stepper = physics.make_stepper(rho, Q, P, g=1.0)
    stepper.advance(256 * 40)  # past the linear regime
    initial = dict(zip(physics.STATE_KEYS, (x.astype(np.complex64 if x.dtype.kind == "c" else np.float32)
                                            for x in stepper.state())))
    truth = stepper  # the exact trajectory as "truth": advance it T snapshots, storing each
    frames = [tuple(np.array(x) for x in stepper.state())]
    for _ in range(args.steps):
        truth.advance(256)
        frames.append(tuple(np.array(x) for x in stepper.state()))
    truth_arrays = tuple(np.stack([f[i] for f in frames], axis=1).astype(np.complex64 if i == 0 else np.float32)
                         for i in range(3))

    cfg = load_config(ModelConfig, ROOT / "configs" / "model" / "small.yaml")
    models = []
    for k in range(args.members):
        torch.manual_seed(k)
        models.append(build_model(cfg, dict.fromkeys(SCALE_KEYS, 0.1)).eval())
    ensemble = Ensemble(models, [Path(f"member-{k}") for k in range(args.members)], spread_scale=1.0)
    plan = evaluate.Plan(indices=tuple(range(args.batch)), steps=args.steps, max_lag=args.steps // 2, L=L, g_f=1.0,
                         K0=physics.K0_DEFAULT, eta=physics.ETA_DEFAULT, snapshot_dt=2.56, rk4_per_snapshot=256,
                         baseline_steps=0)
    cpu = torch.device("cpu")
    with torch.inference_mode():
        t_roll, (mean, members, _) = timed(
            lambda: ensemble.roll_out(evaluate.roll_out, initial, args.steps, cpu, False, False), 1)
    series = functools.partial(evaluate.state_series, plan=plan)

    def reduce_ensemble():
        return ensemble.reduce(members, truth_arrays, series, evaluate.squared_error_sums)

    def reduce_one():
        return series(*mean), evaluate.squared_error_sums(mean, truth_arrays)

    t_ens, _ = timed(reduce_ensemble, args.repeats)
    t_one, _ = timed(reduce_one, args.repeats)
    mem_ens, mem_one = peak_mib(reduce_ensemble), peak_mib(reduce_one)
    print(f"L={L}, batch {args.batch}, {args.steps} steps, K={args.members} small PARCs, {args.threads} thread(s); "
          f"medians of {args.repeats}")
    print(f"  rollouts of all members         {t_roll:8.2f} s  ({t_roll / args.members:.2f} s per member)")
    print(f"  ensemble reductions (K members) {t_ens:8.2f} s  = {t_ens / t_roll:.1%} of the rollouts; "
          f"peak {mem_ens:.0f} MiB")
    print(f"  one model's reductions          {t_one:8.2f} s  = {t_one / (t_roll / args.members):.1%} of its rollout; "
          f"peak {mem_one:.0f} MiB")
    print(f"  ensemble / one-model reduction  {t_ens / t_one:8.2f}x  (K = {args.members})")


if __name__ == "__main__":
    main()
