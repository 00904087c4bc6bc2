"""Train a surrogate (SimpleCNN or PARC) with the curriculum of docs/physics.md section 5.

    python -m holstein_dist.train --config configs/train/tiny.yaml data=DIR run_dir=DIR [KEY=VALUE ...]

The same command runs as one process, under ``torchrun --nproc_per_node N``, under ``srun`` (one task per
GPU) and inside a submitit job (``python -m hpc.submit train ...``); ``hpc.dist`` works out which. Rank 0
writes ``<run_dir>/config.yaml`` (the resolved config), ``<run_dir>/checkpoints/`` and the TensorBoard
events in ``<run_dir>``. Re-running the command with the same ``run_dir`` resumes from the newest
checkpoint; SIGUSR1/SIGUSR2 (Slurm's advance warning) checkpoint at the next step and requeue the job,
SIGTERM checkpoints and exits.

One optimizer step: take a batch of windows, add seeded noise to the first state, unroll the model on
its own predictions for the stage's ``n_step`` snapshots, and sum the four RMS errors of rho (diagonal,
off-diagonal), Q and P, each taken over all unrolled steps at once - plus, for PARC, the same four terms
between the differentiator's output and the exact derivative at the mid-interval states.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from holstein_dist import config as config_io
from holstein_dist import shards
from holstein_dist.checkpoints import (
    CHECKPOINT_DIR,
    TRAINING_KEYS,
    check_resumable,
    data_signature,
    load_model,
    model_payload,
)
from holstein_dist.curriculum import Curriculum, Position, Stage
from holstein_dist.data import (
    LABEL_KEYS,
    EpochSampler,
    RolloutWindows,
    input_noise,
    make_loader,
    open_data,
    stack_windows,
    validation_indices,
)
from holstein_dist.ensemble import EnsembleConfig, EnsembleResult, train_members, train_parallel
from holstein_dist.guards import Couplings, named_guard
from holstein_dist.metrics import RMSE_COMPONENTS, component_entries
from holstein_dist.model import ModelConfig, State, Surrogate, build_model
from holstein_dist.physics import STATE_KEYS, staggered_density
from hpc import checkpoint as ckpt
from hpc import dist
from hpc.cli import UserError, bad_input, command_parser, field_flags, report_error
from hpc.files import DirectoryLock, LockHeld, check_output_dir

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MODEL_CONFIGS = config_io.shipped("model")
"""The shipped surrogate architectures that ``model: NAME`` names (package data: any install finds them)."""


# --------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW and gradient clipping (paper: lr 1e-4, weight decay 1e-5, clip 1.0)."""

    lr: float = 1e-4
    """Peak learning rate; the curriculum's schedule scales it (warm-ups, cosine cycles, floor)."""
    weight_decay: float = 1e-5
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW moment decay rates."""
    grad_clip: float = 1.0
    """Largest global gradient norm; larger gradients are rescaled (unrolled training can explode)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run. In YAML, ``model`` may name a file in configs/model (``model: medium``)."""

    data: str
    """Dataset directory written by ``python -m holstein_dist.generate``."""
    run_dir: str
    """Output directory (config, checkpoints, TensorBoard). Re-use it to resume."""
    model: ModelConfig
    """Surrogate architecture."""
    curriculum: Curriculum
    """Stages (epochs, n_step, noise, epoch multiplier), epoch size and learning-rate cycle."""
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    """Optimizer settings."""
    batch_size: int = 32
    """Windows per rank per step; the global batch is batch_size x world_size."""
    seed: int = 0
    """Seeds initialization, window sampling, input noise and dropout; never time or pid."""
    train_split: str = "train"
    """Split the windows are drawn from."""
    val_split: str = "val"
    """Split for the validation rollout error."""
    val_every: int = 1000
    """Validate every this many steps (and at the end)."""
    val_windows: int = 256
    """Validation windows, spread evenly over the split and shared out across ranks (0 = all)."""
    val_n_step: int = 16
    """Rollout length of the validation error."""
    ckpt_every: int = 1000
    """Write a periodic checkpoint every this many steps (also after every validation and at the end)."""
    keep: int = 3
    """Periodic checkpoints kept besides best.pt."""
    log_every: int = 50
    """Log scalars (TensorBoard, and a line when not on a terminal) every this many steps."""
    num_workers: int = 2
    """DataLoader worker processes per rank (0 reads in the training process)."""
    preload_gib: float = 4.0
    """Read the training split into memory when the run starts (once per rank; forked DataLoader workers share it)
    when its arrays take at most this many GiB; larger splits, or 0, read each window from the HDF5 files. Same
    windows either way; 5x the samples/s of the tiny L=16 model (docs/training.md)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto``: the GPU hpc.dist assigned to this rank if CUDA is available, else CPU."""
    channels_last: bool = False
    """Keep convolution weights and activations channels-last (NHWC): same arithmetic, ~5-10% faster for the
    C=128 PARC on CPU (benchmarks/train_step.py) (not measured on GPU here)."""
    bf16: bool = False
    """bfloat16 autocast for the convolutions; the state and the loss stay float32. Not the paper's arithmetic
    (gradients differ ~1e-3) but ~1.8x faster for the medium PARC even on a CPU with AVX512-BF16."""
    compile: bool = False
    """torch.compile the surrogate (GPU)."""
    grad_checkpoint: bool = False
    """Recompute each unrolled step in the backward pass instead of storing it (long unrolls, big models)."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms: bit-reproducible runs and resumes (same thread count), slower."""
    threads: int = 0
    """torch intra-op threads per rank (0: torch's default)."""
    max_steps: int = 0
    """Stop after this global step (0: run the whole curriculum); a later run with a larger value resumes."""
    init_from: str | None = None
    """Start from this model's weights (and normalization scales) instead of a fresh initialization: one of our
    model files or run directories, with the same model config. Fine-tuning, e.g. a long-unroll stage on a model
    trained at n_step 1. A run that has checkpoints of its own resumes from those instead."""
    ensemble: EnsembleConfig = dataclasses.field(default_factory=EnsembleConfig)
    """``ensemble.members=K`` (K > 1) trains K members differing by seed under ``run_dir`` (holstein_dist.ensemble)."""

    def __post_init__(self) -> None:
        positive = ("batch_size", "val_every", "val_n_step", "ckpt_every", "keep", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} is {getattr(self, name)}; it must be >= 1")
        for name in ("val_windows", "num_workers", "threads", "max_steps", "preload_gib"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} is {getattr(self, name)}; it must be >= 0")


def _model_file(ref: str, config_path: Path | None) -> Path:
    candidates = [Path(ref)]
    if config_path is not None:
        candidates.append(config_path.parent / ref)
    candidates.append(MODEL_CONFIGS / f"{ref}.yaml")
    for path in candidates:
        if path.is_file():
            return path
    names = ", ".join(sorted(p.stem for p in MODEL_CONFIGS.glob("*.yaml")))
    raise UserError(f"model {ref!r} is neither a YAML file nor one of {names}; fix the model key")


def load_train_config(path: str | Path | None, overrides: Sequence[str] = (),
                      flags: Mapping[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from YAML + flag values + ``KEY=VALUE`` overrides; ``model: NAME`` pulls in the shipped
    configs/model/NAME.yaml."""
    data = config_io.read_yaml(path) if path is not None else {}
    extra = config_io.merge(flags or {}, config_io.parse_overrides(overrides))
    ref = extra.pop("model") if isinstance(extra.get("model"), str) else data.get("model")
    if isinstance(ref, str):
        data["model"] = config_io.read_yaml(_model_file(ref, Path(path) if path else None))
    return config_io.from_dict(TrainConfig, config_io.merge(data, extra))


# --------------------------------------------------------------------------- loss


def component_sq(pred: State, truth: State) -> tuple[Tensor, Tensor]:
    """Per-component (``metrics.RMSE_COMPONENTS``) sums of squared errors over the batch, and entry counts."""
    d_rho = pred[0] - truth[0]
    sq_rho = d_rho.real.square() + d_rho.imag.square()
    diag = torch.diagonal(sq_rho, dim1=-2, dim2=-1).sum()
    sq_Q, sq_P = (pred[1] - truth[1]).square().sum(), (pred[2] - truth[2]).square().sum()
    sums = torch.stack([diag, sq_rho.sum() - diag, sq_Q, sq_P])
    entries = component_entries(*truth[1].shape)
    counts = torch.tensor([entries[c] for c in RMSE_COMPONENTS], dtype=sums.dtype, device=sums.device)
    return sums, counts


def rms_terms(pred: State, truth: State) -> Tensor:
    """RMS error of each of the four components over the whole batch, shape [4]."""
    sums, counts = component_sq(pred, truth)
    return torch.sqrt(sums / counts)


def unrolled_rms(preds: list[State], truths: list[State]) -> Tensor:
    """ONE RMS per component (rho diag, rho off-diag, Q, P) over the batch and all unrolled steps, shape [4].

    This is the original recipe's loss term: the error tensor [batch, n_step, ...] is reduced as a whole,
    so the loss does not grow with n_step (a sum of per-step RMS is ~n_step times larger, which under
    gradient clipping changes the effective step size between curriculum stages).
    """
    sums, counts = None, None
    for pred, truth in zip(preds, truths, strict=True):
        s, c = component_sq(pred, truth)
        sums, counts = (s, c) if sums is None else (sums + s, counts + c)
    return torch.sqrt(sums / counts)


def target_states(batch: dict[str, Tensor], n_step: int) -> list[State]:
    """The window's true states after 1..n_step steps (snapshots 1..n of ``batch``)."""
    return [tuple(batch[key][:, k + 1] for key in STATE_KEYS) for k in range(n_step)]


def kinetic_log_ratios(preds: list[State], truths: list[State]) -> Tensor:
    """log(sum P_pred^2 / sum P_true^2) over the whole batch at each unrolled step, shape [n_step].

    The batch's lattice kinetic energy, model over truth: a statistic of the ensemble (its temperature), not
    of any one trajectory, so it can be matched where the trajectories themselves are no longer predictable.
    Negative means the model's lattice is colder. Measured on the deep L=32 validation windows: the
    single-step-trained PARCs keep 0.96-0.99 of the kinetic energy after one step but only 0.72-0.86 after
    eight, which is the cooling the report's lattice_motion section shows over hundreds of steps.
    """
    tiny = torch.finfo(truths[0][2].dtype).tiny  # keeps an all-zero P (a test's toy batch) finite
    return torch.stack([
        torch.log(pred[2].float().square().sum() + tiny) - torch.log(truth[2].float().square().sum() + tiny)
        for pred, truth in zip(preds, truths, strict=True)
    ])


def rollout_loss(
    states: list[State], derivatives: list[State] | None, batch: dict[str, Tensor]
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Loss of one unrolled batch: the four state RMS terms over all steps (+ four derivative terms for PARC).

    Returns (total, state terms [4], derivative terms [4] or None).
    """
    n = len(states)
    state_terms = unrolled_rms(states, target_states(batch, n))
    total = state_terms.sum()
    deriv_terms = None
    if derivatives is not None:
        deriv_terms = unrolled_rms(derivatives, [tuple(batch[key][:, k] for key in LABEL_KEYS) for k in range(n)])
        total = total + deriv_terms.sum()
    return total, state_terms, deriv_terms


def carry_noise(batch: dict[str, Tensor], noise: State, fraction: float) -> dict[str, Tensor]:
    """A copy of ``batch`` whose target states (snapshots 1..n) carry ``fraction`` of the input noise.

    The derivative labels stay those of the clean trajectory: they are the data's, not a state's.
    """
    out = dict(batch)
    for key, n in zip(STATE_KEYS, noise, strict=True):
        target = batch[key][:, 1:] + fraction * n.unsqueeze(1)
        out[key] = torch.cat([batch[key][:, :1], target], dim=1)
    return out


Restore = Callable[[Tensor, Tensor, Tensor], State]


def restored_straight_through(state: State, restore: Restore) -> State:
    """The restored state forward, the identity backward: ``s + (restore(s) - s).detach()`` per component."""
    with torch.no_grad():
        fixed = restore(*(s.detach() for s in state))
    return tuple(s + (f.to(s.dtype) - s.detach()) for s, f in zip(state, fixed, strict=True))


def stage_restore(stage: Stage, data: shards.Dataset, rho: Tensor, Q: Tensor, P: Tensor) -> Restore | None:
    """The per-step restore of ``stage.guard`` for windows starting at the clean states (rho, Q, P), or None."""
    guard = named_guard(stage.guard, Couplings(g=data.g_f, **data.constants), stage.energy_split, data.snapshot_dt,
                        stage.work_share)
    return guard.start(rho, Q, P) if guard is not None else None


class Rollout(nn.Module):
    """Unrolls a surrogate on its own predictions inside ONE forward call.

    One forward per optimizer step is what DistributedDataParallel is built for, and it lets activation
    checkpointing wrap each unrolled step. The surrogate is ``self.module`` so ``model.unwrap`` finds it.
    """

    def __init__(self, module: nn.Module, grad_checkpoint: bool = False) -> None:
        super().__init__()
        self.module = module
        self.grad_checkpoint = grad_checkpoint

    def _one(self, rho: Tensor, Q: Tensor, P: Tensor) -> tuple[Tensor, ...]:
        nxt, derivative = self.module(rho, Q, P, return_derivative=True)
        return (*nxt, *derivative) if derivative is not None else nxt

    def forward(self, rho: Tensor, Q: Tensor, P: Tensor, n_step: int,
                restore: Restore | None = None) -> tuple[list[State], list[State] | None]:
        """``restore``: a guard's per-step restore (``Guard.start``), applied after every step, straight through."""
        states, derivatives = [], []
        state = (rho, Q, P)
        for _ in range(n_step):
            if self.grad_checkpoint and torch.is_grad_enabled():
                out = activation_checkpoint(self._one, *state, use_reentrant=False)
            else:
                out = self._one(*state)
            state = tuple(out[:3])
            if restore is not None:
                state = restored_straight_through(state, restore)
            states.append(state)
            if len(out) == 6:
                derivatives.append(tuple(out[3:]))
        return states, (derivatives or None)


# --------------------------------------------------------------------------- logging


class RunLog:
    """Rank 0's outputs: TensorBoard scalars/images/hparams plus a tqdm bar (terminal) or plain lines (job)."""

    def __init__(self, cfg: TrainConfig, env: dist.DistEnv, start_step: int, total_steps: int) -> None:
        self.enabled = env.is_main
        self.writer = None
        self.bar = None
        self.total = total_steps
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides events a killed run wrote after its last checkpoint, so curves don't fold back.
        self.writer = SummaryWriter(cfg.run_dir, purge_step=start_step if start_step > 0 else None)
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def hparams(self, cfg: TrainConfig, world_size: int, n_params: int) -> None:
        if not self.enabled:
            return
        from torch.utils.tensorboard.summary import hparams

        flat = {
            **{f"model.{k}": v for k, v in config_io.to_dict(cfg.model).items()},
            **{f"optim.{k}": str(v) if isinstance(v, list) else v for k, v in config_io.to_dict(cfg.optim).items()},
            "batch_size": cfg.batch_size, "world_size": world_size, "seed": cfg.seed, "n_params": n_params,
            "stages": len(cfg.curriculum.stages), "total_steps": cfg.curriculum.total_steps,
            "bf16": cfg.bf16, "compile": cfg.compile, "channels_last": cfg.channels_last,
        }
        for summary in hparams(flat, {"val/rollout_error": math.nan}):
            self.writer.file_writer.add_summary(summary)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.enabled:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def figure(self, step: int, tag: str, fig: Figure) -> None:
        """A matplotlib figure, rendered to an image by TensorBoard's ``add_figure``."""
        if self.enabled:
            self.writer.add_figure(tag, fig, step)

    def line(self, step: int, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
        else:
            print(f"step {step}/{self.total} {text}", flush=True)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def cdw_figure(pred_rho: Tensor, true_rho: Tensor, snapshot_dt: float) -> Figure:
    """The CDW pattern ``(-1)^i (n_i - 1/2)`` of one rollout [T+1, L, L] vs site and time, prediction next to
    truth (and their difference), drawn exactly as the evaluation report's space-time figure."""
    from holstein_dist.report import pattern_figure  # matplotlib: only rank 0 at validation pays the import

    pattern = {"truth": staggered_density(true_rho.detach().cpu().numpy()),
               "model": staggered_density(pred_rho.detach().cpu().numpy())}
    return pattern_figure(pattern, snapshot_dt)


# --------------------------------------------------------------------------- trainer


@dataclasses.dataclass(frozen=True)
class RunResult:
    """How a run ended."""

    status: Literal["finished", "preempted"]
    """``finished``: reached the end (or max_steps); ``preempted``: stopped by a signal after a checkpoint."""
    step: int
    """Global steps completed."""
    best_metric: float
    """Lowest validation rollout error seen (inf if never validated)."""
    requeued: bool = False
    """The Slurm job was requeued and will resume from the checkpoint."""


def step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of the global torch RNG for one step (dropout): a pure function, so resumes replay it."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1)


@dataclasses.dataclass
class TrainerParts:
    """The pieces a Trainer trains with. ``build_parts`` makes the standard set from the config; a test or a
    new use (an ensemble member, another model) replaces one (``dataclasses.replace``) and keeps the rest."""

    device: torch.device
    model: Surrogate
    """On ``device``; the optimizer must hold its parameters."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    """Stepped once per optimizer step; its state is checkpointed."""
    checkpoints: ckpt.CheckpointManager
    val_windows: RolloutWindows
    """Windows of the validation rollout error (no derivative labels)."""
    make_log: Callable[[int, int], RunLog]
    """Opens the run's outputs for steps ``(start, end)`` when ``fit`` begins (not before: nothing is written
    into run_dir until the run is under way)."""


def training_device(cfg: TrainConfig, env: dist.DistEnv) -> torch.device:
    """The device this rank trains on: CPU when asked, else the one ``hpc.dist`` assigned (GPU or CPU)."""
    device = torch.device("cpu") if cfg.device == "cpu" else env.device
    if cfg.device == "cuda" and device.type != "cuda":
        raise ValueError("device=cuda but no GPU is visible; use device=auto or device=cpu")
    return device


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over every parameter of ``model``."""
    return torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, curriculum: Curriculum) -> torch.optim.lr_scheduler.LambdaLR:
    """The curriculum's learning-rate factor per global step."""
    # A lambda, not the bound method: LambdaLR checkpoints the __dict__ of non-function callables.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: curriculum.lr_factor(step))


def initial_model(source: str, config: ModelConfig) -> Surrogate:
    """The model ``init_from`` names, checked to be the architecture this run trains.

    Settings without weights (``model.WEIGHT_FREE_SETTINGS``: symmetrize, dropout) may differ: the run's setting
    wins, so a model trained without group averaging can be fine-tuned with it, or one trained with dropout
    fine-tuned without.
    """
    loaded = load_model(source)
    differing = loaded.config.weight_layout_differences(config)
    if differing:
        raise UserError(f"init_from {source} is a different model (model.{', model.'.join(differing)} differ); set the "
                        "model section to the source's config or drop init_from")
    # Built from the run's config, so every weight-free setting (dropout layers included) is the run's.
    model = build_model(config, loaded.scales)
    model.load_state_dict(loaded.state_dict())
    model.increment_factors = loaded.increment_factors
    return model


def build_parts(cfg: TrainConfig, env: dist.DistEnv, data: shards.Dataset) -> TrainerParts:
    """The standard pieces of a run, built in the order that fixes the initial weights."""
    device = training_device(cfg, env)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts them)
    model: Surrogate = (build_model(cfg.model, data.scales) if cfg.init_from is None
                        else initial_model(cfg.init_from, cfg.model)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    return TrainerParts(
        device=device,
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.curriculum),
        checkpoints=ckpt.CheckpointManager(Path(cfg.run_dir) / CHECKPOINT_DIR, keep=cfg.keep),
        val_windows=RolloutWindows(data, cfg.val_split, cfg.val_n_step, derivatives=False),
        make_log=functools.partial(RunLog, cfg, env),
    )


def build_trainer(cfg: TrainConfig, env: dist.DistEnv, data: shards.Dataset) -> Trainer:
    """The composition root of a training run: the standard pieces, handed to a Trainer (which resumes)."""
    return Trainer(cfg, env, data, build_parts(cfg, env, data))


class Trainer:
    """Trains the pieces it is given (``TrainerParts``) through the curriculum; ``fit`` is the loop.

    On construction it resumes from the newest valid checkpoint in the parts' checkpoint directory, then
    wraps the model for the unrolled forward (torch.compile, DDP when the process group is up).
    """

    def __init__(self, cfg: TrainConfig, env: dist.DistEnv, data: shards.Dataset, parts: TrainerParts) -> None:
        self.cfg, self.env, self.data = cfg, env, data
        self.curriculum: Curriculum = cfg.curriculum
        self.end = min(self.curriculum.total_steps, cfg.max_steps or self.curriculum.total_steps)
        self.device, self.model = parts.device, parts.model
        self.optimizer, self.scheduler, self.checkpoints = parts.optimizer, parts.scheduler, parts.checkpoints
        self.make_log = parts.make_log
        self.step = self._resume()
        core = torch.compile(self.model) if cfg.compile else self.model
        rollout = Rollout(core, cfg.grad_checkpoint)
        self.rollout: nn.Module = (
            DistributedDataParallel(rollout, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if env.distributed else rollout
        )
        self.val_windows = parts.val_windows
        self.val_indices = validation_indices(len(self.val_windows), cfg.val_windows)

    # ------------------------------------------------------------------ checkpoints

    def _resume(self) -> int:
        """Step of the newest valid checkpoint (0 for a fresh run), its state loaded. A corrupt or unsafe
        newer file is skipped with a warning (rank 0 renames it ``*.bad``); an older valid one is used."""
        found = self.checkpoints.load_latest_valid(TRAINING_KEYS, rename_bad=self.env.is_main)
        if found is None:
            return 0
        path, payload = found
        check_resumable(payload, path, self.model)
        try:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            self.scheduler.load_state_dict(payload["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise ckpt.CheckpointError(f"{path} does not fit this run ({first}); use a fresh run_dir") from None
        self.checkpoints.best_metric = float(payload.get("best_metric", math.inf))
        rng = payload.get("rng")
        if rng is not None and len(rng) == self.env.world_size:
            ckpt.restore_rng_state(rng[self.env.rank])
        if self.env.is_main:
            print(f"resuming from {path} at step {payload['step']}", flush=True)
        return int(payload["step"])

    def save(self, metric: float | None = None) -> None:
        """Checkpoint (collective: every rank contributes its RNG state; rank 0 writes)."""
        improved = self.checkpoints.update_best(metric)  # on every rank, so all report the same best
        rng = dist.gather_objects_to_main(ckpt.capture_rng_state())
        if self.env.is_main:
            payload = {
                **model_payload(self.model, data_signature(self.data.config)),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                # Where the next step falls (None once the curriculum is done); the step alone determines it.
                "curriculum_position": (
                    dataclasses.asdict(self.curriculum.position(self.step))
                    if self.step < self.curriculum.total_steps else None
                ),
                "rng": rng,
                "world_size": self.env.world_size,
                "config": config_io.to_dict(self.cfg),
            }
            self.checkpoints.save(payload, self.step, best=improved)

    # ------------------------------------------------------------------ one step

    def train_step(self, batch: dict[str, Tensor], stage: Stage, epoch: int, position: int) -> Tensor:
        """Forward (unrolled), backward, clip, update. Returns the detached terms [loss, 4 state terms,
        grad norm, kinetic log ratio at the last unrolled step, (4 derivative terms)] without a host sync, so
        GPU steps queue up between log steps."""
        torch.manual_seed(step_seed(self.cfg.seed, self.env.rank, self.step))
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        rho, Q, P = batch["rho"][:, 0], batch["Q"][:, 0], batch["P"][:, 0]
        restore = stage_restore(stage, self.data, rho, Q, P)  # the clean window's invariants
        if stage.noise > 0:
            n_rho, n_Q, n_P = input_noise(batch, stage.noise, self.cfg.seed, self.env.rank, epoch, position)
            rho, Q, P = rho + n_rho, Q + n_Q, P + n_P
            if stage.noise_carry > 0:
                batch = carry_noise(batch, (n_rho, n_Q, n_P), stage.noise_carry)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            states, derivatives = self.rollout(rho, Q, P, stage.n_step, restore)
        loss, state_terms, deriv_terms = rollout_loss(states, derivatives, batch)
        log_ratios = kinetic_log_ratios(states, target_states(batch, stage.n_step))
        if stage.kinetic_weight > 0:
            loss = loss + stage.kinetic_weight * log_ratios.square().mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        terms = [loss.detach().reshape(1), state_terms.detach(), grad_norm.detach().reshape(1).to(loss.device),
                 log_ratios.detach()[-1:].to(loss.dtype)]
        if deriv_terms is not None:
            terms.append(deriv_terms.detach())
        return torch.cat(terms)

    def _scalars(self, summed: Tensor, count: int, stage: Stage, pos: Position, rate: float) -> dict[str, float]:
        mean = (dist.all_reduce_mean(summed) / count).tolist()
        out = {"train/loss": mean[0], "train/grad_norm": mean[5], "train/kinetic_log_ratio": mean[6]}
        out.update({f"train/{c}": v for c, v in zip(RMSE_COMPONENTS, mean[1:5])})
        out.update({f"train/deriv_{c}": v for c, v in zip(RMSE_COMPONENTS, mean[7:11])})
        out.update({
            "lr": self.optimizer.param_groups[0]["lr"], "curriculum/stage": pos.stage,
            "curriculum/n_step": stage.n_step, "curriculum/noise": stage.noise, "perf/samples_per_s": rate,
        })
        if self.device.type == "cuda":
            out["perf/gpu_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return out

    # ------------------------------------------------------------------ validation

    @torch.no_grad()
    def validate(self, log: RunLog) -> float:
        """Mean over rollout steps of the summed four-component RMS error on the validation windows.

        Ranks split the windows; sums of squares and counts are reduced, so the result is the exact
        mean over all windows whatever the world size.
        """
        self.model.eval()
        n = self.cfg.val_n_step
        sums = torch.zeros(n, 4, dtype=torch.float64)
        counts = torch.zeros(n, 4, dtype=torch.float64)
        mine = self.val_indices[self.env.rank :: self.env.world_size]
        for lo in range(0, len(mine), self.cfg.batch_size):
            batch = stack_windows(self.val_windows, mine[lo : lo + self.cfg.batch_size])
            rho, Q, P = self.model.rollout(batch["rho"][:, 0], batch["Q"][:, 0], batch["P"][:, 0], n)
            for k in range(1, n + 1):
                pred = (rho[:, k], Q[:, k], P[:, k])
                truth = tuple(batch[key][:, k].to(self.device) for key in STATE_KEYS)
                s, c = component_sq(pred, truth)
                sums[k - 1] += s.double().cpu()
                counts[k - 1] += c.double().cpu()
            if lo == 0 and self.env.is_main:
                log.figure(self.step, "val/cdw_pattern_pred_vs_true",
                           cdw_figure(rho[0], batch["rho"][0], self.data.snapshot_dt))
        sums, counts = dist.all_reduce_sum(sums), dist.all_reduce_sum(counts)
        rmse = torch.sqrt(sums / counts)
        error = float(rmse.sum(1).mean())
        scalars = {"val/rollout_error": error}
        scalars.update({f"val/rmse_first_{c}": float(v) for c, v in zip(RMSE_COMPONENTS, rmse[0])})
        scalars.update({f"val/rmse_last_{c}": float(v) for c, v in zip(RMSE_COMPONENTS, rmse[-1])})
        log.scalars(self.step, scalars)
        self.model.train()
        return error

    # ------------------------------------------------------------------ loop

    def fit(self, guard: ckpt.PreemptionGuard) -> RunResult:
        """Train to the end of the curriculum (or max_steps), or until ``guard`` reports a signal."""
        cfg, env = self.cfg, self.env
        if env.is_main:
            Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
            config_io.save_resolved(cfg, Path(cfg.run_dir) / "config.yaml")
        log = self.make_log(self.step, self.end)
        n_params = sum(p.numel() for p in self.model.parameters())
        if self.step == 0:
            log.hparams(cfg, env.world_size, n_params)
        if env.is_main:
            print(f"training {cfg.model.kind} ({n_params:,} parameters) on {env.world_size} rank(s), "
                  f"device {self.device}, steps {self.step}..{self.end} of {self.curriculum.total_steps}", flush=True)
        self.model.train()
        try:
            return self._loop(log, guard)
        finally:
            log.close()

    def _loop(self, log: RunLog, guard: ckpt.PreemptionGuard) -> RunResult:
        cfg, env = self.cfg, self.env
        train = {}  # windows datasets per n_step, built on first use
        while self.step < self.end:
            pos = self.curriculum.position(self.step)
            stage = self.curriculum.stages[pos.stage]
            if stage.n_step not in train:
                loaded = next(iter(train.values())).memory if train else None  # one copy for every n_step
                train[stage.n_step] = RolloutWindows(self.data, cfg.train_split, stage.n_step,
                                                     derivatives=cfg.model.has_differentiator,
                                                     preload_gib=cfg.preload_gib, memory=loaded)
            windows = train[stage.n_step]
            epoch_steps = self.curriculum.epoch_steps(pos.stage)
            stop = min(epoch_steps, pos.step_in_epoch + self.end - self.step)
            sampler = EpochSampler(
                len(windows), cfg.batch_size, epoch_steps, cfg.seed, env.rank, pos.step_in_epoch, stop,
                starts=windows.starts, early_fraction=self.curriculum.early_fraction,
                early_window=self.curriculum.early_window,
            )
            sampler.set_epoch(pos.epoch)
            loader = make_loader(windows, sampler, cfg.batch_size, cfg.num_workers, self.device.type == "cuda")
            summed, count, busy = None, 0, 0.0
            tick = time.perf_counter()
            for batch_index, batch in enumerate(loader, start=pos.step_in_epoch):
                out = self.train_step(batch, stage, pos.epoch, batch_index * cfg.batch_size)
                summed = out if summed is None else summed + out
                count += 1
                self.step += 1
                log.advance()
                busy += time.perf_counter() - tick  # loading + training; validation and checkpoints excluded
                if self.step % cfg.log_every == 0:
                    rate = count * cfg.batch_size * env.world_size / busy
                    scalars = self._scalars(summed, count, stage, pos, rate)
                    log.scalars(self.step, scalars)
                    log.line(self.step, f"loss {scalars['train/loss']:.4g} lr {scalars['lr']:.3g} "
                                        f"stage {pos.stage} n_step {stage.n_step} {rate:.1f} samples/s "
                                        f"kinetic log-ratio {scalars['train/kinetic_log_ratio']:+.3f}")
                    summed, count, busy = None, 0, 0.0
                result = self._boundary(log, guard)
                if result is not None:
                    return result
                tick = time.perf_counter()
        return RunResult("finished", self.step, self.checkpoints.best_metric)

    def _boundary(self, log: RunLog, guard: ckpt.PreemptionGuard) -> RunResult | None:
        """After a step: validate, checkpoint, and stop on a signal or at the end."""
        cfg = self.cfg
        at_end = self.step >= self.end
        metric = None
        if self.step % cfg.val_every == 0 or at_end:
            metric = self.validate(log)
            if self.env.is_main and math.isfinite(metric):
                log.line(self.step, f"val rollout error {metric:.4g}")
        stop = dist.any_rank(guard.requested)
        if self.step % cfg.ckpt_every == 0 or metric is not None or at_end or stop:
            self.save(metric)
        if not stop:
            return None
        dist.barrier()  # every rank leaves after rank 0's checkpoint is on disk
        wants_requeue = dist.any_rank(guard.wants_requeue)
        requeued = ckpt.requeue_slurm_job() if wants_requeue and self.env.is_main else False
        requeued = bool(dist.broadcast_object(requeued))
        if self.env.is_main:
            then = "job requeued" if requeued else "re-run the same command to resume"
            print(f"stopped at step {self.step} by a signal; checkpoint written; {then}", flush=True)
        return RunResult("preempted", self.step, self.checkpoints.best_metric, requeued)


# --------------------------------------------------------------------------- entry points


def configure_torch(cfg: TrainConfig) -> None:
    """Threads and determinism, before any tensor work."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


FIELD_FLAGS = ("data", "run_dir")
"""TrainConfig fields with a flag: the two paths every run names (``--data DIR`` = ``data=DIR``)."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = command_parser("python -m holstein_dist.train",
                            "Train a SimpleCNN/PARC surrogate; re-run with the same run_dir to resume.",
                            config_help="train config YAML, e.g. configs/train/tiny.yaml",
                            override_example="batch_size=8 curriculum.batches_per_epoch=100")
    parser.add_argument("--data", default=argparse.SUPPRESS, metavar="DIR",
                        help="dataset directory made by holstein_dist.generate (= data=DIR)")
    parser.add_argument("--run-dir", dest="run_dir", default=argparse.SUPPRESS, metavar="DIR",
                        help="checkpoints, TensorBoard and the resolved config; re-use it to resume (= run_dir=DIR)")
    return parser.parse(argv)


def setup(argv: Sequence[str] | None) -> tuple[TrainConfig, shards.Dataset]:
    """Parse and validate everything that does not need the process group: config and data directory."""
    args = parse_args(argv)
    with bad_input():
        cfg = load_train_config(args.config, args.overrides, field_flags(args, FIELD_FLAGS))
        configure_torch(cfg)
        # Before joining the group and before anything is written: a bad path or split then fails on every
        # rank alike instead of leaving peers hanging or a half-made run_dir behind.
        check_output_dir(cfg.run_dir, "run_dir")
        data = open_data(cfg.data)
        for key in ("train_split", "val_split"):
            name = getattr(cfg, key)
            if name not in data.splits:
                raise UserError(f"{key} {name!r} is not in {cfg.data} (it has {', '.join(data.splits)}); pass "
                                f"{key}=<one of those>")
        return cfg, data


def lock_run_dir(cfg: TrainConfig, env: dist.DistEnv) -> DirectoryLock | None:
    """Rank 0 locks ``run_dir`` (two runs would interleave checkpoints); every rank learns the outcome."""
    lock, refusal = None, None
    if env.is_main:
        lock = DirectoryLock(cfg.run_dir, job_id=dist.slurm_job_id())
        try:
            lock.acquire()
        except LockHeld as exc:
            lock, refusal = None, str(exc).replace("is in use", "(run_dir) is in use")
    refusal = dist.broadcast_object(refusal)
    if refusal is not None:
        raise LockHeld(refusal)
    return lock


def train_in(cfg: TrainConfig, env: dist.DistEnv, data: shards.Dataset, guard: ckpt.PreemptionGuard) -> RunResult:
    """One run in ``cfg.run_dir`` (locked meanwhile): build the trainer (it resumes), train."""
    lock = None
    try:
        lock = lock_run_dir(cfg, env)
        with bad_input():  # incompatible checkpoint, model/data mismatch
            trainer = build_trainer(cfg, env, data)
        return trainer.fit(guard)
    finally:
        if lock is not None:
            lock.release()


def run(argv: Sequence[str] | None = None) -> RunResult | EnsembleResult:
    """Set up (distributed when launched so), train one run or the ensemble's members, leave the process group.
    Bad input: UserError."""
    cfg, data = setup(argv)
    if cfg.ensemble.members > 1 and cfg.ensemble.parallel > 1 and cfg.ensemble.member is None:
        if dist.launched_world_size() > 1:
            raise UserError("ensemble.parallel > 1 starts its own processes; launch it as one process, not under "
                            "torchrun/srun with several tasks (or drop ensemble.parallel)")
        return train_parallel(cfg, sys.argv[1:] if argv is None else list(argv))
    # Signals are caught from here on: a Slurm warning during start-up still ends in a checkpoint.
    with ckpt.PreemptionGuard() as guard:
        env = dist.init_distributed()
        try:
            if cfg.ensemble.members > 1:
                return train_members(cfg, lambda member: train_in(member, env, data, guard), env.is_main)
            return train_in(cfg, env, data, guard)
        finally:
            dist.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: exit 0 when finished or checkpointed on a signal, 2 with a one-line error for bad input."""
    try:
        run(argv)
    except UserError as exc:  # bad input; also a shard found corrupt mid-run (shards.CorruptShard)
        return report_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
