"""Plots and TensorBoard entries of an evaluation report (``holstein_dist.evaluate`` calls them on rank 0).

Figures are built with matplotlib's object API on the Agg canvas, never through pyplot, so nothing
here needs a display or touches global plotting state. The same figures go to PNG files and, as
images, to TensorBoard next to the report's curves as scalar series.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imread

ORDER_LABELS = {"charge": r"charge order $\phi_n$", "lattice": r"lattice order $\phi_Q$"}
RMSE_LABELS = {"rho_diag": r"$\rho$ diagonal", "rho_offdiag": r"$\rho$ off-diagonal", "Q": "Q", "P": "P"}
SUMMARY_KEYS = ("autocorr_max_abs_error", "autocorr_mean_abs_error", "wasserstein", "power_spectrum_distance")
STRUCTURE_LABELS = {"Q": r"lattice displacement $Q_i$", "density": r"density $n_i - 1/2$"}


@dataclasses.dataclass
class PlotData:
    """Everything the plots need: the report plus the few arrays too bulky for report.json."""

    report: Mapping[str, Any]
    traces: Mapping[str, Mapping[str, np.ndarray]]  # "truth"/"model" -> order key -> [k, T+1]
    pattern: Mapping[str, np.ndarray] | None  # "truth"/"model" -> staggered density [T+1, L]
    snapshot_dt: float


def _figure(n_cols: int, n_rows: int = 1, width: float = 5.0, height: float = 3.6) -> Figure:
    fig = Figure(figsize=(width * n_cols, height * n_rows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def autocorr_figure(data: PlotData) -> Figure:
    """C(tau) of both order parameters, truth against model."""
    fig = _figure(2)
    for ax, key in zip(fig.subplots(1, 2), ORDER_LABELS):
        curves = data.report["autocorr"][key]
        lags = np.arange(len(curves["truth"])) * data.snapshot_dt
        ax.plot(lags, curves["truth"], color="black", label="ground truth")
        if curves.get("model") is not None:
            ax.plot(lags, curves["model"], color="tab:red", linestyle="--", label="model")
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set(title=f"autocorrelation of the {ORDER_LABELS[key]}", xlabel=r"lag $\tau$ (1/t)", ylabel=r"C($\tau$)")
        ax.legend()
    return fig


def traces_figure(data: PlotData) -> Figure:
    """Order parameters against time for the first few trajectories."""
    truth = data.traces["truth"]
    n_traj = truth["charge"].shape[0]
    fig = _figure(n_traj, 2, width=4.5, height=3.0)
    axes = np.asarray(fig.subplots(2, n_traj, squeeze=False))
    for row, key in enumerate(ORDER_LABELS):
        for col in range(n_traj):
            ax = axes[row, col]
            t = np.arange(truth[key].shape[1]) * data.snapshot_dt
            ax.plot(t, truth[key][col], color="black", label="ground truth")
            if "model" in data.traces:
                ax.plot(t, data.traces["model"][key][col], color="tab:red", linestyle="--", label="model")
            ax.set(title=f"rollout {col}", xlabel="time (1/t)", ylabel=ORDER_LABELS[key])
    axes[0, 0].legend()
    return fig


def rmse_figure(data: PlotData) -> Figure:
    """RMSE per state component against rollout step (step 0 is the exact input, so it starts at 1)."""
    fig = _figure(1, width=6.0, height=4.0)
    ax = fig.subplots()
    for key, label in RMSE_LABELS.items():
        values = np.asarray(data.report["rmse_by_step"][key], dtype=float)
        ax.plot(np.arange(1, len(values)), values[1:], label=label)
    # Log-log: the first steps (short-horizon accuracy) get as much room as the long tail.
    ax.set(xscale="log", yscale="log", xlabel="rollout step (snapshot intervals)", ylabel="RMSE vs ground truth",
           title="short-horizon accuracy")
    ax.legend()
    return fig


def spacetime_figure(data: PlotData) -> Figure:
    """The report's CDW space-time figure (see ``pattern_figure``)."""
    return pattern_figure(data.pattern, data.snapshot_dt)


def pattern_figure(pattern: Mapping[str, np.ndarray], snapshot_dt: float) -> Figure:
    """The CDW pattern (-1)^i (n_i - 1/2) vs site and time: truth, model, and their difference on its own scale.

    ``pattern``: "truth" (and optionally "model") -> ``physics.staggered_density`` of one trajectory,
    ``[T+1, L]``. Also what training draws into TensorBoard at every validation.
    """
    truth = pattern["truth"]
    panels = [("ground truth", truth)]
    if "model" in pattern:
        panels.append(("model", pattern["model"]))
    t_max = (truth.shape[0] - 1) * snapshot_dt
    extent = (-0.5, truth.shape[1] - 0.5, 0.0, t_max)
    with_diff = "model" in pattern
    fig = _figure(len(panels) + with_diff, width=4.0, height=5.0)
    axes = np.atleast_1d(fig.subplots(1, len(panels) + with_diff))
    scale = float(np.max(np.abs(truth))) or 1.0
    for ax, (title, image) in zip(axes, panels):
        shown = ax.imshow(image, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-scale, vmax=scale,
                          extent=extent, interpolation="nearest")
        ax.set(title=title, xlabel="site i", ylabel="time (1/t)")
    fig.colorbar(shown, ax=list(axes[: len(panels)]), label=r"$(-1)^i (n_i - 1/2)$")
    if with_diff:
        # Own colour scale: the error is orders of magnitude below the pattern and would vanish on its scale.
        diff = pattern["model"] - truth
        bound = float(np.max(np.abs(diff[np.isfinite(diff)]), initial=0.0)) or 1.0
        shown = axes[-1].imshow(diff, aspect="auto", origin="lower", cmap="PuOr_r", vmin=-bound, vmax=bound,
                                extent=extent, interpolation="nearest")
        axes[-1].set(title="model - truth", xlabel="site i", ylabel="time (1/t)")
        fig.colorbar(shown, ax=axes[-1], label="difference")
    return fig


def _positive(values: Any) -> np.ndarray:
    """NaN where a spectrum is not positive: a log axis cannot show 0 (e.g. S of the density at q = 0)."""
    arr = np.asarray(values, dtype=float)
    return np.where(arr > 0.0, arr, np.nan)


def structure_factor_figure(data: PlotData) -> Figure:
    """Time- and ensemble-mean S(q) of Q and of the density, truth against model, on a log scale.

    Log scale because the spectra span orders of magnitude (in the L=16 deep quench the even modes sit
    ~1e4 below the odd ones); the truth's peak, whose autocorrelation the report compares, is marked.
    """
    section = data.report["structure_factor"]
    q_over_pi = np.asarray(section["q"], dtype=float) / np.pi
    fig = _figure(2)
    for ax, (key, label) in zip(fig.subplots(1, 2), STRUCTURE_LABELS.items()):
        entry = section[key]
        ax.plot(q_over_pi, _positive(entry["truth"]["mean"]), color="black", marker="o", label="ground truth")
        if entry.get("model") is not None:
            ax.plot(q_over_pi, _positive(entry["model"]["mean"]), color="tab:red", linestyle="--", marker="x",
                    label="model")
        ax.axvline(entry["truth"]["peak_q"] / np.pi, color="grey", linewidth=0.5)
        ax.set(yscale="log", title=f"structure factor of the {label}", xlabel=r"$q / \pi$",
               ylabel=r"$\langle S(q, t) \rangle$")
        ax.legend()
    return fig


def build_figures(data: PlotData) -> dict[str, Figure]:
    """Name -> figure; the model-only plots are left out of a truth-only report."""
    figures = {"autocorr": autocorr_figure(data), "traces": traces_figure(data)}
    if "rmse_by_step" in data.report:
        figures["rmse"] = rmse_figure(data)
    if data.pattern is not None:
        figures["spacetime"] = spacetime_figure(data)
    if "structure_factor" in data.report:
        figures["structure_factor"] = structure_factor_figure(data)
    if "ensemble" in data.report:  # spread vs error by step, reliability diagram
        from holstein_dist.calibration import calibration_figures

        figures.update(calibration_figures(data.report["ensemble"]["calibration"], data.snapshot_dt))
    return figures


def write_plots(data: PlotData, out: Path) -> dict[str, Path]:
    """Save every figure as ``<out>/<name>.png``; returns name -> path."""
    paths = {}
    for name, fig in build_figures(data).items():
        paths[name] = Path(out) / f"{name}.png"
        fig.savefig(paths[name], dpi=100)
    return paths


def write_tensorboard(data: PlotData, pngs: Mapping[str, Path], log_dir: Path) -> None:
    """Curves as scalar series (x = step or lag), headline numbers as scalars, the PNGs as images.

    The images are read back from the PNG files rather than drawn again: layout and rendering are
    most of the cost of a report.
    """
    from torch.utils.tensorboard import SummaryWriter

    report = data.report
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for key, curves in report["autocorr"].items():
            for source, values in curves.items():
                for lag, value in enumerate(values if values is not None else ()):
                    writer.add_scalar(f"autocorr/{key}/{source}", float(value), lag)
        _structure_factor_scalars(writer, report.get("structure_factor"))
        for key, values in report.get("rmse_by_step", {}).items():
            for step, value in enumerate(values):
                writer.add_scalar(f"rmse/{key}", float(value), step)
        for name in SUMMARY_KEYS:
            for key, value in report.get(name, {}).items():
                if value is not None:
                    writer.add_scalar(f"summary/{name}/{key}", value, 0)
        for name, value in _headline_scalars(report).items():
            writer.add_scalar(f"summary/{name}", value, 0)
        for name, path in pngs.items():
            writer.add_image(f"plots/{name}", imread(path)[..., :3], 0, dataformats="HWC")
        identity = {key: report[key] for key in ("checkpoint", "data", "settings") if key in report}
        writer.add_text("identity", "```\n" + json.dumps(identity, indent=1, default=str) + "\n```", 0)


def _structure_factor_scalars(writer: Any, section: Mapping[str, Any] | None) -> None:
    """Mean S(q) (x = m) and the peak-mode autocorrelation (x = lag) per field and source."""
    if section is None:
        return
    for key in STRUCTURE_LABELS:
        entry = section[key]
        for source in ("truth", "model"):
            spectrum = entry.get(source)
            for m, value in enumerate(spectrum["mean"] if spectrum is not None else ()):
                writer.add_scalar(f"structure_factor/{key}/{source}", float(value), m)
            curve = entry["autocorr"].get(source)
            for lag, value in enumerate(curve if curve is not None else ()):
                writer.add_scalar(f"structure_factor_autocorr/{key}/{source}", float(value), lag)
        if entry.get("autocorr_max_abs_error") is not None:
            writer.add_scalar(f"summary/structure_factor_autocorr_max_abs_error/{key}",
                              entry["autocorr_max_abs_error"], 0)


def _headline_scalars(report: Mapping[str, Any]) -> dict[str, float]:
    values = {
        "divergent_fraction": report.get("divergent_fraction"),
        "rollout_steps_per_s": report["timing"].get("rollout_steps_per_s"),
        "exact_rollout_steps_per_s": report["physics_baseline"].get("rollout_steps_per_s"),
        "surrogate_speedup": report["physics_baseline"].get("surrogate_speedup"),
    }
    return {name: float(value) for name, value in values.items() if value is not None}


# Sections that depend on the machine, the launch or the file layout, not on the rollouts.
VOLATILE_SECTIONS = ("timing", "physics_baseline", "settings", "plots")


def _numbers(node: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            _numbers(value, f"{prefix}{key}.", out)
    elif not isinstance(node, (str, bool)):
        try:
            out[prefix.rstrip(".")] = np.asarray(node, dtype=float)  # None (null) becomes NaN
        except (TypeError, ValueError):
            pass  # lists of text (notes) are not numbers


def numeric_differences(a: Mapping[str, Any], b: Mapping[str, Any], *, rtol: float, atol: float,
                        ignore: tuple[str, ...] = VOLATILE_SECTIONS) -> list[str]:
    """Dotted keys whose numbers differ between two reports beyond ``atol + rtol * |b|``.

    Keys present in only one report and shape mismatches count as differences; null matches null.
    Top-level sections named in ``ignore`` are skipped. An empty list means the reports agree, e.g.
    the same evaluation run with different numbers of ranks.
    """
    flat_a: dict[str, np.ndarray] = {}
    flat_b: dict[str, np.ndarray] = {}
    _numbers({k: v for k, v in a.items() if k not in ignore}, "", flat_a)
    _numbers({k: v for k, v in b.items() if k not in ignore}, "", flat_b)
    differ = set(flat_a) ^ set(flat_b)
    for key in set(flat_a) & set(flat_b):
        x, y = flat_a[key], flat_b[key]
        if x.shape != y.shape or not np.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True):
            differ.add(key)
    return sorted(differ)
