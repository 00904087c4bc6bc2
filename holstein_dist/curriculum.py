"""Training curriculum: one frozen list of stages from which everything step-dependent is derived.

A stage fixes the unroll length ``n_step`` and the input-noise level for a number of epochs. The same
list yields the run's length, the (stage, epoch, step) position of any global step, and the learning-rate
schedule: one cosine cycle per stage (a warm restart at every stage boundary, SGDR-style), each opened by a
linear warm-up and never going below a floor. Because all of it is a pure function of the global step,
a resumed run needs nothing but the step to be back on schedule.
"""

from __future__ import annotations

import bisect
import dataclasses
import math

from holstein_dist.guards import ENERGY_SPLITS, GUARD_NAMES, check_work_share


@dataclasses.dataclass(frozen=True)
class Stage:
    """One curriculum stage (docs/physics.md section 5 writes them as (epochs, n_step, noise))."""

    epochs: int
    """Epochs spent in this stage."""
    n_step: int
    """Snapshots the model is unrolled on its own predictions; every step is in the loss."""
    noise: float
    """Std of the Gaussian noise added to the input state (physical units, every real component)."""
    epoch_multiplier: int = 1
    """An epoch of this stage is ``epoch_multiplier x batches_per_epoch`` steps (paper: x4, x2 early)."""
    noise_carry: float = 0.0
    """Fraction of the input noise also added to every target state of the window. 0 (the original recipe):
    the model learns to remove the noise, i.e. to contract perturbed states towards the data, which on a
    conservative system is a friction (each step shrinks a component by about noise^2 / its variance). 1:
    the noise is pure augmentation; the model learns the increment at the perturbed state, no contraction."""
    kinetic_weight: float = 0.0
    """Weight of the lattice-temperature term added to the loss (``train.kinetic_log_ratios``): the mean over
    the unrolled steps of the squared log ratio of the batch's predicted to true lattice kinetic energy.
    0 (the original recipe): no such term. Why it exists: an RMS loss on a chaotic system rewards shrinking
    the part of each step it cannot predict, and on the deep quench that cools the lattice step after step.
    Measured there (experiments/deep_L32/lattice_temperature): 8-step unrolling alone kept the temperature and
    a weight of 1 overheated it; docs/training.md."""

    guard: str = "none"
    """What the unrolled forward restores after every model step, as ``evaluate`` does at rollout time
    (:class:`holstein_dist.guards.Guard`): ``none`` (the original recipe), ``bounds`` (rho onto the physical
    bounds, ``--project``) or ``conserve`` (rho onto the window's initial spectrum and the total energy onto
    its initial value, ``--conserve``; both taken from the clean first snapshot, not the noisy input). The
    model then trains on the states its guarded rollouts visit. The restore is passed straight through in
    the backward pass (its Jacobian taken as the identity): the exact one differentiates an eigendecomposition
    whose spectrum is degenerate (15 ones and 15 zeros at L = 32), where it is singular."""
    energy_split: str = "momenta"
    """With ``guard: conserve``, who takes each unrolled step's energy error, as ``evaluate --energy-split``:
    ``momenta`` (the lattice momenta rescaled to the total energy) or ``work`` (the lattice keeps what the
    electrons' work over the step gave it; :func:`holstein_dist.guards.restore_energy_by_work`)."""
    work_share: float = 1.0
    """With ``energy_split: work``, the share of the lattice's target energy taken from the work, the rest as the
    momenta split sets it (``evaluate --work-share``)."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.n_step < 1 or self.epoch_multiplier < 1:
            raise ValueError(
                f"stage {self} needs epochs, n_step and epoch_multiplier >= 1; fix the curriculum.stages entry"
            )
        if not (self.noise >= 0 and math.isfinite(self.noise)):
            raise ValueError(f"stage noise is {self.noise}; use a finite std >= 0")
        if not 0 <= self.noise_carry <= 1:
            raise ValueError(f"stage noise_carry is {self.noise_carry}; use a fraction in [0, 1]")
        if not (self.kinetic_weight >= 0 and math.isfinite(self.kinetic_weight)):
            raise ValueError(f"stage kinetic_weight is {self.kinetic_weight}; use a finite weight >= 0 (0: no term)")
        if self.guard not in GUARD_NAMES:
            raise ValueError(f"stage guard is {self.guard!r}; choose one of {', '.join(GUARD_NAMES)}")
        if self.energy_split not in ENERGY_SPLITS:
            raise ValueError(f"stage energy_split is {self.energy_split!r}; choose one of {', '.join(ENERGY_SPLITS)}")
        if self.energy_split != "momenta" and self.guard != "conserve":
            raise ValueError(f"stage energy_split {self.energy_split!r} needs guard: conserve (it is {self.guard!r}); "
                             "set guard: conserve or drop energy_split")
        check_work_share(self.work_share, self.energy_split == "work", "stage work_share")


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a global step falls in the curriculum (all counters 0-based)."""

    stage: int
    """Index into ``Curriculum.stages``."""
    epoch: int
    """Global epoch index over the whole run (seeds the window sampler)."""
    epoch_in_stage: int
    """Epoch index within the stage."""
    step_in_epoch: int
    """Optimizer steps already taken in this epoch (= batches to skip when resuming mid-epoch)."""
    step_in_stage: int
    """Optimizer steps already taken in this stage (drives the learning-rate cycle)."""


@dataclasses.dataclass(frozen=True)
class Curriculum:
    """The stage list plus the epoch size and the learning-rate cycle shape."""

    stages: tuple[Stage, ...]
    """Stages in training order."""
    batches_per_epoch: int = 8192
    """Optimizer steps in an epoch before the stage's multiplier (paper: 8192). Each step consumes one
    batch per rank."""
    warmup_steps: int = 500
    """Linear warm-up at the start of every stage, from the floor to the peak learning rate."""
    lr_floor: float = 0.01
    """Lowest learning rate as a fraction of the peak; warm-ups start and cosine cycles end here."""
    early_fraction: float = 0.0
    """Fraction of the drawn windows that start within the first ``early_window`` snapshots of a trajectory.
    Uniform draws give the post-quench transient 1 / n_snapshots of the samples although every rollout
    starts there (the shallow quench's oscillation never returns to its initial state); 0 keeps them
    uniform."""
    early_window: int = 0
    """Snapshots at a trajectory's start that ``early_fraction`` draws from (needed when it is > 0)."""

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("curriculum.stages is empty; list at least one stage")
        if self.batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch is {self.batches_per_epoch}; it must be >= 1")
        if not 0.0 <= self.lr_floor <= 1.0:
            raise ValueError(f"lr_floor is {self.lr_floor}; give a fraction of the peak in [0, 1]")
        if not 0.0 <= self.early_fraction <= 1.0:
            raise ValueError(f"curriculum.early_fraction is {self.early_fraction}; give a fraction in [0, 1]")
        if self.early_fraction > 0 and self.early_window < 1:
            raise ValueError(
                f"curriculum.early_fraction is {self.early_fraction} but early_window is {self.early_window}; "
                "set curriculum.early_window to the number of initial snapshots to draw from (>= 1)"
            )
        shortest = min(range(len(self.stages)), key=self.stage_steps)
        if not 0 <= self.warmup_steps < self.stage_steps(shortest):
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be >= 0 and shorter than every stage (stage "
                f"{shortest} has {self.stage_steps(shortest)} steps); lower curriculum.warmup_steps"
            )

    # ------------------------------------------------------------------ lengths

    def epoch_steps(self, stage: int) -> int:
        """Optimizer steps in one epoch of ``stage``."""
        return self.batches_per_epoch * self.stages[stage].epoch_multiplier

    def stage_steps(self, stage: int) -> int:
        """Optimizer steps in the whole of ``stage``."""
        return self.stages[stage].epochs * self.epoch_steps(stage)

    @property
    def stage_starts(self) -> tuple[int, ...]:
        """Global step at which each stage begins."""
        starts, total = [], 0
        for i in range(len(self.stages)):
            starts.append(total)
            total += self.stage_steps(i)
        return tuple(starts)

    @property
    def total_steps(self) -> int:
        """Optimizer steps in the whole run."""
        return sum(self.stage_steps(i) for i in range(len(self.stages)))

    @property
    def total_epochs(self) -> int:
        """Epochs in the whole run."""
        return sum(stage.epochs for stage in self.stages)

    # ------------------------------------------------------------------ position and schedule

    def position(self, step: int) -> Position:
        """The curriculum position of global ``step`` (0 <= step < total_steps)."""
        if not 0 <= step < self.total_steps:
            raise ValueError(f"step {step} is outside the curriculum (0..{self.total_steps - 1})")
        starts = self.stage_starts
        stage = bisect.bisect_right(starts, step) - 1
        in_stage = step - starts[stage]
        epoch_in_stage, in_epoch = divmod(in_stage, self.epoch_steps(stage))
        epoch = sum(s.epochs for s in self.stages[:stage]) + epoch_in_stage
        return Position(stage, epoch, epoch_in_stage, in_epoch, in_stage)

    def lr_factor(self, step: int) -> float:
        """Learning rate at global ``step`` as a fraction of the peak.

        Within a stage of ``N`` steps with warm-up ``W``: ``floor + (1 - floor) * s / W`` for ``s < W``,
        then ``floor + (1 - floor) * (1 + cos(pi * (s - W) / (N - W))) / 2``. Steps past the end stay at
        the floor.
        """
        if step >= self.total_steps:
            return self.lr_floor
        pos = self.position(step)
        s, n, w = pos.step_in_stage, self.stage_steps(pos.stage), self.warmup_steps
        if s < w:
            shape = s / w
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * (s - w) / (n - w)))
        return self.lr_floor + (1.0 - self.lr_floor) * shape
