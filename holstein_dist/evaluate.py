"""Ensemble evaluation of a surrogate against ground truth: ``python -m holstein_dist.evaluate``.

Every rank (one plain process, ``torchrun`` or ``srun``) takes a contiguous block of the selected
trajectories of one split, reads their initial snapshots and ground truth from the shards, rolls the
model out in batches under inference mode, and reduces each rollout to compact series: charge and
lattice order and energy per site ``[n, T+1]``, the structure factors of Q and of the density
``[n, T+1, L/2+1]`` (float32), plus per-step squared-error sums for the RMSE. Rank 0
gathers only these (never full rho trajectories), computes the docs/physics.md section 3 metrics, and writes
``report.json`` (atomically), PNG plots and TensorBoard entries (``holstein_dist.report``).

The same ranks also time the exact simulator (``physics.make_stepper``) from the same initial states,
so each report carries the speed-up the surrogate buys on that machine. ``--truth-only`` skips the
model: the report then holds the ground-truth statistics and that timing alone.

Which trajectories: the first ``--rollouts`` of the split (all by default), in index order, so a
report is the same whatever the number of ranks.

``--checkpoint ENSEMBLE_DIR`` (``holstein_dist.ensemble``) rolls out every member from the same initial states;
the sections above then describe the ensemble mean, and ``holstein_dist.evaluate_ensemble`` adds the members
and the calibration of their spread.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from holstein_dist import physics
from holstein_dist.checkpoints import load_model, recorded_signature, resolve
from holstein_dist.config import from_dict, layered
from holstein_dist.ensemble import is_ensemble
from holstein_dist.evaluate_ensemble import Ensemble, EnsembleShare, ensemble_metrics, fitted_scales, load_ensemble
from holstein_dist.evaluate_ensemble import summary_lines as ensemble_summary_lines
from holstein_dist.guards import Couplings, Guard, named_guard
from holstein_dist.metrics import (
    COHERENCE_FLOOR,
    ORDER_KEYS,
    RMSE_COMPONENTS,
    LagSums,
    autocorrelation,
    charge_order,
    coherent_error,
    component_entries,
    divergent_mask,
    energy_drift,
    lattice_order,
    power_spectrum_distance,
    squared_errors_by_rollout,
    structure_factor,
    structure_factor_peak,
    swing_by_part,
    to_numpy,
    wasserstein1,
    wavevectors,
    window_means,
    window_spans,
)
from holstein_dist.model import Surrogate
from holstein_dist.physics import HALF_FILLING, STATE_KEYS, staggered_density
from holstein_dist.sampling import autocorrelation_error_bootstrap, autocorrelation_noise_floor
from holstein_dist.shards import MANIFEST, Dataset, Split, open_dataset
from hpc.cli import UserError, add_field_flags, bad_input, command_parser, field_flags, flag_field, report_error
from hpc.dist import DistEnv, gather_objects_to_main, init_distributed, shutdown
from hpc.files import check_output_dir, file_sha256, write_json_atomic

REPORT_SCHEMA = "holstein-dist-eval/1"
DIVERGENCE_FACTOR = 1.1  # docs/physics.md section 3
DEFAULT_MAX_LAG = 200  # paper: lags up to a few hundred snapshots
TRACE_TRAJECTORIES = 3  # order-parameter traces plotted per report
# Fields resolved by mode: S(q, t) of Q and of the density n_i - 1/2 (see mode_series).
STRUCTURE_KEYS = ("Q", "density")
# The q = pi orders count as "at the noise level" when no truth trajectory spans this range. The data
# start from noise of 1e-4; the deep quench at L=16 (finite-size trap) keeps its per-trajectory ranges at
# ~0.5-4e-4, while the deep quench at L=32 swings over ~0.3-1.2 and the shallow quench at L=16 over
# ~0.1 (charge) and ~0.4 (lattice). 1e-2 lies more than an order of magnitude from both sides.
NOISE_LEVEL_RANGE = 1e-2

MOTION_KEYS = ("kinetic", "walls")
"""The lattice-motion series of ``state_series``, averaged per window in the report's ``lattice_motion``."""
SERIES_KEYS = (*ORDER_KEYS, "energy", *MOTION_KEYS)
"""The per-rollout ``[n, T+1]`` series ``state_series`` returns (a share's truth adds "energy_stored")."""

# Bound on the complex128 scratch of the observable computation (entries per time chunk, ~64 MiB).
_SERIES_CHUNK_ENTRIES = 1 << 22


# ----------------------------------------------------------------------------------------------
# Options and plan
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Options:
    """The evaluation's config, validated where that needs no data. Every field is a ``KEY=VALUE`` override
    and a key of ``--config FILE``; each also has a flag (``--max-lag 50`` = ``max_lag=50``)."""

    data: Path = flag_field("dataset directory made by holstein_dist.generate")
    checkpoint: Path | None = flag_field("our .pt file, a training run directory, or an original-format directory "
                                         "(model_kwargs.json + model_weights.pth)", None)
    split: str = flag_field("split to evaluate on", "test")
    rollouts: int | None = flag_field("evaluate the first N trajectories of the split (default: all)", None)
    steps: int | None = flag_field("rollout length in snapshot intervals (default: all stored)", None)
    max_lag: int | None = flag_field(f"largest autocorrelation lag (default: min({DEFAULT_MAX_LAG}, steps // 2))",
                                     None)
    out: Path = flag_field("report directory", Path("runs/eval"))
    device: Literal["auto", "cpu", "cuda"] = flag_field("where the model runs", "auto")
    batch_size: int = flag_field("rollouts per model batch on each rank", 32)
    bf16: bool = flag_field("run the CNNs under bfloat16 autocast (meant for GPUs)", False)
    project: bool = flag_field("after every model step, map rho to the nearest physical density matrix (Hermitian, "
                               "eigenvalues in [0, 1], integer trace): a rollout-time guard, not part of the model",
                               False)
    conserve: bool = flag_field("after every model step, restore the two invariants of the exact dynamics from the "
                                "rollout's initial state: rho's spectrum (nearest matrix with it) and the total "
                                "energy (the lattice momenta rescaled); a rollout-time guard, not part of the model",
                                False)
    energy_split: Literal["momenta", "work"] = flag_field(
        "with --conserve, who takes each step's energy error: momenta (the lattice momenta are rescaled to the "
        "total energy) or work (the lattice keeps the energy the electrons' work over the step gave it, the "
        "electrons hold the rest)", "momenta")
    work_share: float = flag_field(
        "with --energy-split work, the share of the lattice's energy after each step taken from the work; the rest "
        "as the momenta split sets it (1: the work split alone)", 1.0)
    symmetrize: bool = flag_field("average every model step over the ring's reflection and particle-hole symmetries "
                                  "(exact equivariance, 4x the network cost; no retraining, any model)", False)
    truth_only: bool = flag_field("no model: ground-truth statistics and the exact simulator's timing only", False)
    no_plots: bool = flag_field("report.json only, no PNG plots or TensorBoard copy (the candidate evaluations of "
                                "results calibrate and rollout-curve: plots are ~90 % of a short evaluation)", False)
    spread_scale: float = flag_field("ensembles: multiply the members' spread by this, for every component", 1.0)
    spread_scale_from: Path | None = flag_field(
        "ensembles: take one spread scale per component from this report.json of the same ensemble evaluated on "
        "the validation split (its fitted_spread_scale values: temperature scaling)", None)
    trust_fraction: float = flag_field("ensembles: the trust-horizon threshold as a fraction of each component's "
                                       "climatological std", 0.5)
    baseline_steps: int | None = flag_field(
        "snapshot intervals the exact simulator is timed for from the same initial states (default: --steps, "
        "i.e. the same rollouts; less to save time on big runs, 0 to skip)", None)

    def __post_init__(self) -> None:
        if self.truth_only and self.checkpoint is not None:
            raise UserError("--truth-only evaluates no model; drop --checkpoint or drop --truth-only")
        if not self.truth_only and self.checkpoint is None:
            raise UserError("no model to evaluate; pass --checkpoint PATH (run dir, .pt file or original model "
                            "directory) or --truth-only")
        if self.spread_scale <= 0 or self.trust_fraction <= 0:
            raise UserError("--spread-scale and --trust-fraction must be > 0; pass e.g. --spread-scale 1.0")
        if self.spread_scale_from is not None and self.spread_scale != 1.0:
            raise UserError("--spread-scale and --spread-scale-from both set the spread scale; pass one of them")
        if self.truth_only and (self.bf16 or self.project or self.conserve or self.symmetrize):
            raise UserError("--bf16, --project, --conserve and --symmetrize only affect the model; drop them with "
                            "--truth-only")
        if self.energy_split != "momenta" and not self.conserve:
            raise UserError(f"--energy-split {self.energy_split} chooses how --conserve restores the energy; "
                            "add --conserve or drop --energy-split")
        try:
            physics.check_work_share(self.work_share, self.energy_split == "work", "--work-share")
        except ValueError as err:
            raise UserError(str(err)) from None
        if self.project and self.conserve:
            raise UserError("--project and --conserve are exclusive (--conserve keeps rho's whole initial spectrum, "
                            "which implies --project's bounds); pass one of them")
        for flag, value, least in (("--rollouts", self.rollouts, 1), ("--steps", self.steps, 1),
                                   ("--max-lag", self.max_lag, 0), ("--batch-size", self.batch_size, 1),
                                   ("--baseline-steps", self.baseline_steps, 0)):
            if value is not None and value < least:
                raise UserError(f"{flag} is {value}; pass an integer >= {least}")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What will be computed, resolved against the dataset."""

    indices: tuple[int, ...]  # split-local trajectory indices, in report order
    steps: int  # rollout length T (snapshot intervals); series have T+1 points
    max_lag: int
    L: int
    g_f: float
    K0: float
    eta: float
    snapshot_dt: float
    rk4_per_snapshot: int
    baseline_steps: int  # snapshot intervals the exact simulator is timed for


def build_parser() -> argparse.ArgumentParser:
    """``--config FILE`` (optional), one flag per :class:`Options` field, ``KEY=VALUE`` overrides."""
    p = command_parser("python -m holstein_dist.evaluate",
                       "Roll a surrogate out on a test split and compare its statistics with ground truth.",
                       config_help="optional YAML holding Options fields (checkpoint, data, rollouts, ...)",
                       config_required=False, override_example="max_lag=100 batch_size=16")
    add_field_flags(p, Options)
    return p


def parse_options(argv: Sequence[str] | None = None) -> Options:
    """Parse and check what needs no data (config file, then flags, then KEY=VALUE); UserError names the fix."""
    args = build_parser().parse(argv)
    flags = field_flags(args, (f.name for f in dataclasses.fields(Options)))
    with bad_input():
        raw = layered(args.config, args.overrides, flags)
        if "data" not in raw:  # the one required field: say it the way people pass it
            raise UserError("no dataset; pass --data DIR (a directory made by holstein_dist.generate)")
        opts = from_dict(Options, raw)
        check_output_dir(opts.out, "--out")  # now, not after every rollout has been computed
    return opts


def make_plan(opts: Options, ds: Dataset, split: Split) -> Plan:
    """Resolve rollouts, steps and lags against the data; every mismatch is an UserError with the fix."""
    stored = ds.n_snapshots - 1
    steps = stored if opts.steps is None else opts.steps
    if steps > stored:
        raise UserError(f"--steps {steps} exceeds the {stored} snapshot intervals stored per trajectory in "
                        f"{ds.root}; pass --steps {stored} or less")
    max_lag = min(DEFAULT_MAX_LAG, steps // 2) if opts.max_lag is None else opts.max_lag
    if max_lag >= steps:
        raise UserError(f"--max-lag {max_lag} must be smaller than --steps {steps}; pass --max-lag {steps - 1} "
                        "or less (a few hundred snapshots at most is the paper's choice)")
    available = split.n_trajectories
    n = available if opts.rollouts is None else opts.rollouts
    if n > available:
        raise UserError(f"--rollouts {n} exceeds the {available} trajectories in split {opts.split!r} of "
                        f"{ds.root}; pass --rollouts {available} or less (or omit it to use all)")
    cfg = ds.config
    constants = ds.constants
    return Plan(
        indices=tuple(range(n)),
        steps=steps,
        max_lag=max_lag,
        L=ds.L,
        g_f=float(ds.g_f),
        K0=constants["K0"],
        eta=constants["eta"],
        snapshot_dt=float(ds.snapshot_dt),
        rk4_per_snapshot=int(cfg.save_interval),
        baseline_steps=steps if opts.baseline_steps is None else min(opts.baseline_steps, steps),
    )


def share_of(n: int, rank: int, world_size: int) -> range:
    """Contiguous, balanced block of ``range(n)`` for ``rank``: concatenated in rank order it is range(n)."""
    return range(rank * n // world_size, (rank + 1) * n // world_size)


# ----------------------------------------------------------------------------------------------
# Identities: which model, which data
# ----------------------------------------------------------------------------------------------


def checkpoint_identity(path: Path, model: Surrogate) -> dict[str, Any]:
    """Path, format, sha256 of the weights file, model config and scales: enough to name the model."""
    fmt, weights = resolve(path)  # the file load_model read, so the hash names the loaded weights
    return {
        "path": str(path.resolve()),
        "format": fmt,
        "weights_file": str(weights.resolve()),
        "sha256": file_sha256(weights),
        "model_config": dataclasses.asdict(model.config),
        "scales": dict(model.scales),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "trained_on": recorded_signature(path),
    }


def check_model_fits_data(identity: Mapping[str, Any], plan: Plan, data_root: Path) -> None:
    """Refuse a model trained on another ring length or snapshot interval, where the checkpoint says so.

    A CNN runs on any L, so a mismatch would otherwise produce numbers instead of an error. The checkpoint
    records these itself, so the check holds when the training data has moved or was a relative path.
    """
    trained = identity["trained_on"]
    if "L" in trained and trained["L"] != plan.L:
        raise UserError(f"checkpoint {identity['path']} was trained on L={trained['L']} but {data_root} has "
                        f"L={plan.L}; evaluate on L={trained['L']} data or pass a model trained at L={plan.L}")
    if "snapshot_dt" in trained and not np.isclose(trained["snapshot_dt"], plan.snapshot_dt):
        raise UserError(f"checkpoint {identity['path']} was trained on snapshot interval {trained['snapshot_dt']} "
                        f"but {data_root} saves every {plan.snapshot_dt}; use data with the model's interval")


def data_identity(ds: Dataset, split_name: str, plan: Plan) -> dict[str, Any]:
    """Dataset path, manifest sha256, split, counts and the physics that the metrics depend on."""
    shard_hashes = [e.sha256 for e in ds.manifest.entries(split_name)]
    return {
        "path": str(Path(ds.root).resolve()),
        "manifest_sha256": file_sha256(Path(ds.root) / MANIFEST),
        # Stable across manifest rewrites (e.g. a resumed generate run): the split's shard contents.
        "split_sha256": hashlib.sha256("".join(shard_hashes).encode()).hexdigest(),
        # The same for every copy of the split generated from one config and seed (the files' bytes are not).
        "split_content_sha256": ds.split(split_name).content_sha256(),
        "split": split_name,
        "split_trajectories": ds.split(split_name).n_trajectories,
        "rollouts": len(plan.indices),
        "protocol": ds.config.protocol,
        "L": plan.L,
        "g_i": float(ds.config.g_i),
        "g_f": plan.g_f,
        "snapshot_dt": plan.snapshot_dt,
        "rk4_steps_per_snapshot": plan.rk4_per_snapshot,
        "stored_steps": ds.n_snapshots - 1,
    }


# ----------------------------------------------------------------------------------------------
# Per-rank work
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Share:
    """What one rank sends to rank 0: per-rollout series and per-step sums, never full trajectories."""

    truth: dict[str, np.ndarray]  # charge, lattice, energy, energy_stored: [n, T+1]
    model: dict[str, np.ndarray] | None  # charge, lattice, energy: [n, T+1]
    # RMSE_COMPONENTS -> sum of squared errors per rollout and step, [n, T+1]: per rollout so that the report can
    # keep each rollout's error at a few steps (``mse_by_rollout``) for a paired comparison of two models.
    squared_errors: dict[str, np.ndarray] | None
    pattern: dict[str, np.ndarray] | None  # staggered density [T+1, L] of the first selected trajectory
    rollout_seconds: float
    baseline: dict[str, Any]
    # "truth"/"model" -> STRUCTURE_KEYS -> S(q, t) [n, T+1, L//2+1] float32: 17 numbers per step at L=32,
    # against the L^2 of rho; float32 because the metrics average or correlate them, never difference them.
    # None (a share built without them, e.g. a benchmark's synthetic one): no structure_factor section.
    modes: dict[str, dict[str, np.ndarray]] | None = None
    # An ensemble's member series, member error sums and calibration sums (evaluate_ensemble.EnsembleShare);
    # the fields above then describe the ensemble mean.
    ensemble: Any = None


def state_series(rho: np.ndarray, Q: np.ndarray, P: np.ndarray, plan: Plan) -> dict[str, np.ndarray]:
    """Charge order, lattice order, energy per site (at g_f), lattice kinetic energy per site and domain
    walls per ring (``physics.lattice_kinetic_energy``, ``physics.domain_walls``), ``[n, T+1]`` float64.

    Computed in float64 whatever the storage or model precision, in time chunks so that the
    complex128 copies stay small for long rollouts.
    """
    n, n_times, L = Q.shape
    out = {key: np.empty((n, n_times)) for key in SERIES_KEYS}
    chunk = max(1, _SERIES_CHUNK_ENTRIES // max(1, n * L * L))
    for start in range(0, n_times, chunk):
        window = slice(start, start + chunk)
        r = rho[:, window].astype(np.complex128)
        q = Q[:, window].astype(np.float64)
        p = P[:, window].astype(np.float64)
        out["charge"][:, window] = charge_order(r)
        out["lattice"][:, window] = lattice_order(q)
        out["energy"][:, window] = physics.energy(r, q, p, g=plan.g_f, K0=plan.K0, eta=plan.eta) / L
        out["kinetic"][:, window] = physics.lattice_kinetic_energy(p, K0=plan.K0, eta=plan.eta)
        out["walls"][:, window] = physics.domain_walls(q)
    return out


def squared_error_sums(pred: Sequence[np.ndarray], truth: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-step sums of squared errors per RMSE component over all rollouts, so that ranks can add them up."""
    return {key: np.sum(value, axis=0) for key, value in squared_errors_by_rollout(tuple(pred), tuple(truth)).items()}


def mode_series(rho: np.ndarray, Q: np.ndarray) -> dict[str, np.ndarray]:
    """Structure factors ``S(q, t)`` of Q and of the density ``n_i - 1/2``: ``[n, T+1, L//2+1]`` float32.

    The density's half filling is subtracted so that its q = 0 bin is ``(N - L/2)^2 / L``: zero for
    the truth (the trace is conserved), the particle-number error of a model. Computed in float64
    (``metrics.structure_factor``) and stored in float32 to keep the gathered share small.
    """
    density = np.diagonal(rho, axis1=-2, axis2=-1).real.astype(np.float64) - HALF_FILLING
    fields = {"Q": Q, "density": density}
    return {key: structure_factor(fields[key]).astype(np.float32) for key in STRUCTURE_KEYS}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def precision_context(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for the convolutions when asked, else nothing."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def roll_out(model: Surrogate, initial: Mapping[str, np.ndarray], steps: int, device: torch.device,
             bf16: bool, guard: Guard | None = None) -> tuple[tuple[np.ndarray, ...], float]:
    """Model rollout from ``initial`` (rho [b,L,L], Q, P [b,L]); returns host arrays and compute seconds."""
    state = tuple(torch.from_numpy(np.ascontiguousarray(initial[key])) for key in STATE_KEYS)
    with precision_context(device, bf16):
        _sync(device)
        start = time.perf_counter()
        pred = model.rollout(*state, steps, guard=guard)
        _sync(device)
        seconds = time.perf_counter() - start
    return tuple(to_numpy(x) for x in pred), seconds


def _concat(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Key-wise concatenation along the trajectory axis, in the order given."""
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _empty_share(plan: Plan, with_model: bool) -> Share:
    """A rank with no trajectories (more ranks than rollouts) still takes part in the gather."""
    empty = np.empty((0, plan.steps + 1))
    empty_modes = dict.fromkeys(STRUCTURE_KEYS, np.empty((0, plan.steps + 1, plan.L // 2 + 1), np.float32))
    return Share(
        truth={key: empty for key in (*SERIES_KEYS, "energy_stored")},
        model=dict.fromkeys(SERIES_KEYS, empty) if with_model else None,
        squared_errors=dict.fromkeys(RMSE_COMPONENTS, empty) if with_model else None,
        pattern=None,
        modes={"truth": empty_modes, **({"model": empty_modes} if with_model else {})},
        rollout_seconds=0.0,
        baseline={"seconds": 0.0, "trajectory_steps": 0},
    )


def evaluate_share(split: Split, plan: Plan, positions: range, model: Surrogate | Ensemble | None,
                   device: torch.device, batch_size: int, bf16: bool, guard: Guard | None = None) -> Share:
    """Read, roll out and reduce this rank's trajectories (``positions`` into ``plan.indices``) in batches.

    For an ensemble the model rollout is the ensemble mean, and the members' reductions go to ``ensemble``.
    """
    indices = [plan.indices[i] for i in positions]
    if not indices:
        return _empty_share(plan, model is not None)
    ensemble_parts = []
    if model is not None:
        first = split.read_many(indices[:1], 0, 1)
        for member in model.models if isinstance(model, Ensemble) else [model]:  # warm-up, untimed
            roll_out(member, {k: v[:, 0] for k, v in first.items()}, 1, device, bf16)
    truth_parts, model_parts, error_parts, initial_parts, landing = [], [], [], [], []
    mode_parts: dict[str, list[dict[str, np.ndarray]]] = {"truth": [], "model": []}
    pattern, rollout_seconds = None, 0.0
    for start in range(0, len(indices), batch_size):
        data = split.read_many(indices[start:start + batch_size], 0, plan.steps + 1, (*STATE_KEYS, "energy"))
        truth = tuple(data[key] for key in STATE_KEYS)
        truth_parts.append({**state_series(*truth, plan), "energy_stored": data["energy"].astype(np.float64)})
        mode_parts["truth"].append(mode_series(data["rho"], data["Q"]))
        initial_parts.append({key: x[:, 0] for key, x in zip(STATE_KEYS, truth)})
        landing.append({"Q": data["Q"][:, plan.baseline_steps]})  # where the exact simulator should land
        first_batch_of_all = start == 0 and positions.start == 0
        if first_batch_of_all:
            pattern = {"truth": staggered_density(data["rho"][0])}
        if isinstance(model, Ensemble):
            pred, members, seconds = model.roll_out(roll_out, initial_parts[-1], plan.steps, device, bf16, guard)
            ensemble_parts.append(model.reduce(members, truth, functools.partial(state_series, plan=plan),
                                               squared_error_sums))
            del members
        elif model is not None:
            pred, seconds = roll_out(model, initial_parts[-1], plan.steps, device, bf16, guard)
        if model is not None:
            rollout_seconds += seconds
            model_parts.append(state_series(*pred, plan))
            mode_parts["model"].append(mode_series(pred[0], pred[1]))
            error_parts.append(squared_errors_by_rollout(pred, truth))
            if first_batch_of_all:
                pattern["model"] = staggered_density(pred[0][0])
    return Share(
        truth=_concat(truth_parts),
        model=_concat(model_parts) if model is not None else None,
        squared_errors=_concat(error_parts) if error_parts else None,
        pattern=pattern,
        modes={kind: _concat(parts) for kind, parts in mode_parts.items() if parts},
        rollout_seconds=rollout_seconds,
        baseline=time_exact_simulator(_concat(initial_parts), plan, _concat(landing)["Q"]),
        ensemble=EnsembleShare.merge(ensemble_parts) if ensemble_parts else None,
    )


def time_exact_simulator(initial: Mapping[str, np.ndarray], plan: Plan, truth_Q: np.ndarray) -> dict[str, Any]:
    """Advance this rank's initial states ``plan.baseline_steps`` snapshots with the exact RK4 and time it.

    The numba kernel gets as many threads as torch uses here, so both sides of the speed-up use the
    same cores. The final Q is compared with the stored snapshot as a check that data and simulator
    agree: ~1e-7 for near-periodic (shallow) data; chaotic (deep) data amplifies the single-precision
    rounding of the stored initial state, so there the difference grows with the horizon.
    """
    n = initial["Q"].shape[0]
    if plan.baseline_steps == 0:
        return {"seconds": 0.0, "trajectory_steps": 0}
    rho, Q, P = (initial[k].astype(np.complex128 if k == "rho" else np.float64) for k in STATE_KEYS)
    threads = torch.get_num_threads()
    kwargs = {"g": plan.g_f, "K0": plan.K0, "eta": plan.eta, "threads": threads}
    physics.make_stepper(rho[:1], Q[:1], P[:1], **kwargs).advance(1)  # JIT compile / cache load, untimed
    stepper = physics.make_stepper(rho, Q, P, **kwargs)
    start = time.perf_counter()
    stepper.advance(plan.baseline_steps * plan.rk4_per_snapshot)
    seconds = time.perf_counter() - start
    final_Q = stepper.state()[1]
    return {
        "seconds": seconds,
        "trajectory_steps": n * plan.baseline_steps,
        "backend": type(stepper).__name__,
        "threads": threads,
        "final_Q_max_abs_diff_vs_data": float(np.max(np.abs(final_Q - truth_Q))),
    }


# ----------------------------------------------------------------------------------------------
# Rank 0: merge and metrics
# ----------------------------------------------------------------------------------------------


def merge_shares(shares: Sequence[Share]) -> Share:
    """Concatenate in rank order (= trajectory order), add the error sums, keep the slowest timings."""
    with_model = shares[0].model is not None
    timed = [s.baseline for s in shares if s.baseline["trajectory_steps"] > 0]
    baseline: dict[str, Any] = {
        # Ranks run concurrently: the job takes as long as its slowest rank.
        "seconds": max((b["seconds"] for b in timed), default=0.0),
        "trajectory_steps": sum(b["trajectory_steps"] for b in timed),
    }
    if timed:
        baseline.update(backend=timed[0]["backend"], threads_per_rank=timed[0]["threads"],
                        final_Q_max_abs_diff_vs_data=max(b["final_Q_max_abs_diff_vs_data"] for b in timed))
    return Share(
        truth=_concat([s.truth for s in shares]),
        model=_concat([s.model for s in shares]) if with_model else None,
        squared_errors=_concat([s.squared_errors for s in shares]) if with_model else None,
        pattern=next((s.pattern for s in shares if s.pattern is not None), None),
        modes=None if shares[0].modes is None
        else {kind: _concat([s.modes[kind] for s in shares]) for kind in shares[0].modes},
        rollout_seconds=max(s.rollout_seconds for s in shares),
        baseline=baseline,
        ensemble=EnsembleShare.merge(parts) if (parts := [s.ensemble for s in shares if s.ensemble is not None])
        else None,
    )


def _ranges(series: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    out = {}
    for key in ORDER_KEYS:
        x = series[key]
        out[key] = {"min": float(np.min(x)), "max": float(np.max(x)), "max_range": float(np.max(np.ptp(x, axis=1)))}
    return out


def truth_lag_sums(merged: Share, plan: Plan) -> dict[str, LagSums]:
    """Per-trajectory lag sums of the truth's order parameters: built once, reweighted by both sampling-noise
    metrics (the noise floor here, the model's bootstrap in ``model_metrics``)."""
    return {key: LagSums(merged.truth[key], plan.max_lag) for key in ORDER_KEYS}


def truth_metrics(merged: Share, plan: Plan, lag_sums: Mapping[str, LagSums]) -> dict[str, Any]:
    """Ground-truth statistics: autocorrelation, ranges, energy conservation (stored and recomputed)."""
    truth = merged.truth
    return {
        "autocorr": {key: {"truth": autocorrelation(truth[key], plan.max_lag)} for key in ORDER_KEYS},
        # What a perfect model would score in the climate test at this many rollouts (sampling.py).
        "autocorr_noise_floor": {key: autocorrelation_noise_floor(lag_sums[key], plan.max_lag) for key in ORDER_KEYS},
        "ranges": {"truth": _ranges(truth)},
        "lattice_motion": lattice_motion_part("truth", truth),
        # The autocorrelation's first trough per third of the rollout: whether the swing's period drifts.
        "swing": {key: {"truth": swing_by_part(truth[key], plan.max_lag)} for key in ORDER_KEYS},
        "energy_drift": {
            # Recomputed from the stored (single-precision) snapshots exactly as for the model: its floor.
            "truth": energy_drift(truth["energy"]),
            # Recorded by the float64 integrator while generating: the simulator's own conservation.
            "truth_integrator": energy_drift(truth["energy_stored"]),
        },
    }


def _try(metric: str, notes: list[str], fn: Any, *args: Any) -> Any:
    """A model metric that is undefined for these rollouts (e.g. a constant series) becomes null + a note."""
    try:
        return fn(*args)
    except ValueError as exc:
        notes.append(f"{metric}: {exc}")
        return None


def lattice_motion_part(side: str, series: Mapping[str, np.ndarray] | None) -> dict[str, Any]:
    """One side ("truth" or "model") of the report's ``lattice_motion`` section: per window of
    ``COHERENT_WINDOW`` steps, the mean lattice kinetic energy per site and the mean number of domain walls.

    The gauges of a surrogate that freezes: measured on the deep quench, a model whose one-step error halved
    left the lattice 67x colder than the truth in steps 401-500 while its total energy moved by 0.055 per site.
    """
    if series is None:
        return {key: {side: None} for key in MOTION_KEYS}
    part: dict[str, Any] = {key: {side: window_means(series[key])} for key in MOTION_KEYS}
    if side == "truth":
        part["windows"] = [list(span) for span in window_spans(series["kinetic"].shape[1])]
    return part


def climate_mask(merged: Share) -> np.ndarray:
    """``[n]`` bool: the model rollouts that pass the range test (docs/physics.md section 3), which the climate
    statistics use."""
    truth, model = merged.truth, merged.model
    return ~divergent_mask({k: model[k] for k in ORDER_KEYS}, {k: truth[k] for k in ORDER_KEYS},
                           DIVERGENCE_FACTOR)


MSE_BY_ROLLOUT_EVERY = 100
"""The report keeps each rollout's mean squared error at step 1 and every this many steps (``mse_by_rollout``)."""


def mse_by_rollout(squared_errors: Mapping[str, np.ndarray], plan: Plan) -> dict[str, Any]:
    """Each rollout's mean squared error per component (over its entries) at step 1 and every
    ``MSE_BY_ROLLOUT_EVERY`` steps: ``{"steps", "rollouts" (split-local indices, report order), component:
    [step][rollout]}``. Two reports on the same rollouts can then be compared with a paired bootstrap (``results
    target``): how far the RMSE ratio at a step would move on another test split of this size."""
    steps = [step for step in (1, *range(MSE_BY_ROLLOUT_EVERY, plan.steps + 1, MSE_BY_ROLLOUT_EVERY))
             if step <= plan.steps]
    per_state = component_entries(1, plan.L)
    return {"steps": steps, "rollouts": list(plan.indices),
            **{k: (squared_errors[k][:, steps] / per_state[k]).T for k in RMSE_COMPONENTS}}


def model_metrics(merged: Share, plan: Plan, truth_autocorr: Mapping[str, np.ndarray],
                  truth_sums: Mapping[str, LagSums]) -> dict[str, Any]:
    """The model-vs-truth part of the report, shaped like it: ``build_report`` merges its ``autocorr``,
    ``ranges`` and ``energy_drift`` entries into the truth's sections and its ``notes`` into the notes."""
    truth, model, notes = merged.truth, merged.model, []
    kept = climate_mask(merged)  # climate statistics use the rollouts that stayed in the physical range
    diverged = ~kept
    kept_model = {k: v[kept] for k, v in model.items()} if kept.any() else None
    entries = component_entries(len(plan.indices), plan.L)
    autocorr, max_error, mean_error, wasserstein, spectrum, spread = {}, {}, {}, {}, {}, {}
    for key in ORDER_KEYS:
        kept_series = model[key][kept]
        c_model = _try(f"autocorr.{key}.model", notes, autocorrelation, kept_series, plan.max_lag) \
            if kept.any() else None
        autocorr[key] = {"model": c_model}
        gap = None if c_model is None else np.abs(c_model - truth_autocorr[key])[1:]  # lag 0 is 1 on both sides
        max_error[key] = None if gap is None else float(np.max(gap, initial=0.0))
        mean_error[key] = None if gap is None or gap.size == 0 else float(np.mean(gap))
        spread[key] = _try(f"autocorr_max_abs_error_bootstrap.{key}", notes, autocorrelation_error_bootstrap,
                           kept_series, truth_sums[key], plan.max_lag, kept) if c_model is not None else None
        wasserstein[key] = _try(f"wasserstein.{key}", notes, wasserstein1, kept_series, truth[key]) \
            if kept.any() else None
        spectrum[key] = _try(f"power_spectrum_distance.{key}", notes, power_spectrum_distance, kept_series,
                             truth[key]) if kept.any() else None
    if not kept.any():
        notes.append("every rollout diverged: climate metrics (autocorr, wasserstein, spectra, energy) are null")
    return {
        "notes": notes,
        "autocorr": autocorr,
        "ranges": {"model": _ranges(kept_model) if kept_model else None},
        "energy_drift": {"model": energy_drift(kept_model["energy"]) if kept_model else None},
        "lattice_motion": lattice_motion_part("model", kept_model),
        "swing": {key: {"model": swing_by_part(kept_model[key], plan.max_lag) if kept_model else None}
                  for key in ORDER_KEYS},
        "divergent_fraction": float(np.mean(diverged)),
        "divergent_rollouts": int(np.sum(diverged)),
        "climate_rollouts": int(np.sum(kept)),
        "rmse_by_step": {k: np.sqrt(np.sum(merged.squared_errors[k], axis=0) / entries[k]) for k in RMSE_COMPONENTS},
        "mse_by_rollout": mse_by_rollout(merged.squared_errors, plan),
        "autocorr_max_abs_error": max_error,
        "autocorr_mean_abs_error": mean_error,
        # How far the max error would move on another test split of this size (paired bootstrap).
        "autocorr_max_abs_error_bootstrap": spread,
        "wasserstein": wasserstein,
        "power_spectrum_distance": spectrum,
        # The rollouts' mean trajectory: lag / amplitude / offset of the model's coherent oscillation.
        "coherent": {key: coherent_error(truth[key][kept], kept_model[key]) for key in ORDER_KEYS}
        if kept.any() else None,
    }


def _spectrum_summary(series: np.ndarray, q: np.ndarray) -> dict[str, Any]:
    """Time- and ensemble-mean ``S(q)`` of ``[n, T+1, M]`` series and its peak (q = 0 left out)."""
    mean = np.mean(series, axis=(0, 1), dtype=np.float64)
    peak = structure_factor_peak(mean)
    return {"mean": mean, "peak_m": peak, "peak_q": float(q[peak])}


def _mode_metrics(key: str, truth: np.ndarray, model: np.ndarray | None, q: np.ndarray, max_lag: int,
                  notes: list[str]) -> dict[str, Any]:
    """Mean spectra, peaks and the autocorrelation of ``S(q_peak, t)`` for one field.

    Both autocorrelations are taken at the truth's peak, so that the two curves describe the same
    mode; a model that orders at another q shows in ``model.peak_m`` and in ``mean_difference``.
    """
    entry: dict[str, Any] = {"truth": _spectrum_summary(truth, q)}
    peak = entry["truth"]["peak_m"]
    name = f"structure_factor.{key}"
    entry["autocorr"] = {"m": peak, "q": float(q[peak]),
                         "truth": _try(f"{name}.autocorr.truth", notes, autocorrelation, truth[..., peak], max_lag)}
    if model is None:
        return entry
    has_model = model.shape[0] > 0
    entry["model"] = _try(f"{name}.model", notes, _spectrum_summary, model, q) if has_model else None
    entry["mean_difference"] = None if entry["model"] is None else entry["model"]["mean"] - entry["truth"]["mean"]
    entry["max_abs_mean_difference"] = None if entry["model"] is None \
        else float(np.max(np.abs(entry["mean_difference"])))
    c_truth = entry["autocorr"]["truth"]
    c_model = _try(f"{name}.autocorr.model", notes, autocorrelation, model[..., peak], max_lag) \
        if has_model else None
    entry["autocorr"]["model"] = c_model
    gap = None if c_model is None or c_truth is None else np.abs(c_model - c_truth)[1:]
    entry["autocorr_max_abs_error"] = None if gap is None else float(np.max(gap, initial=0.0))
    return entry


def structure_factor_metrics(merged: Share, plan: Plan, kept: np.ndarray | None) -> dict[str, Any]:
    """The mode-resolved part of the report: ``S(q)`` of Q and of the density for truth and (kept) model
    rollouts under ``structure_factor``, plus its ``notes``.

    ``kept`` selects the model rollouts that passed the range test (None: no model), as for the
    other climate statistics.
    """
    q = wavevectors(plan.L)
    notes: list[str] = []
    section: dict[str, Any] = {"m": np.arange(q.size), "q": q, "density_offset": HALF_FILLING}
    for key in STRUCTURE_KEYS:
        model = None if kept is None else merged.modes["model"][key][kept]
        section[key] = _mode_metrics(key, merged.modes["truth"][key], model, q, plan.max_lag, notes)
    return {"structure_factor": section, "notes": notes}


def noise_level_warnings(truth_ranges: Mapping[str, Mapping[str, float]],
                         structure: Mapping[str, Any] | None) -> list[str]:
    """One warning per q = pi order parameter whose truth never leaves the noise level (finite-size trap)."""
    where = "the peak of S(q)"
    if structure is not None:
        peak = structure["Q"]["truth"]["peak_q"] / np.pi
        where = f"q = {peak:.3g} pi" + ("" if np.isclose(peak, 1.0) else ", not at pi")
    warnings = []
    for key in ORDER_KEYS:
        span = truth_ranges[key]["max_range"]
        if span < NOISE_LEVEL_RANGE:
            warnings.append(
                f"truth {key} order stays at the noise level (largest per-trajectory range {span:.2g} < "
                f"{NOISE_LEVEL_RANGE:g}): its autocorrelation (climate) test and the range-based divergence test "
                f"measure noise, not dynamics; judge the model by the structure factor section (structure_factor, "
                f"structure_factor.png; the truth's S_Q peaks at {where}) and use L=32 data "
                "for the paper's climate test (the deep quench at L=16 is the finite-size trap of docs/physics.md "
                "section 3)")
    return warnings


def timing_report(merged: Share, plan: Plan, world_size: int, wall_seconds: float, device: torch.device,
                  with_model: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(surrogate timing, exact-simulator baseline) with throughput in rollout-steps per second."""
    n_steps_total = len(plan.indices) * plan.steps
    timing: dict[str, Any] = {"world_size": world_size, "device": device.type, "wall_seconds": wall_seconds}
    surrogate_rate = None
    if with_model and merged.rollout_seconds > 0:
        surrogate_rate = n_steps_total / merged.rollout_seconds
        timing.update(rollout_seconds=merged.rollout_seconds, rollout_steps_per_s=surrogate_rate,
                      seconds_per_step_per_trajectory=1.0 / surrogate_rate)
    base = dict(merged.baseline)
    base.update(snapshot_steps=plan.baseline_steps, rk4_steps_per_snapshot=plan.rk4_per_snapshot)
    if base["trajectory_steps"] > 0 and base["seconds"] > 0:
        rate = base["trajectory_steps"] / base["seconds"]
        base.update(rollout_steps_per_s=rate, seconds_per_snapshot_step_per_trajectory=1.0 / rate,
                    estimated_seconds_for_all_rollouts=n_steps_total / rate)
        if surrogate_rate is not None:
            base["surrogate_speedup"] = surrogate_rate / rate
    return timing, base


def build_report(merged: Share, plan: Plan, identities: Mapping[str, Any], timing: Mapping[str, Any],
                 baseline: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The report dict (numpy arrays still inside; ``jsonable`` converts), the one place it is assembled.

    Each metric function returns its part shaped like the report; the parts are merged in this order,
    which is the order of the sections in report.json.
    """
    with_model = merged.model is not None
    sums = truth_lag_sums(merged, plan)
    truth = truth_metrics(merged, plan, sums)
    parts: list[Mapping[str, Any]] = [
        {"schema": REPORT_SCHEMA, "mode": "model" if with_model else "truth-only", **identities,
         "settings": dict(settings), "notes": []},
        truth,
    ]
    if with_model:
        truth_autocorr = {key: c["truth"] for key, c in truth["autocorr"].items()}
        model_part = model_metrics(merged, plan, truth_autocorr, sums)
        parts.append(model_part)
        if merged.ensemble is not None:
            members = [Path(m["weights_file"]) for m in identities["checkpoint"]["members"]]
            parts.append(ensemble_metrics(merged.ensemble, model_part["rmse_by_step"], merged.truth, truth_autocorr,
                                          model_part["autocorr_max_abs_error"], len(plan.indices), plan.L,
                                          plan.max_lag, DIVERGENCE_FACTOR, settings["trust_fraction"], members))
    structure = None
    if merged.modes is not None:
        structure = structure_factor_metrics(merged, plan, climate_mask(merged) if with_model else None)
        parts.append(structure)
    warnings = noise_level_warnings(truth["ranges"]["truth"], structure and structure["structure_factor"])
    parts += [{"warnings": warnings, "notes": warnings},
              {"timing": dict(timing), "physics_baseline": dict(baseline)}]
    return merge_parts(parts)


def merge_parts(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Deep merge of report parts into a new dict: sections merge key by key, lists (notes) concatenate.

    Keys keep the order of their first appearance. Two parts setting the same value is a bug, not a
    choice to make silently, so it raises.
    """
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, Mapping):
                if not isinstance(out.get(key, {}), dict):
                    raise ValueError(f"report parts disagree on the type of {key!r}")
                out[key] = merge_parts([out.get(key, {}), value])
            elif isinstance(value, list) and isinstance(out.get(key, []), list):
                out[key] = [*out.get(key, []), *value]
            elif key in out:
                raise ValueError(f"two report parts set {key!r}")
            else:
                out[key] = value
    return out


def jsonable(obj: Any) -> Any:
    """numpy -> lists and plain numbers; NaN/inf -> null (JSON has neither)."""
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


# ----------------------------------------------------------------------------------------------
# Summary and entry point
# ----------------------------------------------------------------------------------------------


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def structure_factor_lines(report: Mapping[str, Any]) -> list[str]:
    """Peaks (in units of pi) and, with a model, the peak-mode autocorrelation error of each field."""
    section = report.get("structure_factor")
    if section is None:
        return []
    peaks, errors = [], []
    for key in STRUCTURE_KEYS:
        entry = section[key]
        peak = f"{key} truth {_fmt(entry['truth']['peak_q'] / np.pi)}"
        if "model" in entry:
            model_peak = entry["model"] and entry["model"]["peak_q"] / np.pi
            peak += f" model {_fmt(model_peak)}"
            errors.append(f"{key} {_fmt(entry['autocorr_max_abs_error'])}")
        peaks.append(peak)
    line = "  structure factor peak q/pi: " + ", ".join(peaks)
    if errors:
        line += "; S(q_peak, t) autocorr max |model-truth|: " + ", ".join(errors)
    return [line]


def coherent_lines(report: Mapping[str, Any]) -> list[str]:
    """One line per order parameter on the rollouts' mean oscillation: lag and amplitude error, first to last
    fitted window, and how much of the error every rollout shares."""
    lines = []
    for key, rows in (report.get("coherent") or {}).items():
        fitted = [r for r in rows if r["lag_steps"] is not None]
        share = np.median([r["systematic_share"] for r in rows if r["systematic_share"] is not None] or [np.nan])
        if not fitted:
            lines.append(f"  mean oscillation ({key}): none (coherence < {COHERENCE_FLOOR} in every window; the "
                         f"rollouts decorrelate, so compare statistics, not trajectories)")
            continue
        first, last = fitted[0], fitted[-1]
        lines.append(f"  mean oscillation ({key}): lag {first['lag_steps']:+.3f} -> {last['lag_steps']:+.3f} steps, "
                     f"amplitude error {first['amplitude_error']:+.2%} -> {last['amplitude_error']:+.2%} "
                     f"(steps {first['start']}-{first['stop']} -> {last['start']}-{last['stop']}); shared by "
                     f"every rollout: {share:.0%} of the error" + fast_oscillation_text(rows))
    return lines


def fast_oscillation_medians(rows: Sequence[Mapping[str, Any]]) -> dict[str, float] | None:
    """Of one order parameter's ``coherent`` windows (``metrics.coherent_error``): the fast cut and the medians over
    windows of ``truth_fast``, ``model_fast`` and ``residual``; None for a report made before those fields."""
    kept = [r for r in rows if r.get("truth_fast") is not None]
    if not kept:
        return None
    medians = {key: float(np.median([r[key] for r in kept if r[key] is not None] or [np.nan]))
               for key in ("truth_fast", "model_fast", "residual")}
    return {"fast_cut": kept[0]["fast_cut"], **medians}


def fast_oscillation_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """'; fast oscillation ...' (:func:`fast_oscillation_medians`), or nothing for a report without those fields."""
    m = fast_oscillation_medians(rows)
    if m is None:
        return ""
    return (f"; fast oscillation (> {m['fast_cut']:.3f} cycles/step) RMS truth {m['truth_fast']:.2g}, model "
            f"{m['model_fast']:.2g}, fit residual {m['residual']:.2g}")


def lattice_motion_lines(report: Mapping[str, Any]) -> list[str]:
    """The lattice's kinetic energy and domain walls, first and last window, truth and (kept) model rollouts."""
    motion = report.get("lattice_motion")
    if not motion or not motion.get("windows"):
        return []
    windows = motion["windows"]
    lines = []
    for key, label in (("kinetic", "lattice kinetic energy per site"), ("walls", "domain walls per ring")):
        values = {side: motion[key].get(side) for side in ("truth", "model")}
        text = ", ".join(f"{side} {_fmt(v[0])} -> {_fmt(v[-1])}" for side, v in values.items() if v is not None)
        lines.append(f"  {label} (steps {windows[0][0]}-{windows[0][1]} -> {windows[-1][0]}-{windows[-1][1]}): "
                     + text)
    return lines


def swing_lines(report: Mapping[str, Any]) -> list[str]:
    """The lattice order's autocorrelation trough (lag) in each third of the rollouts, truth and model (reports
    made before the section existed have no line)."""
    swing = report.get("swing", {}).get("lattice")
    if not swing:
        return []
    def lags(parts: list[dict[str, Any]] | None) -> str:
        return "n/a" if not parts else " / ".join("-" if p["trough_lag"] is None else str(p["trough_lag"])
                                                  for p in parts)
    return ["  lattice swing, autocorrelation trough lag by third of the rollout: "
            + ", ".join(f"{side} {lags(swing[side])}" for side in ("truth", "model") if side in swing)]


def sampling_lines(report: Mapping[str, Any]) -> list[str]:
    """The climate test's sampling noise: a perfect model's score at this many rollouts, and the spread of the
    model's own score over resampled test splits (reports made before these existed have no line)."""
    floor, spread = report.get("autocorr_noise_floor"), report.get("autocorr_max_abs_error_bootstrap")
    if floor is None or spread is None:
        return []
    def band(key: str) -> str:
        entry = spread[key]
        return "n/a" if entry is None else f"{entry['p05']:.3g}-{entry['p95']:.3g} (std {entry['std']:.2g})"
    return [f"  autocorr max error, sampling: bootstrap 5-95 % charge {band('charge')}, lattice {band('lattice')}; "
            f"a perfect model would score ~{_fmt(floor['charge'])} / {_fmt(floor['lattice'])} with "
            f"{report['data']['rollouts']} rollouts"]


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """A short human-readable table of the headline numbers."""
    data, timing, base = report["data"], report["timing"], report["physics_baseline"]
    what = report["checkpoint"]["path"] + f" ({report['checkpoint']['format']})" if "checkpoint" in report \
        else "ground truth only"
    lines = [f"evaluated {what}", f"  on {data['path']} [{data['split']}]: {data['rollouts']} rollouts x "
             f"{report['settings']['steps']} steps, L={data['L']}, {timing['world_size']} rank(s), "
             f"{timing['wall_seconds']:.1f} s"]
    if report["mode"] == "model":
        rows = [("autocorr max |model-truth|", "autocorr_max_abs_error"),
                ("autocorr mean |model-truth|", "autocorr_mean_abs_error"),
                ("Wasserstein-1", "wasserstein"), ("spectrum distance", "power_spectrum_distance")]
        lines.append(f"  {'':30s}{'charge':>12s}{'lattice':>12s}")
        lines += [f"  {label:30s}{_fmt(report[key]['charge']):>12s}{_fmt(report[key]['lattice']):>12s}"
                  for label, key in rows]
        rmse = report["rmse_by_step"]
        lines.append(f"  divergent fraction {report['divergent_fraction']:.3f}   RMSE at step 1 / "
                     f"{report['settings']['steps']}: " + ", ".join(
                         f"{k} {_fmt(rmse[k][1])}/{_fmt(rmse[k][-1])}" for k in RMSE_COMPONENTS))
        lines += sampling_lines(report)
        drift = report["energy_drift"]["model"]
        lines.append(f"  energy drift max |E-E0|/L: model {_fmt(drift and drift['max_abs'])}, truth "
                     f"{_fmt(report['energy_drift']['truth']['max_abs'])}")
    else:
        acf = report["autocorr"]
        lines.append(f"  truth autocorr at lag {report['settings']['max_lag']}: charge "
                     f"{_fmt(acf['charge']['truth'][-1])}, lattice {_fmt(acf['lattice']['truth'][-1])}; energy "
                     f"drift (integrator) {_fmt(report['energy_drift']['truth_integrator']['max_abs'])}")
    lines += coherent_lines(report)
    lines += lattice_motion_lines(report)
    lines += swing_lines(report)
    lines += structure_factor_lines(report)
    lines += ensemble_summary_lines(report)
    lines += [f"  WARNING: {warning}" for warning in report.get("warnings", [])]
    speed = f"  exact simulator {_fmt(base.get('rollout_steps_per_s'))} rollout-steps/s"
    if "rollout_steps_per_s" in timing:
        speed = (f"  surrogate {_fmt(timing['rollout_steps_per_s'])} rollout-steps/s, " + speed.strip()
                 + f" -> speed-up {_fmt(base.get('surrogate_speedup'))}x")
    return lines + [speed]


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is visible; pass --device cpu (or auto)")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def open_inputs(opts: Options) -> tuple[Dataset, Split, Plan]:
    ds = open_dataset(opts.data)
    if opts.split not in ds.splits:
        raise UserError(f"--split {opts.split!r} is not in {ds.root} (it has {', '.join(ds.splits)}); pass --split "
                        "with one of those")
    split = ds.split(opts.split)
    return ds, split, make_plan(opts, ds, split)


def load_surrogate(opts: Options, plan: Plan, device: torch.device) -> tuple[Surrogate | Ensemble, dict[str, Any]]:
    """The model (or the ensemble of an ensemble directory) and its identity, checked against the data."""
    if is_ensemble(opts.checkpoint):
        scales = opts.spread_scale if opts.spread_scale_from is None else fitted_scales(opts.spread_scale_from)
        ensemble, identity = load_ensemble(opts.checkpoint, device, scales, checkpoint_identity, opts.symmetrize)
        check_model_fits_data(identity, plan, opts.data)
        return ensemble, identity
    model = load_model(opts.checkpoint, device=device)
    if opts.symmetrize:
        model.symmetrize()
    identity = checkpoint_identity(opts.checkpoint, model)
    check_model_fits_data(identity, plan, opts.data)
    return model, identity


def rollout_guard(opts: Options, plan: Plan) -> Guard | None:
    """What the model rollouts restore after every step (``--project``, ``--conserve``), or None."""
    name = "conserve" if opts.conserve else "bounds" if opts.project else "none"
    return named_guard(name, Couplings(g=plan.g_f, K0=plan.K0, eta=plan.eta), opts.energy_split, plan.snapshot_dt,
                       opts.work_share)


def evaluate(opts: Options, env: DistEnv, device: torch.device) -> dict[str, Any] | None:
    """Run this rank's share; on rank 0 return the report (written to ``opts.out``), elsewhere None."""
    wall_start = time.perf_counter()
    ds, split, plan = open_inputs(opts)
    model, identities = None, {}
    if not opts.truth_only:
        model, identities["checkpoint"] = load_surrogate(opts, plan, device)
    share = evaluate_share(split, plan, share_of(len(plan.indices), env.rank, env.world_size), model, device,
                           opts.batch_size, opts.bf16, rollout_guard(opts, plan))
    shares = gather_objects_to_main(share)
    if not env.is_main:
        return None
    merged = merge_shares(shares)
    identities["data"] = data_identity(ds, opts.split, plan)
    settings = {"steps": plan.steps, "max_lag": plan.max_lag, "batch_size": opts.batch_size, "bf16": opts.bf16,
                "project": opts.project, "conserve": opts.conserve, "energy_split": opts.energy_split,
                "work_share": opts.work_share,
                "symmetrize": opts.symmetrize,
                "divergence_factor": DIVERGENCE_FACTOR, "baseline_steps": plan.baseline_steps}
    if isinstance(model, Ensemble):
        settings.update(spread_scale=model.spread_scale, trust_fraction=opts.trust_fraction)
    timing, baseline = timing_report(merged, plan, env.world_size, time.perf_counter() - wall_start, device,
                                     model is not None)
    return write_outputs(build_report(merged, plan, identities, timing, baseline, settings), merged, plan, opts.out,
                         plots=not opts.no_plots)


def write_outputs(report: Mapping[str, Any], merged: Share, plan: Plan, out: Path,
                  plots: bool = True) -> dict[str, Any]:
    """Plots and TensorBoard first (unless ``plots`` is False), then report.json atomically; returns the report
    as written (with the names of its plots)."""
    from holstein_dist.report import PlotData, write_plots, write_tensorboard

    out.mkdir(parents=True, exist_ok=True)
    pngs: dict[str, Path] = {}
    if plots:
        traces = {kind: {k: series[k][:TRACE_TRAJECTORIES] for k in ORDER_KEYS}
                  for kind, series in (("truth", merged.truth), ("model", merged.model)) if series is not None}
        plot_data = PlotData(report=report, traces=traces, pattern=merged.pattern, snapshot_dt=plan.snapshot_dt)
        pngs = write_plots(plot_data, out)
        write_tensorboard(plot_data, pngs, out / "tb")
    written = {**report, "plots": {name: path.name for name, path in pngs.items()}}
    write_json_atomic(out / "report.json", jsonable(written))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: 0 with the report written, 2 with one ``error:`` line for bad input."""
    try:
        opts = parse_options(argv)
        device = resolve_device(opts.device)
        env = init_distributed(backend="gloo" if device.type == "cpu" else None)
        if device.type == "cuda":
            device = env.device  # this rank's GPU
        try:
            # The data set and the checkpoint are opened and checked inside: the one-line ValueErrors of
            # open_dataset and load_model are bad input too.
            with bad_input():
                report = evaluate(opts, env, device)
        finally:
            shutdown()
    except UserError as exc:
        return report_error(exc)
    if report is not None:
        print("\n".join(summary_lines(report)))
        print(f"report: {opts.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
