"""How much of the climate test is sampling noise.

The autocorrelation error ``max_tau |C_model - C_truth|`` is measured on a finite test split, and in the chaotic
deep quench N rollouts against N truths leave a floor that even a perfect model would not get under: measured
on the deep L = 32 test truth, two independent 32-trajectory halves differ by 0.09 (docs/training.md). Two
numbers make the report's error readable against a target like 0.1:

- the **noise floor**: what a perfect model would score at this many rollouts, from the truth alone;
- the **bootstrap spread** of the model's own error: how far it would move on another test split of this size.

Both reweight the trajectories of one :class:`holstein_dist.metrics.LagSums` per series, so hundreds of
resamples cost a few matrix products, not hundreds of FFTs. Seeded: a report is reproducible.

The same question for a comparison of two models at one rollout step: how far the ratio of their RMSEs would move
on another test split of this size (:func:`rmse_ratio_interval`, over the rollouts' own errors).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from holstein_dist.metrics import LagSums

FLOOR_SPLITS = 64
"""Random half-splits of the truth whose median gives the noise floor."""
BOOTSTRAP_RESAMPLES = 400
"""Paired resamples of (rollout, truth trajectory) behind the bootstrap spread."""
SAMPLING_SEED = 20261201


def max_gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``max over lags 1.. of |a - b|`` along the last axis (lag 0 is 1 on both sides)."""
    return np.max(np.abs(a - b)[..., 1:], axis=-1, initial=0.0)


def lag_sums(x: Any, max_lag: int) -> LagSums:
    """``x``'s :class:`LagSums`, or ``x`` itself when it already is one for ``max_lag`` (the evaluator builds the
    truth's once for both functions below)."""
    if isinstance(x, LagSums):
        if x.max_lag != max_lag:
            raise ValueError(f"lag sums up to lag {x.max_lag} given for max_lag {max_lag}")
        return x
    return LagSums(x, max_lag)


def autocorrelation_noise_floor(truth: Any, max_lag: int, splits: int = FLOOR_SPLITS,
                                seed: int = SAMPLING_SEED) -> float | None:
    """The autocorrelation error a perfect model would show against ``truth`` (``[N, T]``, or its
    :class:`LagSums`) with N rollouts.

    Estimated as the median over random half-splits of the truth of the two halves' ``max_gap``, divided by
    sqrt(2): an ensemble estimate's variance falls as 1/N, so two halves (N/2 against N/2) differ by sqrt(2)
    times as much as two independent samples of N each. A model's rollouts start from the truth's initial
    states, so their early times are not independent of it; the floor is for the chaotic regime, where they
    decorrelate within the first lags. None when N < 4 (no two halves of two).
    """
    sums = lag_sums(truth, max_lag)
    n = sums.n_traj
    if n < 4:
        return None
    rng = np.random.default_rng(seed)
    first = np.zeros((splits, n))
    for row in first:
        row[rng.permutation(n)[: n // 2]] = 1.0
    second = 1.0 - first
    if n % 2:  # equal halves: leave one trajectory out of the larger one
        for row in second:
            row[rng.choice(np.flatnonzero(row))] = 0.0
    gaps = max_gap(sums.autocorrelation(first), sums.autocorrelation(second))
    return float(np.median(gaps) / np.sqrt(2.0))


def autocorrelation_error_bootstrap(model: Any, truth: Any, max_lag: int, kept: Any = None,
                                    resamples: int = BOOTSTRAP_RESAMPLES,
                                    seed: int = SAMPLING_SEED) -> dict[str, float] | None:
    """The spread of ``max_gap(C_model, C_truth)`` over paired bootstrap resamples of the rollouts.

    ``truth`` is ``[N, T]`` (or its :class:`LagSums`); ``model`` holds the rollouts that ``kept`` (``[N]`` bool,
    default all) marks as staying in the physical range, ``[kept.sum(), T]``, as the report's climate metrics use
    them. Each resample draws N indices with replacement, each rollout with its own truth trajectory (a diverged
    one counts for the truth only, as in the report). Returns ``{"std", "p05", "p95"}`` of the resampled errors,
    or None when fewer than two rollouts were kept.
    """
    truth_sums = lag_sums(truth, max_lag)
    n = truth_sums.n_traj
    kept = np.ones(n, dtype=bool) if kept is None else np.asarray(kept, dtype=bool)
    if kept.shape != (n,):
        raise ValueError(f"kept has shape {kept.shape}; give one flag per truth trajectory ({n})")
    if kept.sum() < 2:
        return None
    model_sums = LagSums(model, max_lag)
    if model_sums.n_traj != kept.sum():
        raise ValueError(f"model has {model_sums.n_traj} rollouts but kept marks {int(kept.sum())}")
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
    counts = counts[counts[:, kept].sum(axis=1) > 0]  # a resample with no kept rollout has no model curve
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample of identical constant rows: no curve
        gaps = max_gap(model_sums.autocorrelation(counts[:, kept]), truth_sums.autocorrelation(counts))
    gaps = gaps[np.isfinite(gaps)]
    if gaps.size < 2:
        return None
    return {"std": float(np.std(gaps, ddof=1)), "p05": float(np.quantile(gaps, 0.05)),
            "p95": float(np.quantile(gaps, 0.95))}


RATIO_RESAMPLES = 2000
"""Paired resamples of the rollouts behind an RMSE ratio's interval (a matrix product each: cheap)."""


def rmse_ratio_interval(model_mse: Any, reference_mse: Any, level: float = 0.95, resamples: int = RATIO_RESAMPLES,
                        seed: int = SAMPLING_SEED) -> tuple[float, float, float]:
    """How far ``RMSE(model) / RMSE(reference)`` at one step would move on another test split of this size.

    ``model_mse`` and ``reference_mse`` are each rollout's mean squared error, the two models on the same rollouts
    in the same order. Both are resampled with the same rollouts (a paired bootstrap), since the rollouts' own
    difficulty moves both errors together. Returns the ratio's central ``level`` interval and the fraction of
    resamples in which the model is at least as accurate (ratio <= 1); NaN throughout where a value is not finite.
    """
    a = np.asarray(model_mse, dtype=np.float64)
    b = np.asarray(reference_mse, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"need one mean squared error per rollout for both models; got shapes {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return math.nan, math.nan, math.nan
    weights = np.random.default_rng(seed).multinomial(a.size, np.full(a.size, 1.0 / a.size), size=resamples)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.sqrt((weights @ a) / (weights @ b))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(ratio, [tail, 1.0 - tail])
    return float(low), float(high), float(np.mean(ratio <= 1.0))
