"""Training data: rollout windows over the HDF5 shards, an epoch sampler, and seeded input noise.

A *window* is ``n_step + 1`` consecutive snapshots of one trajectory plus the ``n_step`` mid-interval
states between them; the mid states become the PARC differentiator's labels, the exact time derivative
``physics.derivatives`` at the post-quench coupling ``g_f``. Window index ``i`` maps to
``(trajectory, start) = divmod(i, n_snapshots - n_step)``.

Three pieces, each usable alone:

* :class:`RolloutWindows` - a map-style ``torch.utils.data.Dataset``; a pure function of the index, so it
  works with ``DistributedSampler`` as well as with :class:`EpochSampler`. HDF5 files are opened lazily
  inside whichever process reads (``shards.Split`` keys its handles by pid), never across a fork.
* :class:`EpochSampler` - an epoch of a fixed number of batches (paper: 8192 x the stage multiplier),
  windows drawn with replacement from a generator seeded by ``(seed, epoch, rank)``; equal batch counts
  on every rank by construction (the ``drop_last`` guarantee), independent streams across ranks;
  optionally a fixed fraction of the windows from the first snapshots after the quench.
* :func:`input_noise` - Gaussian noise for the input state, one generator per sample seeded by
  ``(seed, rank, epoch, position in this rank's epoch)``.

Why per-sample seeding gives an exact resume: a noise stream shared across samples would have to be
replayed (or its state saved in lockstep with the loader's prefetching, which runs ahead of training) to
continue where a killed run stopped. Deriving each sample's noise from its coordinates alone makes it a
pure function: a run resumed at step ``s`` of epoch ``e`` regenerates exactly the draws the uninterrupted
run made, with no state to save, independent of batch prefetching and DataLoader worker count. Including
the rank keeps ranks' noise independent; the sampler's positions make it differ across epochs.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from holstein_dist import physics, shards
from holstein_dist.physics import STATE_KEYS

LABEL_KEYS = tuple(f"d{k}" for k in STATE_KEYS)
"""Batch keys of the exact time derivatives (the PARC differentiator's labels)."""


def open_data(directory: str | Path) -> shards.Dataset:
    """Open a generated dataset; a missing or broken directory raises a one-line ValueError with the fix."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(
            f"data directory {str(directory)!r} does not exist; generate one with `python -m holstein_dist.generate "
            "--config configs/data/tiny.yaml --out DIR` and pass data=DIR"
        )
    return shards.open_dataset(directory)


class RolloutWindows(Dataset):
    """All windows of ``n_step`` rollout steps in one split.

    Item: ``rho`` [n+1, L, L] complex64, ``Q``/``P`` [n+1, L] float32 and, with ``derivatives``, the labels
    ``drho`` [n, L, L] complex64, ``dQ``/``dP`` [n, L] float32 at the n mid-interval states.

    With ``preload_gib`` > 0 and a split whose arrays fit in that many GiB, the constructor loads the whole split
    (and computes every label) once; items are then slices of memory. Reading each window from HDF5 costs ~1 ms
    of Python and library overhead, which for the tiny L=16 model was two thirds of a training step. The items
    are the same either way. Loading here, in the training process, lets forked DataLoader workers share the
    arrays (copy-on-write) instead of each loading its own copy every epoch.
    """

    def __init__(self, data: shards.Dataset, split: str, n_step: int, derivatives: bool = True,
                 preload_gib: float = 0.0, memory: dict[str, np.ndarray] | None = None) -> None:
        self.split = data.split(split)
        self.n_step = int(n_step)
        self.derivatives = derivatives
        self.g_f = float(data.g_f)
        self.constants = data.constants
        self.starts = data.n_snapshots - self.n_step
        if self.starts < 1:
            raise ValueError(
                f"n_step {self.n_step} needs {self.n_step + 1} snapshots per trajectory but {split!r} has "
                f"{data.n_snapshots}; lower n_step (or val_n_step) or generate longer trajectories"
            )
        keys = STATE_KEYS + (shards.MID_KEYS if derivatives else ())
        self.preload = memory is not None or (preload_gib > 0 and self.split.nbytes(keys) <= preload_gib * 2**30)
        self._memory = memory
        if self.preload:
            self._load()

    @property
    def memory(self) -> dict[str, np.ndarray] | None:
        """The preloaded split (None when windows are read from the files): pass it as ``memory`` to the windows of
        another n_step over the same split and labels, so a curriculum holds one copy, not one per n_step."""
        return self._memory

    def __getstate__(self) -> dict[str, Any]:
        # A spawned (not forked) DataLoader worker loads its own copy rather than receiving the arrays by pipe.
        return {**self.__dict__, "_memory": None}

    def __len__(self) -> int:
        return self.split.n_trajectories * self.starts

    def window(self, index: int) -> tuple[int, int]:
        """(trajectory in the split, first snapshot) of window ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range (0..{len(self) - 1})")
        return divmod(int(index), self.starts)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        traj, start = self.window(index)
        stop = start + self.n_step
        if self.preload:
            memory = self._load()
            item = {k: memory[k][traj, start:stop + 1] for k in STATE_KEYS}
            if self.derivatives:
                item.update((k, memory[k][traj, start:stop]) for k in LABEL_KEYS)
            return item
        item = self.split.read(traj, start, stop + 1, keys=STATE_KEYS)
        if self.derivatives:
            item.update(zip(LABEL_KEYS, self._labels(self.split.read(traj, start, stop, keys=shards.MID_KEYS))))
        return _training_precision(item)

    def _labels(self, mid: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        return physics.derivatives(*(mid[k] for k in shards.MID_KEYS), g=self.g_f, **self.constants)

    def _load(self) -> dict[str, np.ndarray]:
        if self._memory is None:
            everything = range(self.split.n_trajectories)
            memory = _training_precision(self.split.read_many(everything, keys=STATE_KEYS))
            if self.derivatives:
                # Trajectory by trajectory: the same arithmetic per snapshot as a window's, in bounded scratch,
                # written straight into the arrays (a label has its mid state's shape, in training precision).
                for t in everything:
                    labels = _training_precision(dict(zip(LABEL_KEYS, self._labels(
                        self.split.read(t, 0, keys=shards.MID_KEYS)))))
                    for key, value in labels.items():
                        if key not in memory:
                            memory[key] = np.empty((len(everything),) + value.shape, value.dtype)
                        memory[key][t] = value
            self._memory = memory
        return self._memory


def _training_precision(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Training runs in single precision whatever the storage precision."""
    return {k: v.astype(np.complex64 if np.iscomplexobj(v) else np.float32, copy=False) for k, v in arrays.items()}


class EpochSampler(Sampler[int]):
    """This rank's window indices for one epoch of ``batches x batch_size`` draws with replacement.

    Rank r draws from a generator seeded by ``(seed, epoch, r)`` alone, so every rank gets the same number
    of batches and an independent stream, and a resumed run can jump to any batch: ``start_batch`` and
    ``stop_batch`` select a slice of the epoch without changing the draws (and without reading the
    skipped windows). Like ``DistributedSampler``, call ``set_epoch`` before each epoch. With
    ``early_fraction`` > 0 (and ``starts`` windows per trajectory) that fraction of the draws is replaced by
    windows starting within a trajectory's first ``early_window`` snapshots.
    """

    def __init__(
        self,
        n_windows: int,
        batch_size: int,
        batches: int,
        seed: int,
        rank: int = 0,
        start_batch: int = 0,
        stop_batch: int | None = None,
        starts: int | None = None,
        early_fraction: float = 0.0,
        early_window: int = 0,
    ) -> None:
        stop_batch = batches if stop_batch is None else stop_batch
        if n_windows < 1:
            raise ValueError("the split has no windows; generate more trajectories or lower n_step")
        if early_fraction > 0 and (starts is None or starts < 1 or n_windows % starts or early_window < 1):
            raise ValueError(
                f"early_fraction {early_fraction} needs the windows per trajectory (starts={starts}, dividing "
                f"{n_windows}) and early_window >= 1 (got {early_window})"
            )
        if not 0 <= start_batch <= stop_batch <= batches:
            raise ValueError(f"batch range [{start_batch}, {stop_batch}) is outside the epoch's 0..{batches}")
        self.n_windows, self.batch_size, self.batches = n_windows, batch_size, batches
        self.seed, self.rank = seed, rank
        self.start_batch, self.stop_batch = start_batch, stop_batch
        self.starts, self.early_fraction, self.early_window = starts, early_fraction, early_window
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def positions(self) -> range:
        """Positions (0-based, in this rank's epoch stream) that ``__iter__`` yields, in order."""
        return range(self.start_batch * self.batch_size, self.stop_batch * self.batch_size)

    def __len__(self) -> int:
        return len(self.positions())

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        n = self.batches * self.batch_size
        draws = rng.integers(0, self.n_windows, size=n)
        if self.early_fraction > 0:
            # Drawn after the uniform draws, so early_fraction = 0 keeps every earlier run's stream.
            early = rng.random(n) < self.early_fraction
            trajectory = rng.integers(0, self.n_windows // self.starts, size=n)
            start = rng.integers(0, min(self.early_window, self.starts), size=n)
            draws = np.where(early, trajectory * self.starts + start, draws)
        span = self.positions()
        return iter(draws[span.start : span.stop].tolist())


def make_loader(
    windows: Dataset, sampler: Sampler[int], batch_size: int, num_workers: int, pin_memory: bool = False
) -> DataLoader:
    """A DataLoader of whole batches (drop_last) that never touches the global torch RNG.

    The explicit generator matters for exact resume: a DataLoader iterator otherwise draws its worker base
    seed from the global RNG, and a resumed run creates its iterator at a different point than the
    uninterrupted one did.
    """
    return DataLoader(
        windows,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=ignore_job_signals if num_workers > 0 else None,
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def ignore_job_signals(worker_id: int) -> None:
    """DataLoader workers ignore the signals that stop or warn a job (SIGTERM, SIGUSR1, SIGUSR2).

    ``scancel``, Slurm's ``--signal`` warning, ``timeout`` and a job's time limit signal every process of the
    job or process group, loader workers included. A worker killed by them makes the training process raise
    "DataLoader worker is killed" at its next batch instead of finishing the step and writing its preemption
    checkpoint. The training process handles these signals; it ends its workers itself when it stops (and a
    worker whose parent died exits on its own).
    """
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


def input_noise(
    batch: dict[str, torch.Tensor], std: float, seed: int, rank: int, epoch: int, first_position: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise for the input state (snapshot 0) of each window in ``batch``: (rho, Q, P) shaped like it.

    Sample j of the batch uses a generator seeded by ``(seed, rank, epoch, first_position + j)``; every
    real component (Re rho, Im rho, Q, P) gets i.i.d. N(0, std^2). See the module docstring for why.
    """
    rho, Q = batch["rho"][:, 0], batch["Q"][:, 0]
    B, L = Q.shape
    noise = np.empty((B, 2 * L * L + 2 * L), np.float32)
    for j in range(B):
        rng = np.random.default_rng([seed, rank, epoch, first_position + j])
        noise[j] = rng.standard_normal(noise.shape[1], dtype=np.float32)
    noise *= std
    noise[:, : 2 * L * L] *= np.float32(np.sqrt(0.5))
    t = torch.from_numpy(noise)
    n_rho = torch.complex(t[:, : L * L], t[:, L * L : 2 * L * L]).reshape(B, L, L)
    return n_rho.to(rho.device), t[:, 2 * L * L : 2 * L * L + L].to(Q.device), t[:, 2 * L * L + L :].to(Q.device)


def validation_indices(n_windows: int, count: int) -> np.ndarray:
    """``count`` window indices spread evenly over a split (all of them when count is 0 or too large)."""
    if count <= 0 or count >= n_windows:
        return np.arange(n_windows)
    return np.unique(np.linspace(0, n_windows - 1, count).round().astype(np.int64))


def stack_windows(windows: RolloutWindows, indices: np.ndarray) -> dict[str, Any]:
    """Read ``indices`` into one batch of tensors (validation: small, no DataLoader needed)."""
    items = [windows[int(i)] for i in indices]
    return {k: torch.from_numpy(np.stack([it[k] for it in items])) for k in items[0]}
