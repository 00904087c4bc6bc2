"""Calibration of an ensemble of K surrogate models rolled out from the same initial states.

An ensemble is useful only if its spread says how far the truth is from its mean. This module
measures that from rollouts of K members and the ground truth, in three layers:

1. ``component_values`` flattens a state (rho, Q, P) into real scalars ("entries") per error
   component (``holstein_dist.metrics.RMSE_COMPONENTS``): rho's diagonal (real part, L entries),
   rho's off-diagonal (real and imaginary parts, 2 L (L-1) entries), Q and P (L each).
2. ``accumulate`` reduces one batch of rollouts to a ``CalibrationSums`` of plain numpy arrays that
   pickles cheaply; ``merge`` joins the sums of several batches or ranks (rollout order = list order).
3. ``summarize`` turns the sums into a JSON-able report; ``calibration_figures`` plots it.

**Predictive spread.** With members m_1..m_K, mean m and ddof=1 standard deviation s, the spread is
``c s`` with ``c = sqrt((K+1)/K) * spread_scale``. Why (K+1)/K: if the truth y and the members are
exchangeable draws of N(mu, sigma^2) (a calibrated ensemble), ``y - m`` has variance
``sigma^2 (1 + 1/K)``, not sigma^2, because the mean itself is uncertain. Without the factor a
perfectly calibrated 5-member ensemble would look under-dispersed by 10 %. With it, ``(y - m)/(c s)``
follows Student's t with K-1 degrees of freedom (for spread_scale = 1), so the coverage of
``|y - m| <= z c s`` tends to the Gaussian value (0.6827 at z = 1) as K grows and is a known,
slightly smaller value for small K. This is the only coverage definition used here; K is stored
so a reader can compare with the finite-K value. ``spread_scale`` is a temperature per component (or
one number for all): fit it on a validation split (``summarize(...)["components"][c]["fitted_spread_scale"]``)
and pass it on test. Per component, because the members' dispersion can differ by orders of magnitude
between rho's off-diagonal and Q (measured: fitted scales 3 to 300 in one deep-quench ensemble).

**Horizon.** After the rollouts have decorrelated from the truth (ensemble-mean RMSE at or above
the climatological std, ``clim_std``), errors and spreads both saturate at the climate and every
calibration statistic measures the climate, not the forecast. Statistics "over the horizon" are
therefore pooled over steps 1 .. horizon-1 only; step 0 (the exact initial state: zero spread,
zero error) is excluded everywhere.

Non-finite values (a diverged member) propagate into the sums: NaN squared errors, and ratios
that count as not covered. A NaN error or spread counts as a crossing of every threshold.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

from holstein_dist.metrics import RMSE_COMPONENTS, to_numpy

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "NOMINAL_1SIGMA",
    "NOMINAL_2SIGMA",
    "RATIO_EDGES",
    "CalibrationSums",
    "ComponentSums",
    "accumulate",
    "calibration_figures",
    "clim_std",
    "component_values",
    "merge",
    "reliability_figure",
    "spread_factor",
    "spread_vs_error_figure",
    "summarize",
]

NOMINAL_1SIGMA = 2.0 * NormalDist().cdf(1.0) - 1.0
"""Gaussian probability of |x - mu| <= sigma (0.6827): the 1-sigma coverage of a calibrated ensemble."""
NOMINAL_2SIGMA = 2.0 * NormalDist().cdf(2.0) - 1.0
"""Gaussian probability of |x - mu| <= 2 sigma (0.9545)."""

RATIO_EDGES = np.logspace(-3.0, 3.0, 301)
"""Bin edges of the histogram of r = |truth - mean| / (c s): 50 bins per decade from 1e-3 to 1e3, so
coverage at any level can be read back to ~0.1 % in z. Slot 0 counts r < 1e-3 (underflow), slot
len(RATIO_EDGES) counts r >= 1e3, infinite (zero spread, nonzero error) or NaN (overflow)."""
N_RATIO_SLOTS = len(RATIO_EDGES) + 1

DEFAULT_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)

# Largest number of float64 values of one member that accumulate() holds at once (32 MiB): the
# batch is worked through in blocks of rollouts so memory does not grow with the batch.
_CHUNK_VALUES = 1 << 22


# ---------------------------------------------------------------------------------------------- entries


def component_values(rho: Any, Q: Any, P: Any) -> dict[str, np.ndarray]:
    """Flatten states into real float64 entries per error component: ``[..., T+1, E_c]``.

    ``rho`` is ``[..., T+1, L, L]`` complex, ``Q`` and ``P`` are ``[..., T+1, L]``; leading dims
    (members, rollouts) are kept. The off-diagonal keeps both triangles although rho is Hermitian:
    the surrogate does not enforce Hermiticity, so both halves carry independent errors.
    """
    rho, q, p = to_numpy(rho), to_numpy(Q), to_numpy(P)
    if q.ndim < 2 or p.shape != q.shape or rho.shape != q.shape + q.shape[-1:]:
        raise ValueError(
            f"expected rho [..., T+1, L, L], Q and P [..., T+1, L]; got rho {rho.shape}, Q {q.shape}, P {p.shape}"
        )
    n_sites = q.shape[-1]
    if n_sites < 2:
        raise ValueError("rho needs L >= 2 sites to have off-diagonal entries")
    off = ~np.eye(n_sites, dtype=bool)
    rho_off = rho[..., off]  # [..., T+1, L(L-1)]
    values = (
        np.real(np.diagonal(rho, axis1=-2, axis2=-1)),
        np.concatenate([np.real(rho_off), np.imag(rho_off)], axis=-1),
        np.real(q),
        np.real(p),
    )
    return {name: np.asarray(v, dtype=np.float64) for name, v in zip(RMSE_COMPONENTS, values, strict=True)}


# ---------------------------------------------------------------------------------------------- sums


@dataclasses.dataclass
class ComponentSums:
    """Additive statistics of one component; per-step arrays have length T+1, per-rollout rows n.

    Sums over rollouts x entries per step: ``sq_err_mean`` (ensemble-mean error squared),
    ``sq_err_members`` (member errors squared, averaged over members), ``var`` (ddof=1 ensemble
    variance, without the spread factor), ``count`` (rollouts x entries); exact coverage counts
    ``covered_1``/``covered_2`` of ``|truth - mean| <= z c s`` for z = 1, 2; ``ratio_hist``
    ``[T+1, N_RATIO_SLOTS]`` histogram of r = ``|truth - mean| / (c s)`` over ``RATIO_EDGES``.
    Per rollout ``[n, T+1]``: ``spread_rms`` (RMS over entries of c s) and ``error_rms`` (RMS over
    entries of truth - mean). Per entry ``[E]``, pooled over rollouts and steps: ``truth_sum``,
    ``truth_sumsq`` and the scalar ``truth_count`` (rollouts x steps), for the climatological std.
    """

    sq_err_mean: np.ndarray
    sq_err_members: np.ndarray
    var: np.ndarray
    count: np.ndarray
    covered_1: np.ndarray
    covered_2: np.ndarray
    ratio_hist: np.ndarray
    spread_rms: np.ndarray
    error_rms: np.ndarray
    truth_sum: np.ndarray
    truth_sumsq: np.ndarray
    truth_count: int

    @property
    def n_steps(self) -> int:
        """T+1: number of stored snapshots per rollout, step 0 included."""
        return int(self.count.shape[0])

    @property
    def n_entries(self) -> int:
        return int(self.truth_sum.shape[0])


@dataclasses.dataclass
class CalibrationSums:
    """Mergeable calibration statistics of an ensemble of ``k`` members over some rollouts.

    ``spread_scale`` (component -> temperature) is what the spreads, coverages and ratios were computed
    with; sums made with different K or spread scales cannot be merged.
    """

    k: int
    spread_scale: dict[str, float]
    components: dict[str, ComponentSums]

    @property
    def n_rollouts(self) -> int:
        return int(next(iter(self.components.values())).spread_rms.shape[0])

    def spread_factor(self, name: str) -> float:
        """c = sqrt((K+1)/K) * spread_scale of component ``name``: multiplies its ddof=1 member std."""
        return spread_factor(self.k, self.spread_scale[name])


def spread_factor(k: int, spread_scale: float) -> float:
    """c = sqrt((K+1)/K) * spread_scale (see the module docstring for why (K+1)/K)."""
    return math.sqrt((k + 1) / k) * float(spread_scale)


def _check_batch(members: Mapping[str, Any], truth: Mapping[str, Any]) -> tuple[dict, dict]:
    """Arrays of a batch, with the shapes checked; raises ValueError saying which one is wrong."""
    if not members:
        raise ValueError("members is empty: expected a dict component -> [K, n, T+1, E]")
    if set(members) != set(truth):
        raise ValueError(f"members and truth must have the same components, got {sorted(members)} vs {sorted(truth)}")
    # The report's component order (RMSE_COMPONENTS) first, any other names after, as given.
    names = sorted(members, key=lambda n: RMSE_COMPONENTS.index(n) if n in RMSE_COMPONENTS else len(RMSE_COMPONENTS))
    mem = {name: to_numpy(members[name]) for name in names}
    tru = {name: to_numpy(truth[name]) for name in names}
    first = None
    for name in mem:
        m, t = mem[name], tru[name]
        if np.iscomplexobj(m) or np.iscomplexobj(t):
            raise ValueError(f"{name}: calibration needs real entries (use component_values), got complex")
        if m.ndim != 4:
            raise ValueError(f"members[{name!r}] must be [K, n, T+1, E], got shape {m.shape}")
        if t.ndim != 3:
            raise ValueError(f"truth[{name!r}] must be [n, T+1, E], got shape {t.shape}")
        if m.shape[1:] != t.shape:
            raise ValueError(f"{name}: members {m.shape} do not match truth {t.shape} (expected [K, *truth.shape])")
        if m.shape[0] < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got K={m.shape[0]} for {name}")
        if 0 in t.shape:
            raise ValueError(f"{name}: empty truth of shape {t.shape}")
        if first is None:
            first = (name, m.shape[:3])
        elif m.shape[:3] != first[1]:
            raise ValueError(
                f"{name}: [K, n, T+1] = {m.shape[:3]} differs from {first[0]}'s {first[1]}; components must agree"
            )
    return mem, tru


def scales_by_component(spread_scale: float | Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
    """One temperature per component: a number applies to all; a mapping must name every component."""
    if isinstance(spread_scale, Mapping):
        missing = [n for n in names if n not in spread_scale]
        if missing:
            raise ValueError(f"spread_scale has no value for {', '.join(missing)}; give one per component or a number")
        scales = {n: float(spread_scale[n]) for n in names}
    else:
        scales = dict.fromkeys(names, float(spread_scale))
    for name, value in scales.items():
        if not (math.isfinite(value) and value > 0.0):
            raise ValueError(f"spread_scale must be finite and > 0, got {value} for {name}")
    return scales


def accumulate(members: Mapping[str, Any], truth: Mapping[str, Any],
               spread_scale: float | Mapping[str, float] = 1.0) -> CalibrationSums:
    """Reduce one batch to mergeable sums.

    ``members``: component -> ``[K, n, T+1, E]``; ``truth``: component -> ``[n, T+1, E]`` (both as
    from ``component_values``; numpy arrays or torch tensors, any real float dtype). Works in blocks
    of rollouts so the float64 scratch stays a few member-blocks of ~32 MiB whatever the batch size.
    """
    mem, tru = _check_batch(members, truth)
    scales = scales_by_component(spread_scale, list(mem))
    k = int(next(iter(mem.values())).shape[0])
    return CalibrationSums(k, scales, {name: _accumulate_component(mem[name], tru[name], spread_factor(k, scales[name]))
                                       for name in mem})


def _accumulate_component(members: np.ndarray, truth: np.ndarray, c: float) -> ComponentSums:
    k, n, n_steps, n_entries = members.shape
    sums = _empty_component(n, n_steps, n_entries)
    block = max(1, _CHUNK_VALUES // (n_steps * n_entries))
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        _add_block(sums, members[:, rows], truth[rows].astype(np.float64), c, rows)
    sums.truth_count = n * n_steps
    return sums


def _empty_component(n: int, n_steps: int, n_entries: int) -> ComponentSums:
    return ComponentSums(
        sq_err_mean=np.zeros(n_steps),
        sq_err_members=np.zeros(n_steps),
        var=np.zeros(n_steps),
        count=np.zeros(n_steps, dtype=np.int64),
        covered_1=np.zeros(n_steps, dtype=np.int64),
        covered_2=np.zeros(n_steps, dtype=np.int64),
        ratio_hist=np.zeros((n_steps, N_RATIO_SLOTS), dtype=np.int64),
        spread_rms=np.zeros((n, n_steps)),
        error_rms=np.zeros((n, n_steps)),
        truth_sum=np.zeros(n_entries),
        truth_sumsq=np.zeros(n_entries),
        truth_count=0,
    )


def _mean_and_var(members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ensemble mean and ddof=1 variance, member by member (two passes: stable, no [K, ...] copy)."""
    k = members.shape[0]
    mean = np.zeros(members.shape[1:])
    for i in range(k):
        mean += members[i]
    mean /= k
    var = np.zeros_like(mean)
    for i in range(k):
        dev = members[i] - mean
        var += dev * dev
    var /= k - 1
    return mean, var


def _add_block(sums: ComponentSums, members: np.ndarray, truth: np.ndarray, c: float, rows: slice) -> None:
    """Add the statistics of a block of rollouts (members [K, b, T+1, E], truth [b, T+1, E])."""
    k = members.shape[0]
    mean, var = _mean_and_var(members)
    err = truth - mean
    del mean
    sq_err = err * err
    # sum_k (m_k - y)^2 / K = (m - y)^2 + (K-1)/K var: the members' error without another pass.
    sums.sq_err_mean += sq_err.sum(axis=(0, 2))
    sums.sq_err_members += sq_err.sum(axis=(0, 2)) + (k - 1) / k * var.sum(axis=(0, 2))
    sums.var += var.sum(axis=(0, 2))
    sums.count += err.shape[0] * err.shape[2]
    sums.spread_rms[rows] = c * np.sqrt(var.mean(axis=2))
    sums.error_rms[rows] = np.sqrt(sq_err.mean(axis=2))
    del sq_err
    ratio = _ratio(np.abs(err), c * np.sqrt(var))
    del err, var
    sums.covered_1 += (ratio <= 1.0).sum(axis=(0, 2))
    sums.covered_2 += (ratio <= 2.0).sum(axis=(0, 2))
    sums.ratio_hist += _ratio_histogram(ratio)
    sums.truth_sum += truth.sum(axis=(0, 1))
    sums.truth_sumsq += (truth * truth).sum(axis=(0, 1))


def _ratio(abs_err: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """r = |err| / spread; 0 where both vanish (an exact, certain prediction), inf for 0 spread only."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = abs_err / spread
    ratio[(spread == 0) & (abs_err == 0)] = 0.0
    return ratio


def _ratio_histogram(ratio: np.ndarray) -> np.ndarray:
    """Per-step counts ``[T+1, N_RATIO_SLOTS]`` of ratio ``[b, T+1, E]`` over RATIO_EDGES (NaN: overflow)."""
    n_steps = ratio.shape[1]
    slots = np.searchsorted(RATIO_EDGES, ratio, side="right")
    slots += (np.arange(n_steps) * N_RATIO_SLOTS)[None, :, None]
    return np.bincount(slots.ravel(), minlength=n_steps * N_RATIO_SLOTS).reshape(n_steps, N_RATIO_SLOTS)


def merge(parts: Sequence[CalibrationSums]) -> CalibrationSums:
    """Join the sums of several batches or ranks; per-rollout rows are concatenated in list order."""
    parts = list(parts)
    if not parts:
        raise ValueError("merge needs at least one CalibrationSums")
    first = parts[0]
    for part in parts[1:]:
        if part.k != first.k or part.spread_scale != first.spread_scale:
            raise ValueError(
                f"cannot merge sums of K={part.k}, spread_scale={part.spread_scale} with "
                f"K={first.k}, spread_scale={first.spread_scale}"
            )
        if list(part.components) != list(first.components):
            raise ValueError(f"cannot merge components {list(part.components)} with {list(first.components)}")
    return CalibrationSums(
        first.k,
        first.spread_scale,
        {name: _merge_component([p.components[name] for p in parts], name) for name in first.components},
    )


def _merge_component(parts: list[ComponentSums], name: str) -> ComponentSums:
    shape = (parts[0].n_steps, parts[0].n_entries)
    for part in parts:
        if (part.n_steps, part.n_entries) != shape:
            raise ValueError(f"{name}: cannot merge [T+1, E] = {(part.n_steps, part.n_entries)} with {shape}")
    added = {
        field: sum(getattr(p, field) for p in parts[1:]) + getattr(parts[0], field)
        for field in ("sq_err_mean", "sq_err_members", "var", "count", "covered_1", "covered_2", "ratio_hist",
                      "truth_sum", "truth_sumsq", "truth_count")
    }
    return ComponentSums(
        spread_rms=np.concatenate([p.spread_rms for p in parts]),
        error_rms=np.concatenate([p.error_rms for p in parts]),
        **added,
    )


# ---------------------------------------------------------------------------------------------- summary


def _div(num: float, den: float) -> float:
    return float(num) / float(den) if den != 0 else math.nan


def _floats(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN with fewer than 3 points, non-finite values or a constant series."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 3 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    den = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / den if den > 0 else math.nan


def clim_std(sums: ComponentSums) -> float:
    """sqrt(mean over entries of the truth's variance over rollouts and steps): the error scale of a
    forecast that knows nothing but the climate, against which the horizon and trust are measured."""
    mean = sums.truth_sum / sums.truth_count
    var = np.maximum(sums.truth_sumsq / sums.truth_count - mean * mean, 0.0)
    return float(np.sqrt(var.mean()))


def _horizon(rmse_mean: np.ndarray, clim: float) -> int:
    """First step >= 1 with rmse_mean >= clim (a NaN RMSE counts); T+1 when never."""
    crossed = ~(rmse_mean[1:] < clim)
    return int(np.argmax(crossed)) + 1 if crossed.any() else len(rmse_mean)


def _first_exceedance(series: np.ndarray, threshold: float) -> np.ndarray:
    """Per row of ``[n, T+1]``: first step >= 1 with value > threshold (NaN counts), else T+1."""
    above = ~(series[:, 1:] <= threshold)
    return np.where(above.any(axis=1), np.argmax(above, axis=1) + 1, series.shape[1])


def _histogram_cdf(counts: np.ndarray, z: float) -> float:
    """Fraction of r <= z from pooled slot counts, log-linear inside the bin that holds z.

    Below the grid (z < 1e-3, a level under 0.1 %) the whole underflow slot is counted: an upper bound.
    """
    total = counts.sum()
    if total == 0:
        return math.nan
    if z < RATIO_EDGES[0]:
        return _div(counts[0], total) if z > 0 else math.nan
    if z >= RATIO_EDGES[-1]:
        return _div(total - counts[-1], total)
    j = int(np.searchsorted(RATIO_EDGES, z, side="right")) - 1  # bin j = slot j+1 = [e_j, e_j+1)
    frac = math.log(z / RATIO_EDGES[j]) / math.log(RATIO_EDGES[j + 1] / RATIO_EDGES[j])
    return float(counts[: j + 1].sum() + frac * counts[j + 1]) / float(total)


def _histogram_quantile(counts: np.ndarray, q: float) -> float:
    """r such that a fraction q of the pooled ratios lie below it; NaN if it falls outside the grid."""
    total = counts.sum()
    if total == 0:
        return math.nan
    at_edges = np.cumsum(counts[:-1]) / total  # CDF at RATIO_EDGES[i], i = 0..len-1
    if q <= at_edges[0] or q > at_edges[-1]:
        return math.nan
    i = int(np.searchsorted(at_edges, q, side="left")) - 1  # at_edges[i] < q <= at_edges[i+1]
    frac = (q - at_edges[i]) / (at_edges[i + 1] - at_edges[i])
    return float(RATIO_EDGES[i] * (RATIO_EDGES[i + 1] / RATIO_EDGES[i]) ** frac)


def _by_step(sums: ComponentSums, c: float) -> dict[str, np.ndarray]:
    count = sums.count.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rmse_mean = np.sqrt(sums.sq_err_mean / count)
        spread = c * np.sqrt(sums.var / count)
        return {
            "rmse_mean_by_step": rmse_mean,
            "rmse_members_by_step": np.sqrt(sums.sq_err_members / count),
            "spread_by_step": spread,
            "spread_skill_ratio_by_step": spread / rmse_mean,
            "coverage_1sigma_by_step": sums.covered_1 / count,
            "coverage_2sigma_by_step": sums.covered_2 / count,
        }


def _over_horizon(sums: ComponentSums, steps: slice, by_step: dict[str, np.ndarray], c: float) -> dict[str, Any]:
    """Statistics pooled over the horizon steps (1 .. horizon-1)."""
    count = sums.count[steps].sum()
    below = by_step["rmse_mean_by_step"][steps] < by_step["rmse_members_by_step"][steps]
    spread_r = np.sqrt(np.mean(sums.spread_rms[:, steps] ** 2, axis=1)) if below.size else np.array([])
    error_r = np.sqrt(np.mean(sums.error_rms[:, steps] ** 2, axis=1)) if below.size else np.array([])
    return {
        "coverage_1sigma": _div(sums.covered_1[steps].sum(), count),
        "coverage_2sigma": _div(sums.covered_2[steps].sum(), count),
        "spread_skill_ratio": _div(c * math.sqrt(sums.var[steps].sum()), math.sqrt(sums.sq_err_mean[steps].sum())),
        "mean_error_below_members_fraction": float(below.mean()) if below.size else math.nan,
        "spread_skill_correlation": _pearson(spread_r, error_r),
    }


def _reliability(sums: ComponentSums, steps: slice, levels: Sequence[float], spread_scale: float) -> dict[str, Any]:
    """Observed central coverage at each nominal level, and the spread_scale that makes 2 sigma nominal."""
    counts = sums.ratio_hist[steps].sum(axis=0)
    normal = NormalDist()
    observed = [_histogram_cdf(counts, normal.inv_cdf((1.0 + p) / 2.0)) for p in levels]
    # Multiplying the spread by a maps r -> r / a; coverage at z = 2 is nominal when a = q_0.9545(r) / 2.
    factor = _histogram_quantile(counts, NOMINAL_2SIGMA) / 2.0
    return {
        "reliability": {"nominal": [float(p) for p in levels], "observed": observed},
        "fitted_spread_scale": spread_scale * factor,
    }


def _trust(sums: ComponentSums, clim: float, trust_fraction: float) -> dict[str, Any]:
    """Per rollout: when the spread first exceeds tau (trust horizon) vs when the error does."""
    tau = trust_fraction * clim
    trust = _first_exceedance(sums.spread_rms, tau)
    crossing = _first_exceedance(sums.error_rms, tau)
    return {
        "threshold": float(tau),
        "trust_horizon_median": float(np.median(trust)),
        "error_crossing_median": float(np.median(crossing)),
        "correlation": _pearson(trust, crossing),
        "warned_in_time_fraction": float(np.mean(trust <= crossing)),
        "mean_abs_difference": float(np.mean(np.abs(trust - crossing))),
        "trust_horizon": [int(v) for v in trust],
        "error_crossing": [int(v) for v in crossing],
    }


def _summarize_component(sums: ComponentSums, c: float, spread_scale: float, trust_fraction: float,
                         levels: Sequence[float]) -> dict[str, Any]:
    by_step = _by_step(sums, c)
    clim = clim_std(sums)
    horizon = _horizon(by_step["rmse_mean_by_step"], clim)
    steps = slice(1, horizon)
    out: dict[str, Any] = {name: _floats(values) for name, values in by_step.items()}
    out.update({"clim_std": clim, "horizon": horizon})
    out.update(_over_horizon(sums, steps, by_step, c))
    out.update(_reliability(sums, steps, levels, spread_scale))
    out["trust"] = _trust(sums, clim, trust_fraction)
    return out


def summarize(sums: CalibrationSums, *, trust_fraction: float = 0.5,
              levels: Sequence[float] = DEFAULT_LEVELS) -> dict[str, Any]:
    """JSON-able calibration report (NaN where a statistic is undefined; ``json.dumps`` writes NaN).

    Top level: ``K``, ``spread_scale``, ``trust_fraction``, ``levels``, ``n_rollouts``,
    ``nominal_1sigma``/``nominal_2sigma`` and ``components`` -> name -> statistics: per step
    (``*_by_step``, length T+1), ``clim_std``, ``horizon``, pooled over steps 1..horizon-1
    (coverages, spread-skill ratio and correlation, ``mean_error_below_members_fraction``,
    ``reliability``, ``fitted_spread_scale``: the absolute spread_scale to pass to ``accumulate`` so
    that the 2-sigma coverage over the horizon is nominal), and ``trust`` (threshold
    ``trust_fraction * clim_std``; per-rollout trust horizons and error crossings, censored at T+1).
    """
    for p in levels:
        if not 0.0 < p < 1.0:
            raise ValueError(f"coverage levels must lie in (0, 1), got {p}")
    return {
        "K": int(sums.k),
        "spread_scale": dict(sums.spread_scale),
        "trust_fraction": float(trust_fraction),
        "levels": [float(p) for p in levels],
        "n_rollouts": sums.n_rollouts,
        "nominal_1sigma": NOMINAL_1SIGMA,
        "nominal_2sigma": NOMINAL_2SIGMA,
        "components": {
            name: _summarize_component(comp, sums.spread_factor(name), sums.spread_scale[name], trust_fraction,
                                       levels)
            for name, comp in sums.components.items()
        },
    }


# ---------------------------------------------------------------------------------------------- plots


def calibration_figures(summary: Mapping[str, Any], snapshot_dt: float) -> dict[str, Figure]:
    """``spread_vs_error`` (per component, against time) and ``reliability`` figures of a summary."""
    return {
        "spread_vs_error": spread_vs_error_figure(summary, snapshot_dt),
        "reliability": reliability_figure(summary),
    }


def _label(name: str) -> str:
    from holstein_dist.report import RMSE_LABELS

    return RMSE_LABELS.get(name, name)


def spread_vs_error_figure(summary: Mapping[str, Any], snapshot_dt: float) -> Figure:
    """Ensemble-mean RMSE, members' RMSE and spread against time; step 0 (all zero) is left out of
    the log axis, and a dotted line marks the decorrelation horizon."""
    from holstein_dist.report import _figure

    components = summary["components"]
    fig = _figure(len(components), width=4.5, height=3.6)
    axes = np.atleast_1d(fig.subplots(1, len(components)))
    for ax, (name, comp) in zip(axes, components.items()):
        t = np.arange(len(comp["rmse_mean_by_step"])) * snapshot_dt
        for key, label, style in (("rmse_mean_by_step", "ensemble-mean RMSE", "-"),
                                  ("rmse_members_by_step", "members' RMSE", ":"),
                                  ("spread_by_step", "spread", "--")):
            ax.plot(t[1:], np.asarray(comp[key], dtype=float)[1:], linestyle=style, label=label)
        ax.axhline(comp["clim_std"], color="grey", linewidth=0.5)
        if comp["horizon"] < len(t):
            ax.axvline(comp["horizon"] * snapshot_dt, color="black", linestyle=":", linewidth=1.0, label="horizon")
        ax.set(yscale="log", xlabel="time (1/t)", ylabel="RMS", title=_label(name))
    axes[0].legend()
    return fig


def reliability_figure(summary: Mapping[str, Any]) -> Figure:
    """Observed against nominal central coverage over the horizon; calibrated = on the diagonal."""
    from holstein_dist.report import _figure

    fig = _figure(1, width=4.5, height=4.5)
    ax = fig.subplots()
    ax.plot([0.0, 1.0], [0.0, 1.0], color="grey", linewidth=0.8, label="calibrated")
    for name, comp in summary["components"].items():
        rel = comp["reliability"]
        scale = summary["spread_scale"][name]
        ax.plot(rel["nominal"], rel["observed"], marker="o", markersize=3,
                label=_label(name) + ("" if scale == 1.0 else f" (x{scale:.3g})"))
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal coverage", ylabel="observed coverage (over the horizon)",
           title=f"reliability (K={summary['K']}, spread scaled per component)")
    ax.legend()
    return fig
