"""Evaluation metrics: ensemble autocorrelation, divergence test, RMSE per step, climate distances.

Every function is pure: arrays in (numpy, or torch tensors on any device), numpy arrays or floats
out, always computed in float64 so that a metric never depends on the storage precision of the
shards (complex64 by default) or of a model's output. The definitions follow docs/physics.md section 3; where
docs/physics.md leaves a choice open, the docstring says which choice is made and why.

The order parameters phi_n (``charge_order``) and phi_Q (``lattice_order``) live in
``holstein_dist.physics``; they are re-exported here so that evaluation code can take every metric
ingredient from one module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from holstein_dist.physics import STATE_KEYS, charge_order, lattice_order

__all__ = [
    "LagSums",
    "autocorrelation",
    "autocorrelation_direct",
    "charge_order",
    "coherent_error",
    "component_entries",
    "divergent_fraction",
    "divergent_mask",
    "energy_drift",
    "fast_cut",
    "fast_part",
    "lattice_order",
    "power_spectrum",
    "power_spectrum_distance",
    "rmse_by_step",
    "slow_fit",
    "squared_errors_by_rollout",
    "structure_factor",
    "structure_factor_multiplicity",
    "structure_factor_peak",
    "swing_by_part",
    "wavevectors",
    "wasserstein1",
]

RMSE_COMPONENTS = ("rho_diag", "rho_offdiag", "Q", "P")
"""The four error components of a state, in this order everywhere: training loss terms, TensorBoard tags
(``train/rho_offdiag``), the report's ``rmse_by_step`` keys."""
ORDER_KEYS = ("charge", "lattice")
"""The CDW order parameters (q = pi) whose series the climate metrics compare: ``charge_order``, ``lattice_order``."""

# Largest number of complex entries handled at once by rmse_by_step: bounds its scratch memory
# (~256 MiB of complex128) whatever the size of the rollout ensemble.
_RMSE_CHUNK_ENTRIES = 1 << 24


def to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a numpy array; torch tensors are detached and copied to the host first.

    Duck-typed on ``detach`` so that this module never imports torch: evaluation tools that only
    read shards should not pay for it.
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if hasattr(x, "resolve_conj"):
            x = x.resolve_conj()
        return x.numpy()
    return np.asarray(x)


def _as_real_float64(x: Any, name: str) -> np.ndarray:
    """Real float64 copy-or-view of ``x``; a complex input is an error, not a silent real part."""
    arr = to_numpy(x)
    if np.iscomplexobj(arr):
        raise ValueError(f"{name} must be real-valued, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _as_ensemble(x: Any, name: str) -> np.ndarray:
    """Return a scalar series ensemble as float64 ``[N, T]``; a 1-D series is one trajectory."""
    arr = _as_real_float64(x, name)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape [N trajectories, T times] or [T], got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    return arr


def _require_finite(arr: np.ndarray, name: str) -> None:
    """Refuse NaN/inf early: they would otherwise poison a pooled mean without any message."""
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf; drop divergent rollouts before computing this metric")


# ----------------------------------------------------------------------------------------------
# Autocorrelation
# ----------------------------------------------------------------------------------------------


def _check_lag(max_lag: int, n_times: int) -> int:
    """Validate ``0 <= max_lag < T``: longer lags have no pair (t, t + tau) inside the series."""
    if isinstance(max_lag, bool) or int(max_lag) != max_lag:
        raise ValueError(f"max_lag must be an integer, got {max_lag!r}")
    max_lag = int(max_lag)
    if max_lag < 0:
        raise ValueError(f"max_lag must be >= 0, got {max_lag}")
    if max_lag >= n_times:
        raise ValueError(
            f"max_lag={max_lag} needs series longer than {max_lag} steps, but T={n_times}; "
            f"use max_lag <= {n_times - 1}"
        )
    return max_lag


def _prepare_autocorrelation_input(x: Any, max_lag: int) -> tuple[np.ndarray, int]:
    """Shared validation of both autocorrelation implementations, so they fail identically."""
    arr = _as_ensemble(x, "x")
    _require_finite(arr, "x")
    max_lag = _check_lag(max_lag, arr.shape[1])
    if np.ptp(arr) == 0.0:
        raise ValueError("x is constant (zero variance): its autocorrelation is undefined")
    return arr, max_lag


def next_fast_len(n: int) -> int:
    """Smallest 5-smooth integer (2^a 3^b 5^c) >= n: pocketfft is fastest on such lengths."""
    if n <= 1:
        return 1
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            # smallest power of two that lifts p35 to >= n
            quotient = -(-n // p35)
            candidate = p35 * (1 << (quotient - 1).bit_length())
            best = min(best, candidate)
            p35 *= 3
        p5 *= 5
    return best


def lagged_product_sums(y: np.ndarray, max_lag: int, per_trajectory: bool = False) -> np.ndarray:
    """``S[tau] = sum_n sum_{t < T - tau} y[n, t] y[n, t + tau]`` for tau = 0..max_lag, by FFT.

    Zero padding to at least ``T + max_lag`` makes the circular correlation equal the linear one for
    every lag returned. The power spectra are summed over trajectories before the single inverse
    transform, so the cost is N forward FFTs plus one inverse. ``per_trajectory`` keeps one row per
    trajectory (``[N, max_lag + 1]``, N inverse transforms): the sums that resampled ensembles reweight.
    """
    n_fft = next_fast_len(y.shape[1] + max_lag)
    spectrum = np.fft.rfft(y, n=n_fft, axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    if not per_trajectory:
        power = np.sum(power, axis=0)
    return np.fft.irfft(power, n=n_fft)[..., : max_lag + 1]


def _pooled_correlation(pair: np.ndarray, head: np.ndarray, tail: np.ndarray, total: np.ndarray,
                        squares: np.ndarray, n_traj: np.ndarray, n_times: int, offset: float) -> np.ndarray:
    """``C[..., tau]`` of docs/physics.md section 3 from sums over (weighted) trajectories of ``y = x - offset``.

    ``pair``, ``head``, ``tail`` are ``[..., max_lag + 1]`` (lagged products, sums of y over ``t < T - tau``
    and over ``t >= tau``); ``total``, ``squares``, ``n_traj`` are ``[...]`` (sum of y, of y^2, trajectory
    count). With ``d`` the pooled mean of y, ``x = y + offset`` gives ``<x x'> - <x>^2 =
    <y y'> + offset (<y>_head + <y>_tail - 2 d) - d^2`` and ``<x^2> - <x>^2 = <y^2> - d^2``: no cancellation
    when ``offset`` is near the pooled mean of x.
    """
    lags = np.arange(pair.shape[-1])
    n_traj = np.asarray(n_traj, dtype=np.float64)[..., None]
    shift = np.asarray(total)[..., None] / (n_traj * n_times)
    covariance = (pair + offset * (head + tail)) / (n_traj * (n_times - lags)) - shift * (2.0 * offset + shift)
    variance = np.asarray(squares)[..., None] / (n_traj * n_times) - shift**2
    return covariance / variance


class LagSums:
    """Per-trajectory sufficient statistics of the pooled autocorrelation of an ``[N, T]`` ensemble.

    ``autocorrelation(weights)`` gives the ensemble autocorrelation of any reweighting of the N
    trajectories (bootstrap counts, a subset as 0/1, many at once as ``[B, N]``) by matrix products,
    without another FFT: the statistics are linear in the weights. All weights 1 is
    :func:`autocorrelation`.
    """

    def __init__(self, x: Any, max_lag: int) -> None:
        arr, self.max_lag = _prepare_autocorrelation_input(x, max_lag)
        self.n_traj, self.n_times = arr.shape
        self.offset = float(np.mean(arr))
        y = arr - self.offset
        self.pair = lagged_product_sums(y, self.max_lag, per_trajectory=True)
        lags = np.arange(self.max_lag + 1)
        cumulative = np.concatenate((np.zeros((self.n_traj, 1)), np.cumsum(y, axis=1)), axis=1)
        self.head = cumulative[:, self.n_times - lags]
        self.tail = cumulative[:, -1:] - cumulative[:, lags]
        self.total = cumulative[:, -1]
        self.squares = np.sum(y * y, axis=1)

    def autocorrelation(self, weights: Any) -> np.ndarray:
        """``C[..., 0..max_lag]`` of the ensemble with trajectory weights ``[..., N]`` (non-negative)."""
        w = np.asarray(weights, dtype=np.float64)
        if w.shape[-1] != self.n_traj:
            raise ValueError(f"weights have {w.shape[-1]} entries for {self.n_traj} trajectories")
        return _pooled_correlation(w @ self.pair, w @ self.head, w @ self.tail, w @ self.total,
                                   w @ self.squares, np.sum(w, axis=-1), self.n_times, self.offset)


def autocorrelation(x: Any, max_lag: int) -> np.ndarray:
    """Ensemble autocorrelation ``C[0..max_lag]`` of a scalar series, docs/physics.md section 3, by FFT.

    ``x`` is ``[N trajectories, T times]`` (a 1-D series counts as N = 1; numpy or torch).
    ``C(tau) = (<x(t) x(t+tau)> - <x>^2) / (<x^2> - <x>^2)`` where ``<x(t) x(t+tau)>`` pools all
    trajectories and all t with t + tau < T, and ``<x>``, ``<x^2>`` pool all trajectories and all
    times. Note that this is not the per-window-centred correlation: the pooled mean is subtracted
    even where the lag window's own mean differs, exactly as the reference computes it.

    Numerically the series is first shifted by its pooled mean m (y = x - m); expanding
    ``x = y + m`` gives the same quantity without the cancellation of ``<x x'> - <x>^2``:
    ``numerator = (S_yy(tau) + m (A(tau) + B(tau))) / count(tau)`` with A, B the sums of y over the
    two lag windows, and the denominator is ``<y^2>``. Cost O(N T log T) in float64.

    Raises ValueError for ``max_lag`` outside ``[0, T-1]``, a constant series, NaN/inf, or a shape
    other than 1-D/2-D.
    """
    arr, max_lag = _prepare_autocorrelation_input(x, max_lag)
    n_traj, n_times = arr.shape
    mean = float(np.mean(arr))
    y = arr - mean
    squares = float(np.sum(y * y))
    if squares <= 0.0:
        raise ValueError("x has zero variance in float64: its autocorrelation is undefined")

    lags = np.arange(max_lag + 1)
    cumulative = np.concatenate(([0.0], np.cumsum(np.sum(y, axis=0))))
    head_sums = cumulative[n_times - lags]  # sum of y over t in [0, T - tau)
    tail_sums = cumulative[n_times] - cumulative[lags]  # sum of y over t in [tau, T)
    return _pooled_correlation(lagged_product_sums(y, max_lag), head_sums, tail_sums, cumulative[n_times], squares,
                               n_traj, n_times, mean)


def autocorrelation_direct(x: Any, max_lag: int) -> np.ndarray:
    """The formula of docs/physics.md section 3 evaluated literally, one numpy pass per lag: O(N T max_lag).

    Kept as the independent reference for tests and benchmarks of :func:`autocorrelation`; it is the
    original code's approach. Same inputs, outputs and errors.
    """
    arr, max_lag = _prepare_autocorrelation_input(x, max_lag)
    n_times = arr.shape[1]
    mean = np.mean(arr)
    denominator = np.mean(arr * arr) - mean**2
    out = np.empty(max_lag + 1)
    for tau in range(max_lag + 1):
        out[tau] = (np.mean(arr[:, : n_times - tau] * arr[:, tau:]) - mean**2) / denominator
    return out


# ----------------------------------------------------------------------------------------------
# Divergent rollouts
# ----------------------------------------------------------------------------------------------


def _series_ranges(series: Mapping[str, Any], name: str) -> dict[str, np.ndarray]:
    """Range (max - min over time) of every trajectory, per order parameter; NaN where non-finite."""
    if not series:
        raise ValueError(f"{name} has no series; pass e.g. {{'charge': phi_n, 'lattice': phi_Q}}")
    ranges = {}
    for key, values in series.items():
        arr = _as_ensemble(values, f"{name}[{key!r}]")
        finite = np.all(np.isfinite(arr), axis=1)
        ranges[key] = np.where(finite, np.ptp(np.where(np.isfinite(arr), arr, 0.0), axis=1), np.nan)
    return ranges


def divergent_mask(model: Mapping[str, Any], truth: Mapping[str, Any], factor: float = 1.1) -> np.ndarray:
    """Boolean ``[N]``: which model rollouts diverged, by the docs/physics.md section 3 range test.

    ``model`` and ``truth`` map the same order-parameter names (e.g. ``"charge"`` for phi_n and
    ``"lattice"`` for phi_Q) to ``[N, T]`` series (truth may have another N and T). A rollout is
    divergent if, for ANY of the names, its range (max - min over time) exceeds ``factor`` times
    the largest range seen in the ground-truth ensemble. A rollout with NaN/inf anywhere counts as
    divergent: a model that blew up must never pass the test. Ground truth must be finite.
    """
    if factor <= 0:
        raise ValueError(f"factor must be positive, got {factor}")
    if set(model) != set(truth):
        raise ValueError(
            f"model and truth must have the same series names, got {sorted(model)} vs {sorted(truth)}"
        )
    model_ranges = _series_ranges(model, "model")
    truth_ranges = _series_ranges(truth, "truth")
    sizes = {key: r.shape[0] for key, r in model_ranges.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"model series disagree on the number of trajectories: {sizes}")
    mask = np.zeros(next(iter(sizes.values())), dtype=bool)
    for key, truth_range in truth_ranges.items():
        if np.any(np.isnan(truth_range)):
            raise ValueError(f"truth[{key!r}] contains NaN or inf")
        threshold = factor * float(np.max(truth_range))
        rollout_range = model_ranges[key]
        mask |= np.isnan(rollout_range) | (rollout_range > threshold)
    return mask


def divergent_fraction(model: Mapping[str, Any], truth: Mapping[str, Any], factor: float = 1.1) -> float:
    """Fraction of model rollouts flagged by :func:`divergent_mask` (the number docs/physics.md section 3 reports)."""
    return float(np.mean(divergent_mask(model, truth, factor)))


# ----------------------------------------------------------------------------------------------
# Short-horizon accuracy
# ----------------------------------------------------------------------------------------------


def _check_state_shapes(pred: tuple[np.ndarray, ...], truth: tuple[np.ndarray, ...]) -> None:
    """Require rho [N,T,L,L], Q and P [N,T,L] with L >= 2, identical between pred and truth."""
    for name, a, b in zip(STATE_KEYS, pred, truth, strict=True):
        if a.shape != b.shape:
            raise ValueError(f"pred {name} has shape {a.shape} but truth {name} has {b.shape}")
    rho, q, p = truth
    consistent = q.ndim == 3 and p.shape == q.shape and rho.shape == q.shape + q.shape[-1:]
    if not consistent:
        raise ValueError(
            f"expected rho [N,T,L,L], Q and P [N,T,L]; got rho {rho.shape}, Q {q.shape}, P {p.shape}"
        )
    if q.shape[-1] < 2:
        raise ValueError("rho needs L >= 2 sites to have off-diagonal entries")


def _rho_squared_errors(pred_rho: np.ndarray, truth_rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-rollout, per-step sums of |delta rho|^2 over the diagonal and over the off-diagonal entries, ``[N, T]``.

    Works through the steps in chunks so that the complex128 difference never needs the memory of
    the whole rollout ensemble (256 x 1000 x 32 x 32 would be 4 GiB).
    """
    n_traj, n_steps, n_sites, _ = truth_rho.shape
    chunk = max(1, _RMSE_CHUNK_ENTRIES // (n_traj * n_sites * n_sites))
    sites = np.arange(n_sites)
    diag = np.empty((n_traj, n_steps))
    offdiag = np.empty((n_traj, n_steps))
    for start in range(0, n_steps, chunk):
        stop = min(start + chunk, n_steps)
        diff = pred_rho[:, start:stop].astype(np.complex128) - truth_rho[:, start:stop]
        squared = diff.real**2 + diff.imag**2
        diag[:, start:stop] = np.sum(squared[..., sites, sites], axis=2)
        squared[..., sites, sites] = 0.0
        offdiag[:, start:stop] = np.sum(squared, axis=(2, 3))
    return diag, offdiag


def component_entries(n_trajectories: int, n_sites: int) -> dict[str, int]:
    """Entries each error component pools over ``n_trajectories`` states of ``n_sites`` sites.

    rho's diagonal, Q and P have L entries per state, rho's off-diagonal L(L-1). Sums of squared errors
    divided by these give the pooled mean squares, so ranks or steps can add sums before dividing.
    """
    n, L = int(n_trajectories), int(n_sites)
    return {"rho_diag": n * L, "rho_offdiag": n * L * (L - 1), "Q": n * L, "P": n * L}


def squared_errors_by_rollout(pred: tuple[Any, Any, Any], truth: tuple[Any, Any, Any]) -> dict[str, np.ndarray]:
    """Sum of squared errors of each state component per rollout and step, ``[N, T]`` float64 each.

    ``pred`` and ``truth`` are ``(rho [N,T,L,L] complex, Q [N,T,L], P [N,T,L])``; the components are
    :func:`rmse_by_step`'s. Dividing a rollout's sum by its entries per state (``component_entries(1, L)``) gives
    its mean square; summing over rollouts before dividing gives the pooled one. Kept per rollout so that a
    comparison of two models on the same rollouts can be resampled (``results target``'s paired bootstrap).
    """
    pred_arrays = tuple(to_numpy(a) for a in pred)
    truth_arrays = tuple(to_numpy(a) for a in truth)
    if len(pred_arrays) != 3 or len(truth_arrays) != 3:
        raise ValueError("pred and truth must each be a (rho, Q, P) triple")
    _check_state_shapes(pred_arrays, truth_arrays)
    diag_sq, offdiag_sq = _rho_squared_errors(pred_arrays[0], truth_arrays[0])
    out = {"rho_diag": diag_sq, "rho_offdiag": offdiag_sq}
    for name, a, b in zip(("Q", "P"), pred_arrays[1:], truth_arrays[1:], strict=True):
        diff = a.astype(np.float64) - b.astype(np.float64)
        out[name] = np.sum(diff * diff, axis=2)
    return out


def rmse_by_step(pred: tuple[Any, Any, Any], truth: tuple[Any, Any, Any]) -> dict[str, np.ndarray]:
    """RMSE of each state component vs rollout step, pooled over trajectories and entries.

    ``pred`` and ``truth`` are ``(rho [N,T,L,L] complex, Q [N,T,L], P [N,T,L])``. Returns a dict with
    keys ``rho_diag``, ``rho_offdiag``, ``Q``, ``P``, each a float64 array of length T:
    ``sqrt(mean over n and entries of |pred - truth|^2)`` at each step.

    The diagonal uses the complex difference (not only the real part): the true diagonal is real
    (n_i), so a model's spurious imaginary diagonal is an error and is counted. The off-diagonal
    pools every entry with i != j, by complex magnitude. This matches the loss components (docs/physics.md section 4),
    so RMSE at step k is comparable with the training losses.
    """
    sums = squared_errors_by_rollout(pred, truth)
    entries = component_entries(sums["Q"].shape[0], truth[1].shape[-1])
    return {key: np.sqrt(np.sum(value, axis=0) / entries[key]) for key, value in sums.items()}


# ----------------------------------------------------------------------------------------------
# Climate distances
# ----------------------------------------------------------------------------------------------


def _pooled_sample(x: Any, name: str) -> np.ndarray:
    """All values of ``x`` as one sorted float64 sample (any shape: trajectories and times pool)."""
    arr = _as_real_float64(x, name).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    _require_finite(arr, name)
    return np.sort(arr)


def wasserstein1(a: Any, b: Any) -> float:
    """1-Wasserstein distance between the empirical distributions of two samples.

    All values of each input are pooled (any shape). Exact for any sample sizes:
    ``W1 = integral |F_a(v) - F_b(v)| dv``, and both empirical CDFs are constant between
    consecutive points of the merged sample, so the integral is a finite sum. Compares the
    one-point statistics ("climate") of e.g. phi_n between model rollouts and ground truth.
    """
    xa = _pooled_sample(a, "a")
    xb = _pooled_sample(b, "b")
    points = np.concatenate((xa, xb))
    points.sort()
    widths = np.diff(points)
    cdf_a = np.searchsorted(xa, points[:-1], side="right") / xa.size
    cdf_b = np.searchsorted(xb, points[:-1], side="right") / xb.size
    return float(np.sum(np.abs(cdf_a - cdf_b) * widths))


def power_spectrum(x: Any) -> np.ndarray:
    """Ensemble-mean periodogram of ``[N, T]`` series, normalised to unit total power.

    Each trajectory's own mean is removed first (its DC bin carries no dynamics), its |rFFT|^2 is
    taken without windowing, the spectra are averaged over trajectories, and the result is divided
    by its sum. Length T // 2 + 1, float64.
    """
    arr = _as_ensemble(x, "x")
    _require_finite(arr, "x")
    centred = arr - np.mean(arr, axis=1, keepdims=True)
    spectrum = np.fft.rfft(centred, axis=1)
    power = np.mean(spectrum.real**2 + spectrum.imag**2, axis=0)
    total = float(np.sum(power))
    if total <= 0.0:
        raise ValueError("every trajectory is constant: the power spectrum is undefined")
    return power / total


def power_spectrum_distance(model_series: Any, truth_series: Any) -> float:
    """Hellinger distance between the normalised ensemble power spectra of two ensembles.

    ``H = sqrt(1 - sum_k sqrt(p_k q_k))``, in [0, 1]: 0 for identical spectra, 1 for spectra with
    disjoint support, symmetric, and a true metric. Hellinger rather than L1 because the square
    root gives the weak high-frequency tail of a chaotic spectrum a say next to its dominant peaks.
    Invariant to each ensemble's amplitude and offset: it compares where the power sits, not how
    much there is (the autocorrelation and Wasserstein metrics cover the rest). Both ensembles must
    have the same number of time steps (same frequency grid); trajectory counts may differ.
    """
    model_arr = _as_ensemble(model_series, "model_series")
    truth_arr = _as_ensemble(truth_series, "truth_series")
    if model_arr.shape[1] != truth_arr.shape[1]:
        raise ValueError(
            "model and truth series need the same number of steps T for a common frequency grid; "
            f"got T={model_arr.shape[1]} and T={truth_arr.shape[1]}"
        )
    p = power_spectrum(model_arr)
    q = power_spectrum(truth_arr)
    affinity = float(np.sum(np.sqrt(p * q)))
    return float(np.sqrt(max(0.0, 1.0 - affinity)))


# ----------------------------------------------------------------------------------------------
# Mode-resolved observables
# ----------------------------------------------------------------------------------------------


def wavevectors(n_sites: int) -> np.ndarray:
    """``q_m = 2 pi m / L`` for ``m = 0..L//2``: the half spectrum that a real field on the ring needs."""
    if n_sites < 1:
        raise ValueError(f"the ring needs at least one site, got L={n_sites}")
    return 2.0 * np.pi * np.arange(n_sites // 2 + 1) / n_sites


def structure_factor(x: Any) -> np.ndarray:
    """Equal-time structure factor ``S(q_m) = |sum_j e^{-i q_m j} x_j|^2 / L`` over the last (site) axis.

    ``x`` is real, ``[..., L]`` (e.g. ``Q [N, T, L]`` or a density minus its mean); the result is
    float64 ``[..., L//2 + 1]`` for ``q_m = 2 pi m / L``, ``m = 0..L//2`` (:func:`wavevectors`). A
    real field has ``S(-q) = S(q)``, so the half spectrum holds everything. Normalised by ``L`` so
    that a mode of fixed amplitude has an L-independent ``S / L`` and Parseval reads
    ``sum_{m=0}^{L-1} S(q_m) = sum_j x_j^2`` over the full spectrum (weights for the half spectrum:
    :func:`structure_factor_multiplicity`). At ``q = pi`` (even L) it is ``L phi^2`` of the staggered
    order ``phi = (1/L) sum_j (-1)^j x_j``, so the order parameters of docs/physics.md are one bin of it; the other
    bins are the modes that the q = pi orders are blind to (the finite-size trap of docs/physics.md section 3).
    """
    arr = _as_real_float64(x, "x")
    if arr.ndim == 0 or arr.shape[-1] == 0:
        raise ValueError(f"x must have a site axis last, got shape {arr.shape}")
    amplitude = np.fft.rfft(arr, axis=-1)  # numpy's forward sign e^{-2 pi i m j / L}, as defined above
    return (amplitude.real**2 + amplitude.imag**2) / arr.shape[-1]


def structure_factor_multiplicity(n_sites: int) -> np.ndarray:
    """How often each half-spectrum bin occurs in the full spectrum ``m = 0..L-1``: 1 or 2.

    ``q = 0`` and (even L) ``q = pi`` are their own mirror images; every other ``q_m`` also stands
    for ``q_{L-m}``. Hence ``sum_m multiplicity[m] S(q_m) = sum_j x_j^2`` exactly.
    """
    weights = np.full(n_sites // 2 + 1, 2.0)
    weights[0] = 1.0
    if n_sites % 2 == 0:
        weights[-1] = 1.0
    return weights


def structure_factor_peak(mean_spectrum: Any) -> int:
    """Index ``m >= 1`` of the largest bin of a (time- and ensemble-averaged) half spectrum.

    ``q = 0`` is left out: for Q it is the uniform lattice displacement, for the density (minus 1/2)
    the particle-number error; neither is an ordering wave vector.
    """
    spectrum = _as_real_float64(mean_spectrum, "mean_spectrum")
    if spectrum.ndim != 1 or spectrum.size < 2:
        raise ValueError(f"mean_spectrum must be a 1-D half spectrum with >= 2 bins, got shape {spectrum.shape}")
    _require_finite(spectrum, "mean_spectrum")
    return 1 + int(np.argmax(spectrum[1:]))


# ----------------------------------------------------------------------------------------------
# Energy conservation
# ----------------------------------------------------------------------------------------------


def energy_drift(energies: Any) -> dict[str, float]:
    """Summary of |E(t) - E(0)| for energy-per-site series ``[N, T]`` (1-D = one trajectory).

    Keys:
    - ``mean_final_abs``: mean over trajectories of |E(T-1) - E(0)|;
    - ``max_final_abs``: max over trajectories of |E(T-1) - E(0)|;
    - ``mean_max_abs``: mean over trajectories of max_t |E(t) - E(0)|;
    - ``max_abs``: max over trajectories and times of |E(t) - E(0)|.
    NaN/inf energies (a blown-up rollout) propagate into the summaries on purpose, so that they
    cannot hide behind an average; filter with :func:`divergent_mask` first to summarise the rest.
    """
    arr = _as_ensemble(energies, "energies")
    deviation = np.abs(arr - arr[:, :1])
    final = deviation[:, -1]
    worst = np.max(deviation, axis=1)
    return {
        "mean_final_abs": float(np.mean(final)),
        "max_final_abs": float(np.max(final)),
        "mean_max_abs": float(np.mean(worst)),
        "max_abs": float(np.max(worst)),
    }


COHERENT_WINDOW = 100
"""Snapshot steps per window of :func:`coherent_error` (the report's ``coherent`` section)."""
COHERENCE_FLOOR = 0.5
"""Below this coherence a window's mean oscillation is too weak against the rollout-to-rollout spread for
the lag / amplitude fit to mean anything (a chaotic quench after its transient): those fields are null."""


FAST_FACTOR = 4.0
"""Frequencies above this multiple of the truth mean's dominant frequency are its fast oscillation (the slow
swing's first harmonic stays below): on the shallow quench the charge order's electronic lines at ~0.17, 0.29 and
0.38 cycles per snapshot step, 1 % of its variance, far above the 0.02 of the swing."""
FAST_MIN_STEPS = 16
"""Fewer steps than this give no frequency resolution: no fast oscillation is measured."""


def _mirrored_spectrum(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """rfft of ``x`` followed by itself reversed: the even extension has no jump where the FFT wraps around,
    which would otherwise leak into every frequency. Returns (frequencies in cycles per step, coefficients)."""
    extended = np.concatenate([x, x[::-1]])
    return np.fft.rfftfreq(extended.size), np.fft.rfft(extended)


def fast_cut(series: np.ndarray) -> float | None:
    """``FAST_FACTOR`` x the dominant nonzero frequency (cycles per step) of a 1-D series; None where the
    series is too short or has no oscillation."""
    if series.size < FAST_MIN_STEPS:
        return None
    freq, coef = _mirrored_spectrum(series - series.mean())
    power = np.abs(coef[1:]) ** 2
    if not np.all(np.isfinite(power)) or power.max() <= 0:
        return None
    return float(FAST_FACTOR * freq[1 + int(np.argmax(power))])


def fast_part(series: np.ndarray, cut: float) -> np.ndarray:
    """What of a 1-D series lies above ``cut`` cycles per step (zeroing everything at or below it)."""
    freq, coef = _mirrored_spectrum(series)
    coef[freq <= cut] = 0
    return np.fft.irfft(coef, 2 * series.size)[: series.size]


def slow_fit(m: np.ndarray, rate: np.ndarray, e: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """Least-squares fit of an error ``e`` of the mean oscillation ``m`` (``rate``: its dm/dt per step, over the same
    steps) as ``offset + amplitude_error * (m - mean m) - lag_steps * rate``: the three coefficients and the fitted
    values (``e`` minus them is what no lag, amplitude or offset explains)."""
    basis = np.stack([np.ones_like(m), m - m.mean(), -rate], axis=1)
    coef, *_ = np.linalg.lstsq(basis, e, rcond=None)
    return {"offset": float(coef[0]), "amplitude_error": float(coef[1]), "lag_steps": float(coef[2])}, basis @ coef


def coherent_error(truth: Any, model: Any, window: int = COHERENT_WINDOW) -> list[dict[str, Any]]:
    """How the rollouts' MEAN order-parameter trajectory errs: a lag, an amplitude error or an offset.

    Rollouts that start from one quench ensemble share a coherent oscillation (the rollout mean); measured on
    the shallow quench, at most steps ~99 % of a model's per-step Q and P RMSE is that mean's error, so one
    step's RMSE there samples one scalar oscillation at one phase. Per window of ``window`` snapshot steps (step 0, the
    exact initial state, excluded) the mean error ``e(t) = <model>(t) - <truth>(t)`` is fitted by least squares
    as ``offset + amplitude_error * (m(t) - mean_t m) - lag_steps * dm/dt`` with ``m = <truth>`` and ``dm/dt``
    its central difference per step: ``<model>(t) ~ m(t - lag)`` to first order, so ``lag_steps`` > 0 means
    the model is behind. A lag that grows from window to window is a rate error (``results calibrate``
    fits it); a constant one was made early and persists. ``truth`` and ``model`` are ``[n, T+1]`` series.

    Each window: ``start``, ``stop`` (inclusive), ``coherence`` = std_t m / sqrt(std_t m ^ 2 + mean_t var over
    rollouts), ``systematic_share`` = RMS of e / RMS of the per-rollout error (1: every rollout errs alike),
    and, where ``coherence`` >= ``COHERENCE_FLOOR``, ``lag_steps``, ``amplitude_error`` (relative),
    ``offset`` and ``residual`` (RMS of what the fit leaves); else those are None.

    What the slow fit cannot follow is an oscillation much faster than the mean's swing. ``fast_cut`` (cycles
    per step, :func:`fast_cut` of the truth mean over steps 1..T, the same in every window), and per window
    ``truth_fast`` and ``model_fast``: the RMS of each mean's part above it (:func:`fast_part`). A model that
    drops an oscillation the truth carries has ``model_fast`` << ``truth_fast``, and then ``residual`` is
    about ``truth_fast``: an error floor no lag or amplitude can remove (measured on the shallow quench, where
    every model so far, the original included, drops the charge order's electronic lines). None where no
    ``fast_cut`` can be found.
    """
    truth, model = _as_ensemble(truth, "truth"), _as_ensemble(model, "model")
    if truth.shape != model.shape:
        raise ValueError(f"truth {truth.shape} and model {model.shape} series differ in shape")
    if window < 4:
        raise ValueError(f"window is {window}; the fit needs at least 4 steps per window")
    mean_truth, mean_model = truth.mean(axis=0), model.mean(axis=0)
    error, rate = mean_model - mean_truth, np.gradient(mean_truth)
    cut = fast_cut(mean_truth[1:])
    fast = None
    if cut is not None:  # index t-1 holds step t, as step 0 (the exact initial state) is left out
        fast = {side: fast_part(series[1:], cut) for side, series in (("truth", mean_truth), ("model", mean_model))}
    rows = []
    for start, stop in window_spans(truth.shape[1], window):
        span = slice(start, stop + 1)
        m, e = mean_truth[span], error[span]
        swing, spread = float(np.std(m)), float(np.sqrt(np.mean(np.var(truth[:, span], axis=0))))
        coherence = swing / np.hypot(swing, spread) if swing > 0 else 0.0
        per_rollout = float(np.sqrt(np.mean((model[:, span] - truth[:, span]) ** 2)))
        row: dict[str, Any] = {
            "start": start, "stop": stop, "coherence": float(coherence),
            "systematic_share": float(np.sqrt(np.mean(e**2)) / per_rollout) if per_rollout > 0 else None,
            "lag_steps": None, "amplitude_error": None, "offset": None, "residual": None,
            "fast_cut": cut, "truth_fast": None, "model_fast": None,
        }
        if fast is not None:
            row.update({f"{side}_fast": float(np.sqrt(np.mean(part[start - 1:stop] ** 2)))
                        for side, part in fast.items()})
        if coherence >= COHERENCE_FLOOR and stop - start + 1 >= 4:
            coefficients, fitted = slow_fit(m, rate[span], e)
            row.update(coefficients, residual=float(np.sqrt(np.mean((e - fitted) ** 2))))
        rows.append(row)
    return rows


def window_spans(n_times: int, window: int = COHERENT_WINDOW) -> list[tuple[int, int]]:
    """``(start, stop)`` (stop inclusive) of consecutive windows of ``window`` steps over steps 1..n_times-1:
    the windows of :func:`coherent_error` and :func:`window_means` (step 0, the exact initial state, is out)."""
    last = n_times - 1
    return [(start, min(start + window - 1, last)) for start in range(1, last + 1, window)]


def window_means(series: Any, window: int = COHERENT_WINDOW) -> np.ndarray:
    """Mean over rollouts and over each window's steps of an ``[n, T+1]`` series: one number per window."""
    x = _as_ensemble(series, "series")
    return np.array([x[:, start:stop + 1].mean() for start, stop in window_spans(x.shape[1], window)])


SWING_PARTS = 3
"""How many consecutive parts of a rollout :func:`swing_by_part` reads the swing of."""


def first_trough(c: np.ndarray) -> tuple[int | None, int | None]:
    """(the first lag where the autocorrelation ``c`` is negative, the lag of its lowest value before it turns
    positive again); None where ``c`` never goes negative."""
    negative = np.flatnonzero(c < 0)
    if negative.size == 0:
        return None, None
    zero = int(negative[0])
    back = np.flatnonzero(c[zero:] >= 0)
    end = zero + int(back[0]) if back.size else c.size
    return zero, zero + int(np.argmin(c[zero:end]))


def swing_by_part(x: Any, max_lag: int, parts: int = SWING_PARTS) -> list[dict[str, Any]]:
    """The order parameter's swing in each of ``parts`` consecutive time spans of ``[N, T]`` series: the span,
    its autocorrelation's first zero crossing and first trough (lag and value), lags up to ``max_lag`` or half
    the span. Over a whole rollout the autocorrelation averages periods that may drift: the deep quench's
    lattice cools and its swing slows (trough at lag 42, 55 and 58 in the thirds of 1000 steps, 52 over all).
    Spans too short for a lag are left out; a constant span gives Nones."""
    arr = np.asarray(to_numpy(x), dtype=np.float64)
    bounds = np.linspace(0, arr.shape[-1], parts + 1).round().astype(int)
    out = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        lags = min(int(max_lag), (stop - start) // 2)
        if lags < 1:
            continue
        try:
            c = autocorrelation(arr[..., start:stop], lags)
        except ValueError:  # a constant span: no swing to read
            out.append({"span": [int(start), int(stop)], "zero": None, "trough_lag": None, "trough": None})
            continue
        zero, trough = first_trough(c)
        out.append({"span": [int(start), int(stop)], "zero": zero, "trough_lag": trough,
                    "trough": None if trough is None else float(c[trough])})
    return out
