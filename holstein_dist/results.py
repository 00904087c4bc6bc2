"""Side-by-side tables of evaluation reports and training curves of runs: the numbers of a results section.

    python -m holstein_dist.results table REPORT.json [REPORT.json ...] --names ours original [--steps 100 600 1200] \\
        [--window 100]
    python -m holstein_dist.results curve RUN_DIR --out curve.csv
    python -m holstein_dist.results ensemble REPORT.json [--steps 1 100 600 1200]
    python -m holstein_dist.results rollout-curve RUN_DIR --data DIR --split val --steps 1200 --out curve.csv \\
        [--export model.pt]
    python -m holstein_dist.results average RUN_DIR/checkpoints/step-0000{6,7,8}*.pt --out model.pt
    python -m holstein_dist.results average MODEL.pt FINE_TUNE.pt --weights 0.5 0.5 --out between.pt
    python -m holstein_dist.results score EVAL_DIR [EVAL_DIR ...] [--at 100 600 1200]
    python -m holstein_dist.results calibrate MODEL --data DIR --split val --steps 1200 --out factors.csv \\
        --export calibrated.pt [--components all|electrons|lattice]
    python -m holstein_dist.results scale MODEL --out scaled.pt [--all F] [--electrons F] [--lattice F]

``table`` prints a Markdown table with one column per report: RMSE by component at the chosen rollout
steps, the autocorrelation errors of the charge and lattice order, divergent fraction, Wasserstein
distances and the structure-factor peak-mode error. Reports must describe the same test set (same
split hash), otherwise the comparison is refused. ``curve`` reads a run's TensorBoard events and writes
the validation rollout error against optimizer step and wall-clock training time, so the cost of the
accuracy is visible. ``rollout-curve`` evaluates every checkpoint the run kept (``keep`` large) on long
rollouts of one split (use ``val``: recipes are chosen on validation, the test split is for the final
table) and tabulates RMSE at chosen steps and the autocorrelation errors against training time.
``average`` writes the mean weights of checkpoints of one run as one model file (checkpoint averaging), or with
``--weights`` their weighted mean (e.g. a point between a model and its fine-tune: weight-space interpolation);
``score`` prints the long-rollout score ``rollout-curve`` ranks by, for reports of any models (e.g. an average
against the best single checkpoint, both evaluated on validation). ``calibrate`` fits one factor on a model's
predicted increments (to first order its time step, so the frequency of every oscillation it produces) by a
grid search on long validation rollouts and exports the calibrated model: near-periodic long rollouts are
dominated by a small frequency error that training leaves to chance. ``--components lattice`` fits the
lattice's rate (the increments of Q and P) with the electrons' left as they are. ``scale`` writes a model with
given factors (e.g. rates chosen on validation by a script), recording them in the file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from holstein_dist.metrics import ORDER_KEYS, RMSE_COMPONENTS
from holstein_dist.physics import ENERGY_SPLITS, STATE_KEYS
from holstein_dist.sampling import rmse_ratio_interval
from hpc.cli import ArgumentParser, report_error
from hpc.files import atomic_write_text


def read_report(path: str | Path) -> dict[str, Any]:
    """A report.json written by ``holstein_dist.evaluate``; a missing or foreign file is a one-line error."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read report {str(path)!r} ({type(exc).__name__}); pass a report.json written "
                         "by python -m holstein_dist.evaluate") from None
    if report.get("mode") != "model":
        raise ValueError(f"{str(path)!r} is not a model evaluation report (mode {report.get('mode')!r}); pass one "
                         "made with --checkpoint")
    return report


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, int):  # counts and lags
        return str(value)
    return f"{value:.2e}" if abs(value) < 1e-2 and value != 0 else f"{value:.3f}"


def pooled_rmse(series: Sequence[float], first: int, last: int) -> float | None:
    """RMSE pooled over rollout steps ``first..last`` (the RMS of the per-step RMSEs); None past the series."""
    if last >= len(series):
        return None
    return math.sqrt(sum(v * v for v in series[first:last + 1]) / (last + 1 - first))


def step_value(series: Sequence[float], step: int) -> float | None:
    """A per-step series' value at ``step``; None past its end (a report evaluated for fewer steps)."""
    return series[step] if step < len(series) else None


def window_start(last: int, window: int) -> int:
    """First step of the ``window`` steps ending at ``last``; step 0 (the exact initial state) never counts."""
    return max(1, last - window + 1)


def comparison_rows(reports: Sequence[Mapping[str, Any]], steps: Sequence[int],
                    window: int = 0) -> list[tuple[str, list[Any]]]:
    """(label, one value per report) rows; values are floats or None.

    ``window`` > 1 adds, after each step's rows, the RMSE pooled over the ``window`` steps ending there: the error
    of a near-periodic rollout oscillates from one snapshot to the next (measured on the shallow quench: up to
    ~6x between steps 600 and 603), so one step's RMSE is a noisy sample of it.
    """
    rows: list[tuple[str, list[Any]]] = []
    for step in steps:
        for comp in RMSE_COMPONENTS:
            rows.append((f"RMSE {comp} @ step {step}", [step_value(r["rmse_by_step"][comp], step) for r in reports]))
        first = window_start(step, window)
        if window > 1 and step > first:
            for comp in RMSE_COMPONENTS:
                rows.append((f"RMSE {comp} over steps {first}-{step}",
                             [pooled_rmse(r["rmse_by_step"][comp], first, step) for r in reports]))
    for order in ORDER_KEYS:
        rows.append((f"autocorr max abs error, {order}", [r["autocorr_max_abs_error"][order] for r in reports]))
        rows.append((f"autocorr mean abs error, {order}", [r["autocorr_mean_abs_error"][order] for r in reports]))
        rows += sampling_rows(reports, order)
    rows += coherent_rows(reports, steps)
    rows += lattice_motion_rows(reports)
    rows += swing_rows(reports)
    rows.append(("divergent fraction", [r["divergent_fraction"] for r in reports]))
    for order in ORDER_KEYS:
        rows.append((f"Wasserstein-1, {order}", [r["wasserstein"][order] for r in reports]))
    for field in ("Q", "density"):
        rows.append((f"S(q) peak-mode autocorr max abs error, {field}",
                     [r.get("structure_factor", {}).get(field, {}).get("autocorr_max_abs_error") for r in reports]))
    return rows


UNRANKED = (": bootstrap std", ": a perfect model's (noise floor)")
"""Endings of the rows that give a measure's noise, not a score: markdown_table does not bold their lowest."""


def sampling_rows(reports: Sequence[Mapping[str, Any]], order: str) -> list[tuple[str, list[Any]]]:
    """The climate test's sampling noise for one order parameter (holstein_dist/sampling.py): the bootstrap
    std of the max error and a perfect model's score at the same number of rollouts. No rows when no report
    has them (all made before they existed)."""
    if not any("autocorr_noise_floor" in r for r in reports):
        return []
    spread = [(r.get("autocorr_max_abs_error_bootstrap") or {}).get(order) for r in reports]
    return [(f"autocorr max abs error, {order}{UNRANKED[0]}", [s and s["std"] for s in spread]),
            (f"autocorr max abs error, {order}{UNRANKED[1]}",
             [(r.get("autocorr_noise_floor") or {}).get(order) for r in reports])]


def coherent_rows(reports: Sequence[Mapping[str, Any]], steps: Sequence[int]) -> list[tuple[str, list[Any]]]:
    """|lag|, |amplitude error| and the fit's residual of the rollouts' mean oscillation in the report window holding
    each step (``metrics.coherent_error``; signs are in report.json; the residual is the error no lag or amplitude
    explains, e.g. a fast oscillation the model drops); None for a report without the section."""
    rows: list[tuple[str, list[Any]]] = []
    for order in ORDER_KEYS:
        spans: list[str] = []
        for step in steps:
            windows = [next((w for w in (r.get("coherent") or {}).get(order, []) if w["start"] <= step <= w["stop"]),
                            None) for r in reports]
            span = next((f"steps {w['start']}-{w['stop']}" for w in windows if w is not None), None)
            if span is None or span in spans:  # steps 1 and 100 share the first window: its rows once
                continue
            spans.append(span)
            for field, label in (("lag_steps", "|lag| (steps)"), ("amplitude_error", "|amplitude error|"),
                                 ("residual", "error the slow fit leaves (RMS)")):
                rows.append((f"mean {order} oscillation {label}, {span}",
                             [None if w is None or w.get(field) is None else abs(w[field]) for w in windows]))
    return rows


def lattice_motion_rows(reports: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[Any]]]:
    """How far the last window's lattice kinetic energy (the factor between model and truth, >= 1) and domain
    walls per ring (the difference) of the ``lattice_motion`` section are from the truth, lower is better like
    every row; no rows when no report has the section (one made before it existed)."""
    sections = [r.get("lattice_motion") or {} for r in reports]
    first = next((m for m in sections if m.get("windows")), None)
    if first is None:
        return []
    span = "steps {}-{}".format(*first["windows"][-1])

    def last(m: Mapping[str, Any], key: str) -> tuple[float | None, float | None]:
        return tuple(((m.get(key) or {}).get(side) or [None])[-1] for side in ("model", "truth"))

    factors, wall_gaps = [], []
    for m in sections:
        model, truth = last(m, "kinetic")
        factors.append(None if model is None or not truth or model <= 0 else max(model / truth, truth / model))
        model, truth = last(m, "walls")
        wall_gaps.append(None if model is None or truth is None else abs(model - truth))
    return [(f"lattice kinetic energy, factor off the truth, {span}", factors),
            (f"domain walls per ring, abs error (truth {_fmt(last(first, 'walls')[1])}), {span}", wall_gaps)]


def swing_rows(reports: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[Any]]]:
    """How many steps the lattice autocorrelation's first trough in each third of the rollouts (the ``swing``
    section) is off the truth's, lower is better; no rows when no report has the section."""
    sections = [(r.get("swing") or {}).get("lattice") or {} for r in reports]
    first = next((s for s in sections if s.get("truth")), None)
    if first is None:
        return []
    def gap(section: Mapping[str, Any], i: int) -> int | None:
        lags = [parts[i]["trough_lag"] if parts else None for parts in (section.get("truth"), section.get("model"))]
        return None if None in lags else abs(lags[1] - lags[0])

    rows = []
    for i, part in enumerate(first["truth"]):
        gaps = [gap(section, i) for section in sections]
        start, stop = part["span"]
        rows.append((f"lattice swing trough lag, steps off the truth's ({part['trough_lag']}), steps {start}-{stop}",
                     gaps))
    return rows


def check_same_test_set(reports: Sequence[Mapping[str, Any]], names: Sequence[str]) -> None:
    """Refuse to compare reports made on different trajectories or horizons."""
    first = reports[0]
    for name, report in zip(names[1:], reports[1:], strict=True):
        # A split's values name it; reports made before they were recorded fall back to its files' sha256,
        # which differ between two generations of the same split.
        split_key = "split_content_sha256" if all("split_content_sha256" in r["data"] for r in (first, report)) \
            else "split_sha256"
        for what, key in (("test set", ("data", split_key)), ("rollouts", ("data", "rollouts")),
                          ("steps", ("settings", "steps"))):
            a, b = first[key[0]][key[1]], report[key[0]][key[1]]
            if a != b:
                raise ValueError(f"{name} was evaluated with other {what} ({b} vs {a} for {names[0]}); evaluate "
                                 "every model on the same --data/--split/--rollouts/--steps")


def markdown_table(reports: Sequence[Mapping[str, Any]], names: Sequence[str], steps: Sequence[int],
                   window: int = 0) -> str:
    """The comparison as a Markdown table (bold where a column is the best of the row, lower is better)."""
    check_same_test_set(reports, names)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, values in comparison_rows(reports, steps, window):
        finite = [v for v in values if v is not None and math.isfinite(v)]
        best = min(finite) if len(finite) > 1 and not label.endswith(UNRANKED) else None
        cells = [f"**{_fmt(v)}**" if best is not None and v == best else _fmt(v) for v in values]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ensemble_table(report: Mapping[str, Any], steps: Sequence[int]) -> str:
    """Markdown table of an ensemble report: the mean against the average member, then the calibration."""
    section = report.get("ensemble")
    if section is None:
        raise ValueError("this report has no ensemble section; evaluate an ensemble directory (--checkpoint ENS)")
    rmse, cal = section["rmse_by_step"], section["calibration"]
    lines = ["| metric | ensemble mean | average member |", "|---|---|---|"]
    for step in steps:
        for comp in RMSE_COMPONENTS:
            if step < len(rmse["ensemble_mean"][comp]):
                lines.append(f"| RMSE {comp} @ step {step} | {_fmt(rmse['ensemble_mean'][comp][step])} | "
                             f"{_fmt(rmse['average_member'][comp][step])} |")
    for order in ORDER_KEYS:
        lines.append(f"| autocorr max abs error, {order} | "
                     f"{_fmt(section['autocorr_max_abs_error']['ensemble_mean'][order])} | "
                     f"{_fmt(section['autocorr_max_abs_error']['average_member'][order])} |")
    diverged = [m["divergent_fraction"] for m in section["members"]]
    lines.append(f"| divergent fraction | {_fmt(report['divergent_fraction'])} | "
                 f"{_fmt(sum(diverged) / len(diverged))} |")
    lines += ["", f"Calibration (K = {cal['K']}; spread scales "
              + ", ".join(f"{c} {v:.3g}" for c, v in cal["spread_scale"].items())
              + f"; a perfect {cal['K']}-member ensemble covers less than 68 / 95 %, see docs/ensembles.md):", "",
              "| component | mean < avg member (steps) | horizon | cover 1 sigma | cover 2 sigma | spread/skill | "
              "spread-skill corr | fitted scale | trust horizon (median) | error crossing (median) | "
              "trust-error corr | warned in time |", "|---|" + "---|" * 11]
    for comp in RMSE_COMPONENTS:
        c, below = cal["components"][comp], section["ensemble_mean_below_average_member"][comp]
        t = c["trust"]
        cells = [below["fraction_of_steps"], c["horizon"], c["coverage_1sigma"], c["coverage_2sigma"],
                 c["spread_skill_ratio"], c["spread_skill_correlation"], c["fitted_spread_scale"],
                 t["trust_horizon_median"], t["error_crossing_median"], t["correlation"], t["warned_in_time_fraction"]]
        lines.append(f"| {comp} | " + " | ".join(_fmt(v) if not isinstance(v, int) else str(v) for v in cells) + " |")
    return "\n".join(lines)


def training_curve(run_dir: str | Path) -> list[dict[str, float]]:
    """Validation rollout error by step from a run's TensorBoard events, with wall time since the first event.

    Wall time is read from the events (their timestamps), so it includes validation and checkpoints,
    i.e. what a person waits for. A resumed run's gap while nothing ran is not subtracted.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(run_dir)
    events = sorted(run_dir.glob("events.out.tfevents.*"))
    if not events:
        raise ValueError(f"{str(run_dir)!r} has no TensorBoard events; pass a run directory written by "
                         "python -m holstein_dist.train")
    points: dict[int, tuple[float, float]] = {}
    starts = []
    for path in events:
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        tags = acc.Tags().get("scalars", [])
        starts += [acc.Scalars(tag)[0].wall_time for tag in tags if acc.Scalars(tag)]
        if "val/rollout_error" in tags:
            for ev in acc.Scalars("val/rollout_error"):
                points[ev.step] = (ev.wall_time, ev.value)  # a resumed run's later value wins
    # The first logged scalar is ~log_every steps after the start: a small, stated offset.
    t0 = min(starts) if starts else 0.0
    return [{"step": step, "minutes": (wall - t0) / 60.0, "val_rollout_error": value}
            for step, (wall, value) in sorted(points.items())]


def rollout_curve(run_dir: str | Path, data: str | Path, split: str, steps: int,
                  at: Sequence[int], work: str | Path, score: str = "rmse",
                  extra_args: Sequence[str] = ()) -> list[dict[str, float]]:
    """Long-rollout errors of every ``step-*.pt`` in ``run_dir/checkpoints`` (see module doc), oldest first."""
    from holstein_dist.checkpoints import CHECKPOINT_DIR
    from hpc.checkpoint import list_checkpoints

    minutes = {int(row["step"]): row["minutes"] for row in training_curve(run_dir)}
    rows = []
    for step, path in list_checkpoints(Path(run_dir) / CHECKPOINT_DIR):
        row = long_rollout_row(path, data, split, steps, at, Path(work) / f"step-{step}", score, extra_args)
        rows.append({"step": step, "minutes": minutes.get(step, math.nan), **row})
    return rows


def long_rollout_row(model: str | Path, data: str | Path, split: str, steps: int, at: Sequence[int],
                     out: str | Path, score: str = "rmse", extra_args: Sequence[str] = ()) -> dict[str, float]:
    """Evaluate one model on ``split`` for ``steps`` (report in ``out``): RMSE at ``at``, autocorrelation errors,
    divergent fraction and the ``score`` (see :data:`SCORES`)."""
    from holstein_dist import evaluate

    argv = ["--checkpoint", str(model), "--data", str(data), "--split", split, "--steps", str(steps),
            "--baseline-steps", "0", "--no-plots", "--out", str(out), *extra_args]
    if evaluate.main(argv) != 0:
        raise ValueError(f"evaluating {model} failed (see the error above)")
    report = read_report(out)
    row: dict[str, float] = {}
    for k in at:
        for comp in RMSE_COMPONENTS:
            row[f"rmse_{comp}_at_{k}"] = report["rmse_by_step"][comp][k]
    for order in ORDER_KEYS:
        row[f"autocorr_max_abs_error_{order}"] = report["autocorr_max_abs_error"][order]
    row["divergent_fraction"] = report["divergent_fraction"]
    row["score"] = SCORES[score](report, at)
    return row


COMPONENT_GROUPS = {"all": STATE_KEYS, "electrons": ("rho",), "lattice": ("Q", "P")}
"""What ``calibrate --components`` and ``scale`` may scale: every increment, rho's, or Q's and P's."""


def group_factors(components: str, factor: float) -> dict[str, float]:
    """``factor`` for each state key of the group ``components`` (the others are left at 1)."""
    if components not in COMPONENT_GROUPS:
        raise ValueError(f"components {components!r}: choose one of {', '.join(COMPONENT_GROUPS)}")
    return dict.fromkeys(COMPONENT_GROUPS[components], factor)


def calibrate_increments(model: str | Path, data: str | Path, split: str, steps: int, at: Sequence[int],
                         work: str | Path, span: float = 0.02, points: int = 21,
                         score: str = "rmse", symmetrize: bool = False,
                         guard_args: Sequence[str] = (), components: str = "all") -> list[dict[str, float]]:
    """Score ``model`` with its increments scaled by ``1 + eps`` over a grid of ``eps`` in [-span, span]
    (``points`` values, and 0), then over a finer grid of 9 values spanning the two cells around the best;
    rows sorted by factor. Each scaled model and its report stay in ``work`` (``factor-<f>.pt``, ``factor-<f>/``).
    ``symmetrize``: every candidate has group averaging switched on (symmetrization changes the rate a little,
    so the factor is fitted with it). ``guard_args``: evaluate's rollout-guard flags for every candidate
    (``--project`` or ``--conserve``; a guard is not stored in the model, so evaluate the export with it too).
    ``components``: which increments the factor scales, a key of ``COMPONENT_GROUPS`` (``lattice``: the rate of
    Q and P alone, the electrons' left as they are)."""
    from holstein_dist.checkpoints import scale_increments

    if span <= 0 or points < 3:
        raise ValueError(f"--span {span} and --points {points}: give span > 0 and at least 3 points")
    work = Path(work)
    rows: dict[float, dict[str, float]] = {}

    def score_factor(factor: float) -> None:
        factor = round(factor, 6)
        if factor in rows or factor <= 0:
            return
        path = scale_increments(model, group_factors(components, factor), work / f"factor-{factor:.6f}.pt",
                                symmetrize)
        row = long_rollout_row(path, data, split, steps, at, work / f"factor-{factor:.6f}", score, guard_args)
        rows[factor] = {"factor": factor, **row}

    cell = 2 * span / (points - 1)
    score_factor(1.0)  # the unscaled model, whatever the grid
    for i in range(points):
        score_factor(1.0 - span + i * cell)
    best = best_factor_row(rows.values())["factor"]
    for i in range(9):
        score_factor(best - cell + i * cell / 4)
    return [rows[f] for f in sorted(rows)]


def long_rollout_score(report: Mapping[str, Any], at: Sequence[int]) -> float:
    """Mean over the four components and the steps ``at`` of log10 RMSE: lower is better.

    Scale-free (rho, Q and P errors differ by orders of magnitude; a log mean weighs a halving of any of them
    alike) and long-horizon (the steps are far beyond the training unroll), so it selects checkpoints for
    what the short validation rollout during training does not see. Any diverged rollout scores +inf.
    """
    if report["divergent_fraction"] > 0:
        return math.inf
    logs = [math.log10(max(report["rmse_by_step"][comp][k], 1e-30)) for comp in RMSE_COMPONENTS for k in at]
    return sum(logs) / len(logs)


def climate_score(report: Mapping[str, Any], at: Sequence[int] = ()) -> float:
    """Mean over the charge and lattice order of the max autocorrelation error: lower is better (0..2).

    For chaotic dynamics (the deep quench), where any rollout's RMSE saturates after ~100 steps and only the
    statistics can be right. A model with divergent rollouts scores 2 + the divergent fraction, so every
    bounded model ranks ahead of any divergent one and fewer divergences rank ahead of more. ``at`` is unused.
    """
    if report["divergent_fraction"] > 0:
        return 2.0 + float(report["divergent_fraction"])
    return sum(report["autocorr_max_abs_error"][order] for order in ORDER_KEYS) / len(ORDER_KEYS)


def climate_score_std(report: Mapping[str, Any]) -> float | None:
    """The climate score's sampling std: the mean over the order parameters of the bootstrap std of their max
    error (holstein_dist/sampling.py). None for reports without it (made before it existed, or no curve)."""
    spread = report.get("autocorr_max_abs_error_bootstrap") or {}
    stds = [(spread.get(order) or {}).get("std") for order in ORDER_KEYS]
    return None if None in stds else sum(stds) / len(stds)


def ranking_noise_note(scored: Sequence[tuple[float, Path, Mapping[str, Any]]]) -> str | None:
    """For (climate score, path, report) triples: a warning when the two best scores differ by less than the larger
    of their sampling stds, i.e. the evaluation set cannot rank them (measured on the deep quench: 16 validation
    rollouts ranked two checkpoint averages of one run 0.144 and 0.37; docs/training.md)."""
    if len(scored) < 2:
        return None
    (first, a, report_a), (second, b, report_b) = sorted(scored, key=lambda triple: triple[0])[:2]
    stds = [climate_score_std(report) for report in (report_a, report_b)]
    if None in stds or second - first >= max(stds):
        return None
    return (f"the best two scores ({first:.4f} {a}, {second:.4f} {b}) differ by less than their bootstrap std "
            f"({max(stds):.4f}): this set does not rank them; evaluate both on more rollouts")


POOL_WINDOW = 100
"""Steps pooled by the ``balanced`` score: the 100 ending at each ``at`` step."""


def balanced_score(report: Mapping[str, Any], at: Sequence[int]) -> float:
    """Half the mean log10 RMSE pooled over the ``POOL_WINDOW`` steps ending at each step of ``at`` (four
    components), half the mean log10 max autocorrelation error of the two orders: lower is better.

    For near-periodic dynamics judged on both trajectories and statistics (the shallow quench's target): a
    single step's RMSE swings by up to ~6x within a few snapshots, so it is pooled; and a rate that minimizes
    the RMSE alone left the shallow model's lattice autocorrelation ~2x worse (measured), so the climate has its half.
    Any diverged rollout scores +inf.
    """
    if report["divergent_fraction"] > 0:
        return math.inf
    rmse = [pooled_rmse(report["rmse_by_step"][comp], window_start(k, POOL_WINDOW), k)
            for comp in RMSE_COMPONENTS for k in at]
    if any(v is None for v in rmse):
        raise ValueError(f"the report stops at step {len(report['rmse_by_step']['Q']) - 1}, before the last --at "
                         "step; evaluate longer or pass smaller --at steps")
    climate = [report["autocorr_max_abs_error"][order] for order in ORDER_KEYS]
    if any(v is None for v in climate):
        return math.inf  # a constant rollout has no autocorrelation: rank it last
    log_rmse = sum(math.log10(max(v, 1e-30)) for v in rmse) / len(rmse)
    log_climate = sum(math.log10(max(v, 1e-30)) for v in climate) / len(climate)
    return 0.5 * log_rmse + 0.5 * log_climate


SCORES = {"rmse": long_rollout_score, "climate": climate_score, "balanced": balanced_score}
"""How ``rollout-curve`` and ``calibrate`` rank models: ``rmse`` (near-periodic dynamics, the shallow quench),
``climate`` (chaotic dynamics, the deep quench) or ``balanced`` (pooled RMSE and autocorrelation, half each)."""


TARGET_STEPS = (100, 600, 1200)
"""Rollout steps of the shallow target (README "Results": at least as accurate as the original model): at each, every
component's RMSE."""


def rmse_check_points(steps: Sequence[int] = TARGET_STEPS) -> list[tuple[int, str]]:
    """(step, component) of each RMSE check of :func:`target_checks`, in its order (they come first)."""
    return [(step, comp) for step in steps for comp in RMSE_COMPONENTS]


def target_checks(report: Mapping[str, Any], reference: Mapping[str, Any],
                  steps: Sequence[int] = TARGET_STEPS) -> list[tuple[str, float | None, float | None]]:
    """(label, report's value, reference's value) for each check of "at least as accurate as the reference": the RMSE
    of every component at each of ``steps``, then the max autocorrelation error of each order parameter. A value is
    None where the report stops before the step (or has no autocorrelation)."""
    checks: list[tuple[str, float | None, float | None]] = []
    for step, comp in rmse_check_points(steps):
        checks.append((f"RMSE {comp} @ step {step}", step_value(report["rmse_by_step"][comp], step),
                       step_value(reference["rmse_by_step"][comp], step)))
    for order in ORDER_KEYS:
        checks.append((f"autocorr max abs error, {order}", report["autocorr_max_abs_error"][order],
                       reference["autocorr_max_abs_error"][order]))
    return checks


def check_met(value: float | None, reference: float | None) -> bool:
    """At least as accurate as the reference (ties count); a missing or non-finite value never meets a check."""
    return (value is not None and reference is not None and math.isfinite(value) and math.isfinite(reference)
            and value <= reference)


def checks_met(checks: Sequence[tuple[str, float | None, float | None]]) -> int:
    """How many of :func:`target_checks`' checks are met."""
    return sum(check_met(value, ref) for _, value, ref in checks)


def ratio_interval(report: Mapping[str, Any], reference: Mapping[str, Any], component: str,
                   step: int) -> tuple[float, float, float] | None:
    """The paired bootstrap interval of ``report``'s RMSE of ``component`` at ``step`` over ``reference``'s
    (``sampling.rmse_ratio_interval``), from both reports' ``mse_by_rollout``; None where either report lacks the
    step (reports before it existed) or the two were not made on the same rollouts."""
    ours, theirs = report.get("mse_by_rollout"), reference.get("mse_by_rollout")
    if not ours or not theirs or ours["rollouts"] != theirs["rollouts"] or step not in ours["steps"] \
            or step not in theirs["steps"]:
        return None

    def values(section: Mapping[str, Any]) -> list[float]:
        return [math.nan if v is None else v for v in section[component][section["steps"].index(step)]]

    return rmse_ratio_interval(values(ours), values(theirs))


def _interval_cell(interval: tuple[float, float, float] | None) -> str:
    if interval is None or not math.isfinite(interval[0]):
        return "— | —"
    low, high, at_most_one = interval
    return f"{low:.3f}-{high:.3f} | {at_most_one:.2f}"


def target_table(report: Mapping[str, Any], reference: Mapping[str, Any], steps: Sequence[int] = TARGET_STEPS) -> str:
    """Markdown table of :func:`target_checks` with each ratio, then one line that starts with "N/M checks met".

    Beside each RMSE ratio: its 95 % interval over another test split of this size and the share of those splits on
    which the check is met (:func:`ratio_interval`), so a check lost or won within the sampling noise reads as such.
    The count of checks met is the measured one; the intervals do not change it."""
    checks = target_checks(report, reference, steps)
    intervals = [ratio_interval(report, reference, comp, step) for step, comp in rmse_check_points(steps)]
    intervals += [None] * (len(checks) - len(intervals))
    lines = ["| check | model | reference | model / reference | met | ratio, 95 % interval over rollouts "
             "| share of resamples met |", "|---|---|---|---|---|---|---|"]
    for (label, value, ref), interval in zip(checks, intervals, strict=True):
        ratio = value / ref if value is not None and ref else None
        lines.append(f"| {label} | {_fmt(value)} | {_fmt(ref)} | {_fmt(ratio)} | "
                     f"{'yes' if check_met(value, ref) else 'no'} | {_interval_cell(interval)} |")
    lines.append(f"\n{checks_met(checks)}/{len(checks)} checks met (divergent fraction "
                 f"{report['divergent_fraction']:.3f}; reference "
                 f"{reference['divergent_fraction']:.3f})")
    return "\n".join(lines)


def best_row(rows: Sequence[Mapping[str, float]]) -> Mapping[str, float]:
    """The checkpoint with the lowest long-rollout score (the earliest of equals)."""
    if not rows:
        raise ValueError("the run kept no step-*.pt checkpoints; train with keep large enough to keep them")
    return min(rows, key=lambda row: (row["score"], row["step"]))


def write_curve(rows: Sequence[Mapping[str, float]], out: str | Path) -> None:
    """CSV with a header; written whole (small)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["step"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buf.getvalue(), out)


def guard_flags(args: Any) -> list[str]:
    """evaluate's rollout-guard flags that ``rollout-curve`` / ``calibrate`` pass on to every candidate."""
    flags = [flag for flag, on in (("--project", getattr(args, "project", False)), ("--conserve", args.conserve)) if on]
    flags += ["--energy-split", args.energy_split] if args.energy_split != "momenta" else []
    return flags + (["--work-share", str(args.work_share)] if args.work_share != 1.0 else [])


def calibrate_command(args: Any) -> None:
    """``calibrate``: one model file, or every member of an ensemble directory (``--export`` is then a new
    ensemble directory whose members are the calibrated models; evaluate it like the original)."""
    from holstein_dist.checkpoints import scale_increments
    from holstein_dist.ensemble import MANIFEST_NAME, is_ensemble, member_checkpoints, member_dir, member_name

    work = args.work or args.out.with_suffix("")
    grid = (args.data, args.split, args.steps, args.at)
    guard_args = guard_flags(args)
    if not is_ensemble(args.model):
        rows = calibrate_increments(args.model, *grid, work, args.span, args.points, args.score, args.symmetrize,
                                    guard_args, args.components)
        write_curve(rows, args.out)
        best = _calibrated(rows, args.split, args.export)
        scale_increments(args.model, group_factors(args.components, best["factor"]), args.export, args.symmetrize)
        return
    if args.export.exists():
        raise ValueError(f"--export {args.export} exists; pass a new directory for the calibrated ensemble")
    members = member_checkpoints(args.model)
    table: list[dict[str, float]] = []
    scaled = []
    for i, path in enumerate(members):
        rows = calibrate_increments(path, *grid, work / member_name(i), args.span, args.points, args.score,
                                    args.symmetrize, guard_args, args.components)
        table += [{"member": i, **row} for row in rows]
        scaled.append((path, _calibrated(rows, args.split, f"{member_name(i)} of {args.export}")["factor"]))
    write_curve(table, args.out)
    staging = args.export.with_name(f".{args.export.name}.tmp")  # complete or absent, never half-written
    shutil.rmtree(staging, ignore_errors=True)
    for i, (path, factor) in enumerate(scaled):
        (member_dir(staging, i) / "checkpoints").mkdir(parents=True)
        member_model = member_dir(staging, i) / "checkpoints" / "best.pt"
        scale_increments(path, group_factors(args.components, factor), member_model, args.symmetrize)
    for name in (MANIFEST_NAME, "config.yaml"):
        if (args.model / name).is_file():
            shutil.copy2(args.model / name, staging / name)
    staging.rename(args.export)


def scale_command(args: Any) -> None:
    """``scale``: the model with the product of ``--all``, ``--electrons`` and ``--lattice`` on its increments."""
    from holstein_dist.checkpoints import scale_increments

    factors = dict.fromkeys(STATE_KEYS, 1.0)
    for group in COMPONENT_GROUPS:
        for key, value in group_factors(group, getattr(args, group)).items():
            factors[key] *= value
    scale_increments(args.model, factors, args.out)
    print(f"increments x {', '.join(f'{k} {v:g}' for k, v in factors.items())} -> {args.out}")


def best_factor_row(rows: Iterable[Mapping[str, float]]) -> Mapping[str, float]:
    """The calibration row with the lowest score (the factor nearest 1 among equals)."""
    return min(rows, key=lambda row: (row["score"], abs(row["factor"] - 1.0)))


def _calibrated(rows: Sequence[Mapping[str, float]], split: str, target: Any) -> Mapping[str, float]:
    """The best factor's row, announced on stdout."""
    best = best_factor_row(rows)
    plain = next(row for row in rows if row["factor"] == 1.0)
    print(f"best increment factor on {split}: {best['factor']:.6f} (score {best['score']:.3f}; "
          f"unscaled {plain['score']:.3f}) -> {target}", flush=True)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m holstein_dist.results", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    table = sub.add_parser("table", help="Markdown table comparing reports made on the same test set")
    table.add_argument("reports", nargs="+", type=Path, help="report.json files or evaluation directories")
    table.add_argument("--names", nargs="+", help="column names (default: the report directories' names)")
    table.add_argument("--steps", nargs="+", type=int, default=[100, 600, 1200], help="rollout steps for RMSE rows")
    table.add_argument("--window", type=int, default=0,
                       help="also the RMSE pooled over the WINDOW steps ending at each --steps value (0: not)")
    curve = sub.add_parser("curve", help="validation error vs training step and wall time, as CSV")
    curve.add_argument("run_dir", type=Path)
    curve.add_argument("--out", type=Path, required=True)
    ens = sub.add_parser("ensemble", help="Markdown table of an ensemble report: mean vs members, calibration")
    ens.add_argument("report", type=Path, help="report.json of an ensemble evaluation (or its directory)")
    ens.add_argument("--steps", nargs="+", type=int, default=[1, 100, 600, 1200], help="rollout steps for RMSE rows")
    rollouts = sub.add_parser("rollout-curve", help="long-rollout errors of every kept checkpoint, as CSV")
    rollouts.add_argument("run_dir", type=Path)
    rollouts.add_argument("--data", type=Path, required=True)
    rollouts.add_argument("--split", default="val")
    rollouts.add_argument("--steps", type=int, default=1200)
    rollouts.add_argument("--at", nargs="+", type=int, default=[100, 600, 1200], help="rollout steps for RMSE columns")
    rollouts.add_argument("--work", type=Path, help="where the per-checkpoint reports go (default: beside --out)")
    rollouts.add_argument("--out", type=Path, required=True)
    rollouts.add_argument("--export", type=Path,
                          help="also export the checkpoint with the lowest long-rollout score as this model file")
    rollouts.add_argument("--score", choices=sorted(SCORES), default="rmse",
                          help="rmse: mean log10 RMSE at --at steps (near-periodic dynamics); climate: mean max "
                               "autocorrelation error of the order parameters, divergence ranked last (chaotic); "
                               "balanced: log RMSE pooled over the 100 steps ending at each --at step and log "
                               "autocorrelation error, half each")
    rollouts.add_argument("--project", action="store_true", help="evaluate with evaluate --project")
    rollouts.add_argument("--conserve", action="store_true", help="evaluate with evaluate --conserve")
    rollouts.add_argument("--energy-split", choices=ENERGY_SPLITS, default="momenta",
                          help="with --conserve: evaluate with evaluate --energy-split")
    rollouts.add_argument("--work-share", type=float, default=1.0,
                          help="with --energy-split work: evaluate with evaluate --work-share")
    rollouts.add_argument("--symmetrize", action="store_true", help="evaluate with evaluate --symmetrize")
    average = sub.add_parser("average", help="average the weights of checkpoints of one run into one model file "
                                             "(--weights: a weighted mean, e.g. between a model and its fine-tune)")
    average.add_argument("checkpoints", nargs="+", type=Path, help="step-*.pt files (or run dirs) of one run")
    average.add_argument("--out", type=Path, required=True, help="model file to write")
    average.add_argument("--weights", type=float, nargs="+",
                         help="one weight >= 0 per checkpoint, normalized to sum 1 (default: equal): e.g. a model "
                              "and its fine-tune with --weights 0.5 0.5 interpolate between them")
    cal = sub.add_parser("calibrate", help="fit one factor on a model's increments (its rate) to long validation "
                                           "rollouts, as CSV, and export the calibrated model")
    cal.add_argument("model", type=Path, help="model file or run directory of ours, or an ensemble directory (each "
                                              "member is calibrated on its own)")
    cal.add_argument("--data", type=Path, required=True)
    cal.add_argument("--split", default="val")
    cal.add_argument("--steps", type=int, default=1200)
    cal.add_argument("--at", nargs="+", type=int, default=[100, 600, 1200], help="rollout steps for RMSE columns")
    cal.add_argument("--score", choices=sorted(SCORES), default="rmse", help="as rollout-curve --score")
    cal.add_argument("--span", type=float, default=0.02, help="largest |factor - 1| of the coarse grid")
    cal.add_argument("--points", type=int, default=21, help="coarse grid size (then 9 finer points)")
    cal.add_argument("--work", type=Path, help="scaled models and reports (default: beside --out)")
    cal.add_argument("--out", type=Path, required=True, help="CSV: one row per factor")
    cal.add_argument("--export", type=Path, required=True,
                     help="the model with the best factor (for an ensemble: a new ensemble directory)")
    cal.add_argument("--symmetrize", action="store_true",
                     help="calibrate and export the model with group averaging over the ring's symmetries switched "
                          "on (evaluate --symmetrize, recorded in the exported file)")
    cal.add_argument("--conserve", action="store_true",
                     help="fit the factor on rollouts with evaluate --conserve (not stored in the export: evaluate it "
                          "with --conserve too)")
    cal.add_argument("--energy-split", choices=ENERGY_SPLITS, default="momenta",
                     help="with --conserve: fit on rollouts with evaluate --energy-split (evaluate the export so too)")
    cal.add_argument("--work-share", type=float, default=1.0,
                     help="with --energy-split work: fit on rollouts with evaluate --work-share (evaluate the export "
                          "so too)")
    cal.add_argument("--components", choices=list(COMPONENT_GROUPS), default="all",
                     help="which increments the factor scales: all (the model's rate), electrons (rho) or lattice "
                          "(Q and P; fits the lattice's rate against the electrons')")
    scale = sub.add_parser("scale", help="write a model file with its increments scaled (a rate chosen elsewhere)")
    scale.add_argument("model", type=Path, help="model file or run directory of ours")
    scale.add_argument("--out", type=Path, required=True, help="model file to write")
    for group in COMPONENT_GROUPS:
        scale.add_argument(f"--{group}", type=float, default=1.0,
                           help=f"factor on the increments of {'every component' if group == 'all' else group} "
                                "(factors multiply; default 1)")
    target = sub.add_parser("target", help="the checks of 'at least as accurate as a reference model': each "
                                           "component's RMSE at the --steps and both autocorrelation errors")
    target.add_argument("report", type=Path, help="the model's report.json (or its evaluation directory)")
    target.add_argument("--reference", type=Path, required=True,
                        help="the reference model's report on the same trajectories (e.g. the original model's)")
    target.add_argument("--steps", nargs="+", type=int, default=list(TARGET_STEPS), help="rollout steps checked")
    score = sub.add_parser("score", help="long-rollout score of evaluation reports (what rollout-curve ranks by)")
    score.add_argument("reports", nargs="+", type=Path, help="report.json files or evaluation directories")
    score.add_argument("--at", nargs="+", type=int, default=[100, 600, 1200], help="rollout steps it averages over")
    score.add_argument("--score", choices=sorted(SCORES), default="rmse", help="as rollout-curve --score")
    args = parser.parse_args(argv)
    try:
        if args.command == "table":
            names = args.names or [p.parent.name if p.name == "report.json" else p.name for p in args.reports]
            if len(names) != len(args.reports):
                raise ValueError(f"--names has {len(names)} names for {len(args.reports)} reports; give one each")
            if args.window < 0:
                raise ValueError(f"--window is {args.window}; pass 0 (per-step rows only) or a number of steps")
            print(markdown_table([read_report(p) for p in args.reports], names, args.steps, args.window))
        elif args.command == "ensemble":
            print(ensemble_table(read_report(args.report), args.steps))
        elif args.command == "curve":
            write_curve(training_curve(args.run_dir), args.out)
        elif args.command == "average":
            from holstein_dist.checkpoints import average_models

            average_models(args.checkpoints, args.out, args.weights)
            print(f"averaged {len(args.checkpoints)} checkpoints -> {args.out}")
        elif args.command == "calibrate":
            calibrate_command(args)
        elif args.command == "scale":
            scale_command(args)
        elif args.command == "target":
            report, reference = read_report(args.report), read_report(args.reference)
            check_same_test_set([report, reference], [str(args.report), str(args.reference)])
            print(target_table(report, reference, args.steps))
        elif args.command == "score":
            reports = [(path, read_report(path)) for path in args.reports]
            scored = [(SCORES[args.score](report, args.at), path, report) for path, report in reports]
            for value, path, _ in scored:
                print(f"{value:.4f}  {path}")
            if args.score == "climate" and (note := ranking_noise_note(scored)):
                print(f"note: {note}", file=sys.stderr)
        else:
            work = args.work or args.out.with_suffix("")
            rows = rollout_curve(args.run_dir, args.data, args.split, args.steps, args.at, work, args.score,
                                 guard_flags(args) + (["--symmetrize"] if args.symmetrize else []))
            write_curve(rows, args.out)
            best = best_row(rows)
            print(f"lowest long-rollout score on {args.split}: step {int(best['step'])} (score {best['score']:.3f})")
            if args.export is not None:
                from holstein_dist.checkpoints import CHECKPOINT_DIR, export_model
                from hpc.checkpoint import list_checkpoints

                path = dict(list_checkpoints(args.run_dir / CHECKPOINT_DIR))[int(best["step"])]
                export_model(path, args.export)
                print(f"exported {path} -> {args.export}")
    except ValueError as exc:  # reports, runs and options are the user's input here
        return report_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
