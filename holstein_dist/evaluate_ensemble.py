"""The ensemble part of ``python -m holstein_dist.evaluate --checkpoint ENSEMBLE_DIR``.

Every member rolls out from the same initial states. Ranks share the work as for one model, by blocks of
rollouts, each rank running all K members on its block: that is K x rollouts/ranks member-rollouts per
rank, and the ensemble statistics (mean, spread, coverage) need all members of a rollout at once, which
this grouping gives without moving trajectories between ranks.

The report's usual model sections (RMSE, autocorrelation, divergence, Wasserstein, S(q)) describe the
*ensemble mean* (the mean of the members' rho, Q and P at every step). The ``ensemble`` section adds:
each member's RMSE by step and climate errors, the average member's RMSE against the mean's, and the
calibration of the spread (``holstein_dist.calibration``: coverage of the +-1/+-2 sigma bands, spread-skill
ratio and correlation, reliability, a fitted spread scale, and the trust horizon).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from holstein_dist import calibration
from holstein_dist.checkpoints import load_model
from holstein_dist.ensemble import member_checkpoints, member_name
from holstein_dist.guards import Guard
from holstein_dist.metrics import ORDER_KEYS, RMSE_COMPONENTS, autocorrelation, component_entries, divergent_mask
from holstein_dist.model import Surrogate


@dataclasses.dataclass
class EnsembleShare:
    """One rank's ensemble reductions: member order-parameter series, member error sums, calibration sums."""

    member_series: dict[str, np.ndarray]  # charge, lattice -> [K, n, T+1]
    member_squared_errors: dict[str, np.ndarray]  # RMSE_COMPONENTS -> [K, T+1]
    calibration: calibration.CalibrationSums

    @staticmethod
    def merge(parts: Sequence[EnsembleShare]) -> EnsembleShare:
        """Concatenate rollouts in rank order, add the error sums."""
        return EnsembleShare(
            member_series={k: np.concatenate([p.member_series[k] for p in parts], axis=1) for k in ORDER_KEYS},
            member_squared_errors={k: np.sum([p.member_squared_errors[k] for p in parts], axis=0)
                                   for k in RMSE_COMPONENTS},
            calibration=calibration.merge([p.calibration for p in parts]),
        )


class Ensemble:
    """The members, in manifest order, and how to roll them out and reduce their rollouts."""

    def __init__(self, models: Sequence[Surrogate], paths: Sequence[Path],
                 spread_scale: float | Mapping[str, float]) -> None:
        if len(models) < 2:
            raise ValueError("an ensemble needs at least 2 members")
        self.models, self.paths, self.spread_scale = list(models), list(paths), spread_scale

    def roll_out(self, roll_one: Any, initial: Mapping[str, np.ndarray], steps: int, device: torch.device,
                 bf16: bool, guard: Guard | None) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...], float]:
        """(ensemble-mean rollout, member rollouts stacked as rho [K, b, T+1, L, L], Q and P [K, b, T+1, L],
        compute seconds); ``roll_one`` is evaluate's roll_out. Stacked once here, so that the mean and every
        reduction read the same arrays."""
        members, seconds = [], 0.0
        for model in self.models:
            pred, s = roll_one(model, initial, steps, device, bf16, guard)
            members.append(pred)
            seconds += s
        start = time.perf_counter()
        stacked = tuple(np.stack([m[i] for m in members]) for i in range(3))
        del members
        mean = tuple(x.mean(axis=0).astype(x.dtype) for x in stacked)
        return mean, stacked, seconds + time.perf_counter() - start

    def reduce(self, members: Sequence[np.ndarray], truth: Sequence[np.ndarray], series_fn: Any,
               errors_fn: Any) -> EnsembleShare:
        """Reduce one batch of stacked member rollouts (as ``roll_out`` returns them) against the truth
        (``series_fn``/``errors_fn`` are evaluate's state_series and squared_error_sums with the plan bound)."""
        per_member = [tuple(x[k] for x in members) for k in range(len(self.models))]  # views, no copies
        series = [series_fn(*pred) for pred in per_member]
        errors = [errors_fn(pred, truth) for pred in per_member]
        sums = calibration.accumulate(calibration.component_values(*members), calibration.component_values(*truth),
                                      self.spread_scale)
        return EnsembleShare(
            member_series={k: np.stack([s[k] for s in series]) for k in ORDER_KEYS},
            member_squared_errors={k: np.stack([e[k] for e in errors]) for k in RMSE_COMPONENTS},
            calibration=sums,
        )


def fitted_scales(report_path: Path) -> dict[str, float]:
    """The per-component ``fitted_spread_scale`` of an ensemble evaluation report (made on validation)."""
    try:
        calibration_section = json.loads(Path(report_path).read_text())["ensemble"]["calibration"]
        raw = {c: calibration_section["components"][c]["fitted_spread_scale"] for c in RMSE_COMPONENTS}
        scales = {c: math.nan if v is None else float(v) for c, v in raw.items()}  # JSON writes NaN as null
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--spread-scale-from {report_path}: not an ensemble report with fitted spread scales "
                         f"({type(exc).__name__}: {exc}); pass the report.json of `evaluate --checkpoint ENS "
                         "--split val`") from None
    bad = [c for c, v in scales.items() if not (np.isfinite(v) and v > 0)]
    if bad:
        raise ValueError(f"--spread-scale-from {report_path}: no usable fitted scale for {', '.join(bad)} (the "
                         "validation rollouts decorrelated at once or the spread was off the histogram); pass "
                         "--spread-scale X instead")
    return scales


def load_ensemble(directory: Path, device: torch.device, spread_scale: float | Mapping[str, float],
                  identity_fn: Any, symmetrize: bool = False) -> tuple[Ensemble, dict[str, Any]]:
    """The members of ``directory`` (each its best.pt) and the report's ``checkpoint`` identity;
    ``symmetrize`` switches on every member's group averaging (``evaluate --symmetrize``).

    Members must share the architecture: an ensemble mixes predictions of one kind of model.
    """
    paths = member_checkpoints(directory)
    models = [load_model(p, device=device) for p in paths]
    if symmetrize:
        for model in models:
            model.symmetrize()
    identities = [identity_fn(p, m) for p, m in zip(paths, models, strict=True)]
    kinds = {(i["model_config"]["kind"], i["parameters"]) for i in identities}
    if len(kinds) > 1:
        raise ValueError(f"the members of {directory} are different models ({sorted(kinds)}); an ensemble's members "
                         "share one config: retrain the odd ones with the ensemble's config.yaml")
    first = identities[0]
    identity = {
        "path": str(directory.resolve()),
        "format": f"ensemble of {len(models)}",
        "model_config": first["model_config"],
        "parameters": first["parameters"],
        "trained_on": first["trained_on"],
        "members": identities,
    }
    return Ensemble(models, paths, spread_scale), identity


# --------------------------------------------------------------------------- rank 0: metrics


def member_climate(member_series: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray],
                   truth_autocorr: Mapping[str, np.ndarray], max_lag: int, divergence_factor: float) -> list[dict]:
    """Per member: divergent fraction and autocorrelation max/mean |member - truth| over its in-range rollouts."""
    out = []
    n_members = member_series[ORDER_KEYS[0]].shape[0]
    for k in range(n_members):
        model = {key: member_series[key][k] for key in ORDER_KEYS}
        kept = ~divergent_mask(model, {key: truth[key] for key in ORDER_KEYS}, divergence_factor)
        entry: dict[str, Any] = {"divergent_fraction": float(np.mean(~kept)), "autocorr_max_abs_error": {},
                                 "autocorr_mean_abs_error": {}}
        for key in ORDER_KEYS:
            gap = None
            if kept.any():
                try:
                    gap = np.abs(autocorrelation(model[key][kept], max_lag) - truth_autocorr[key])[1:]
                except ValueError:  # a constant series: undefined, reported as null
                    gap = None
            entry["autocorr_max_abs_error"][key] = None if gap is None else float(np.max(gap, initial=0.0))
            entry["autocorr_mean_abs_error"][key] = None if gap is None or gap.size == 0 else float(np.mean(gap))
        out.append(entry)
    return out


def ensemble_metrics(share: EnsembleShare, ensemble_rmse: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray],
                     truth_autocorr: Mapping[str, np.ndarray], ensemble_autocorr_error: Mapping[str, Any],
                     n_rollouts: int, n_sites: int, max_lag: int, divergence_factor: float,
                     trust_fraction: float, member_paths: Sequence[Path]) -> dict[str, Any]:
    """The report's ``ensemble`` section (see the module docstring)."""
    entries = component_entries(n_rollouts, n_sites)
    member_rmse = {c: np.sqrt(share.member_squared_errors[c] / entries[c]) for c in RMSE_COMPONENTS}  # [K, T+1]
    average_member = {c: member_rmse[c].mean(axis=0) for c in RMSE_COMPONENTS}
    below = {}
    for c in RMSE_COMPONENTS:
        mean_rmse, avg = np.asarray(ensemble_rmse[c])[1:], average_member[c][1:]  # step 0 is the exact state
        below[c] = {"fraction_of_steps": float(np.mean(mean_rmse < avg)) if mean_rmse.size else None,
                    "first_step_not_below": next((i + 1 for i, ok in enumerate(mean_rmse < avg) if not ok), None)}
    climate = member_climate(share.member_series, truth, truth_autocorr, max_lag, divergence_factor)
    members = [{"name": member_name(k), "checkpoint": str(path), **climate[k],
                "rmse_by_step": {c: member_rmse[c][k] for c in RMSE_COMPONENTS}}
               for k, path in enumerate(member_paths)]
    average_autocorr = {key: _mean_or_none([m["autocorr_max_abs_error"][key] for m in climate]) for key in ORDER_KEYS}
    return {"ensemble": {
        "K": len(member_paths),
        "rmse_by_step": {"ensemble_mean": dict(ensemble_rmse), "average_member": average_member},
        "ensemble_mean_below_average_member": below,
        "autocorr_max_abs_error": {"ensemble_mean": dict(ensemble_autocorr_error), "average_member": average_autocorr},
        "members": members,
        "calibration": calibration.summarize(share.calibration, trust_fraction=trust_fraction),
    }}


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if len(finite) == len(values) and finite else None


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """The ensemble's headline numbers for the terminal."""
    section = report.get("ensemble")
    if section is None:
        return []
    cal = section["calibration"]["components"]
    lines = [f"  ensemble of {section['K']}: the rows above are the ensemble mean; autocorr max |model-truth| of the "
             "average member: " + ", ".join(f"{k} {_fmt(v)}" for k, v in section["autocorr_max_abs_error"]
                                            ["average_member"].items())]
    lines.append(f"  {'':14s}{'mean<members':>14s}{'horizon':>9s}{'cover 1s':>10s}{'cover 2s':>10s}"
                 f"{'spread/skill':>14s}{'corr':>8s}{'fit scale':>11s}")
    for c in RMSE_COMPONENTS:
        comp, below = cal[c], section["ensemble_mean_below_average_member"][c]
        lines.append(f"  {c:14s}{_fmt(below['fraction_of_steps']):>14s}{comp['horizon']:>9d}"
                     f"{_fmt(comp['coverage_1sigma']):>10s}{_fmt(comp['coverage_2sigma']):>10s}"
                     f"{_fmt(comp['spread_skill_ratio']):>14s}{_fmt(comp['spread_skill_correlation']):>8s}"
                     f"{_fmt(comp['fitted_spread_scale']):>11s}")
    return lines


def _fmt(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.3g}"
