"""What decides a single-snapshot RMSE check on the shallow quench: each model's error split by mode and by rollout.

Rolls every model out from the first state of each validation trajectory (as `evaluate` does) and, for the density
(rho_diag), Q and P:
  * the share of the per-step MSE that is the q = pi (staggered) error shared by every rollout, D(t): the error of the
    rollouts' mean order parameter;
  * how alike the models' D(t) are (their correlation over steps 1..T with the first model's);
  * at each checked step: every model's RMSE and D, and how much of the difference between the last model's D and the
    first's a slow error explains (a lag, an amplitude error and an offset of the rollouts' mean oscillation, fitted
    over the 101 steps around the check, as `metrics.coherent_error` fits one model);
  * the charge order's autocorrelation error (lags 0..200, as `evaluate` computes it) against the truth and against
    the truth without its fast part (`metrics.fast_part` above `metrics.fast_cut` of the truth mean): how much of
    that check is the fast line.
Markdown on stdout (and in --markdown), the numbers as JSON in --json.

  python experiments/shallow_L16/snapshot_anatomy/anatomy.py --data DIR --json OUT NAME=MODEL...
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from holstein_dist.checkpoints import load_model
from holstein_dist.metrics import autocorrelation, fast_cut, fast_part, slow_fit
from holstein_dist.physics import STATE_KEYS, lattice_order
from holstein_dist.shards import open_dataset

COMPONENTS = ("rho_diag", "Q", "P")
CHECK_STEPS = (100, 600, 1200)
HALF_WINDOW = 50
MAX_LAG = 200


def fields(rho: np.ndarray, Q: np.ndarray, P: np.ndarray) -> dict[str, np.ndarray]:
    """The site fields [n, T+1, L] the checks are about, in float64."""
    density = np.diagonal(rho, axis1=-2, axis2=-1).real
    return {"rho_diag": density.astype(np.float64), "Q": Q.astype(np.float64), "P": P.astype(np.float64)}


def staggered(x: np.ndarray) -> np.ndarray:
    """The staggered (q = pi) average (1/L) sum_i (-1)^i x_i of any site field [..., L], as `physics.lattice_order`
    takes it of Q (of the density it is the charge order)."""
    return lattice_order(x)


def staggered_mean(x: np.ndarray) -> np.ndarray:
    """The rollouts' mean of the staggered average of a field [n, T+1, L]: [T+1]."""
    return staggered(x).mean(axis=0)


def slow_part(mean_truth: np.ndarray, difference: np.ndarray, step: int) -> dict[str, float]:
    """`metrics.slow_fit` of ``difference`` over the steps around ``step`` (the truth's staggered mean as the
    oscillation): the fitted value at ``step``, the fit's R^2 and its coefficients."""
    lo, hi = max(1, step - HALF_WINDOW), min(mean_truth.size, step + HALF_WINDOW + 1)
    d = difference[lo:hi]
    coefficients, fitted = slow_fit(mean_truth[lo:hi], np.gradient(mean_truth)[lo:hi], d)
    r2 = 1 - np.sum((d - fitted) ** 2) / np.sum((d - d.mean()) ** 2)
    return {"fitted_at_step": float(fitted[step - lo]), "r2": float(r2), "offset": coefficients["offset"],
            "amplitude": coefficients["amplitude_error"], "lag_steps": coefficients["lag_steps"]}


def charge_autocorrelation(truth: np.ndarray, errors: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Max |C_model - C| over lags 0..MAX_LAG of each rollout's charge order (the staggered density), with C the
    truth's autocorrelation and the same truth without its fast part (each rollout's part above the truth mean's
    fast cut removed, step 0 kept)."""
    charge = staggered(truth)
    cut = fast_cut(charge.mean(0)[1:])
    slow = np.array([np.r_[x[0], x[1:] - fast_part(x[1:], cut)] for x in charge])
    reference = {"truth": np.asarray(autocorrelation(charge, max_lag=MAX_LAG)),
                 "truth without its fast part": np.asarray(autocorrelation(slow, max_lag=MAX_LAG))}
    out = {"truth": {key: float(np.max(np.abs(c - reference["truth"]))) for key, c in reference.items()}}
    for name, e in errors.items():
        c = np.asarray(autocorrelation(staggered(truth + e), max_lag=MAX_LAG))
        out[name] = {key: float(np.max(np.abs(c - ref))) for key, ref in reference.items()}
    return out


def analyse(truth: dict[str, np.ndarray], errors: dict[str, dict[str, np.ndarray]]) -> dict[str, dict]:
    names = list(errors)
    first, last = names[0], names[-1]
    out: dict[str, dict] = {}
    for comp in COMPONENTS:
        mean_truth = staggered_mean(truth[comp])
        shared = {n: staggered_mean(e[comp]) for n, e in errors.items()}
        mse = {n: np.mean(e[comp] ** 2, axis=(0, 2)) for n, e in errors.items()}
        out[comp] = {
            "coherent_q_pi_share": {n: float(np.median(shared[n][1:] ** 2 / mse[n][1:])) for n in names},
            "correlation_with_first": {n: float(np.corrcoef(shared[n][1:], shared[first][1:])[0, 1]) for n in names},
            "checks": {
                str(step): {
                    "rmse": {n: float(np.sqrt(mse[n][step])) for n in names},
                    "shared_error": {n: float(shared[n][step]) for n in names},
                    "difference_last_minus_first": float(shared[last][step] - shared[first][step]),
                    "slow_part_of_difference": slow_part(mean_truth, shared[last] - shared[first], step),
                } for step in CHECK_STEPS if step < mean_truth.size
            },
        }
    return out


def markdown(result: dict[str, dict], names: list[str]) -> str:
    first, last = names[0], names[-1]
    lines = [f"| component | share of MSE in the shared q = pi error ({', '.join(names)}) | correlation of that error "
             f"with {first}'s |", "|---|---|---|"]
    components = {comp: r for comp, r in result.items() if comp in COMPONENTS}
    for comp, r in components.items():
        lines.append(f"| {comp} | {' / '.join(f'{v:.2f}' for v in r['coherent_q_pi_share'].values())} | "
                     f"{' / '.join(f'{v:.3f}' for v in r['correlation_with_first'].values())} |")
    lines += ["", f"| check | RMSE {' / '.join(names)} | shared error D {' / '.join(names)} | D({last}) - D({first}) "
              f"| its slow part (R^2; lag, amplitude, offset of the difference) |", "|---|---|---|---|---|"]
    for comp, r in components.items():
        for step, c in r["checks"].items():
            s = c["slow_part_of_difference"]
            lines.append(f"| {comp} @ {step} | {' / '.join(f'{v:.2e}' for v in c['rmse'].values())} | "
                         f"{' / '.join(f'{v:+.2e}' for v in c['shared_error'].values())} | "
                         f"{c['difference_last_minus_first']:+.2e} | {s['fitted_at_step']:+.2e} ({s['r2']:.2f}; "
                         f"{s['lag_steps']:+.3f} steps, {s['amplitude']:+.4f}, {s['offset']:+.1e}) |")
    lines += ["", f"| charge autocorrelation, max abs error over lags 0..{MAX_LAG} | against the truth | against the "
              "truth without its fast part |", "|---|---|---|"]
    for name, r in result["charge_autocorrelation_max_abs_error"].items():
        lines.append(f"| {name} | {r['truth']:.4f} | {r['truth without its fast part']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    parser.add_argument("models", nargs="+", help="NAME=MODEL; differences are the last against the first")
    args = parser.parse_args()
    split = open_dataset(args.data).split(args.split)
    data = split.read_many(list(range(len(split))), 0, args.steps + 1, STATE_KEYS)
    truth = fields(*(data[k] for k in STATE_KEYS))
    errors = {}
    for spec in args.models:
        name, path = spec.split("=", 1)
        model = load_model(Path(path), device=torch.device("cpu"))
        with torch.no_grad():
            pred = model.rollout(*(torch.from_numpy(np.ascontiguousarray(data[k][:, 0])) for k in STATE_KEYS),
                                 args.steps)
        predicted = fields(*(x.numpy() for x in pred))
        errors[name] = {comp: predicted[comp] - truth[comp] for comp in COMPONENTS}
    result = analyse(truth, errors)
    result["charge_autocorrelation_max_abs_error"] = charge_autocorrelation(
        truth["rho_diag"], {name: e["rho_diag"] for name, e in errors.items()})
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result, list(errors))
    if args.markdown:
        args.markdown.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
