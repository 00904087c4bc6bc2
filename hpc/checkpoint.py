"""Checkpoint files and preemption signals: atomic writes, keep-last-k, best-by-metric, requeue.

Nothing here knows what is inside a payload beyond a few bookkeeping keys (``step``, ``best_metric``);
the trainer decides the contents. Layout of a checkpoint directory::

    step-00001200.pt   the latest ``keep`` periodic checkpoints (step number zero-padded, so names sort)
    best.pt            the checkpoint with the lowest validation metric so far

Every file is written with ``hpc.files.atomic_write_bytes`` (temporary name, fsync, rename), so a job killed
at any instant leaves either the old file or the new one, never a torn one. Leftover temporaries from such
a kill are ignored and cleaned up.
"""

from __future__ import annotations

import io
import math
import random
import re
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from hpc.dist import slurm_job_id
from hpc.files import atomic_write_bytes, is_temp_name

BEST_NAME = "best.pt"
_STEP_RE = re.compile(r"step-(\d{8,})\.pt")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit this run; the message names the fix."""


def step_name(step: int) -> str:
    """File name of the periodic checkpoint at ``step`` (``step-00001200.pt``)."""
    return f"step-{step:08d}.pt"


# --------------------------------------------------------------------------- files


def serialize(payload: Mapping[str, Any]) -> bytes:
    """``torch.save`` bytes of a payload (so one serialization can feed several files)."""
    buf = io.BytesIO()
    torch.save(dict(payload), buf)
    return buf.getvalue()


def atomic_save(payload: Mapping[str, Any], path: str | Path) -> None:
    """``torch.save`` ``payload`` to ``path`` atomically."""
    atomic_write_bytes(serialize(payload), path)


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step-*.pt`` in ``directory``, oldest first (empty if none)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _STEP_RE.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The periodic checkpoint with the highest step in ``directory``, or None."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def load_checkpoint(path: str | Path, required: Iterable[str] = ("step",)) -> dict[str, Any]:
    """Read a payload written by :func:`atomic_save`; anything unusable raises a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; pass an existing .pt file")
    try:
        # Full unpickling: payloads carry optimizer and RNG state. Only load files this suite wrote.
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, wrong file type, ...: all get the same one-line answer
        raise CheckpointError(
            f"checkpoint {str(path)!r} is unreadable ({type(exc).__name__}); delete it to resume from the "
            "previous one, or start a fresh run_dir"
        ) from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(payload).__name__}, not a payload dict")
    missing = [key for key in required if key not in payload]
    if missing:
        raise CheckpointError(
            f"checkpoint {str(path)!r} lacks {missing}; it was not written by this trainer, use another run_dir"
        )
    return payload


class CheckpointManager:
    """Periodic ``step-*.pt`` files (the newest ``keep``) plus ``best.pt`` (lowest metric)."""

    def __init__(self, directory: str | Path, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep is {keep}; keep at least 1 checkpoint")
        self.directory = Path(directory)
        self.keep = keep
        self.best_metric = math.inf

    def latest(self) -> Path | None:
        """Newest periodic checkpoint, or None for a fresh directory."""
        return latest_checkpoint(self.directory)

    def update_best(self, metric: float | None) -> bool:
        """Record a validation metric; True if it beats every earlier one (then ``save(..., best=True)``).

        Pure bookkeeping, so every rank can call it and agree on the best so far; only one rank saves.
        """
        if metric is None or not math.isfinite(metric) or metric >= self.best_metric:
            return False
        self.best_metric = float(metric)
        return True

    def save(self, payload: Mapping[str, Any], step: int, best: bool = False) -> Path:
        """Write ``step-<step>.pt`` (and the same bytes as ``best.pt`` when ``best``), then prune.

        The payload gets ``step`` and ``best_metric`` added, so a resumed manager knows the best so far.
        """
        data = serialize({**payload, "step": step, "best_metric": self.best_metric})
        path = self.directory / step_name(step)
        atomic_write_bytes(data, path)
        if best:
            atomic_write_bytes(data, self.directory / BEST_NAME)
        self._prune()
        return path

    def _prune(self) -> None:
        for _, old in list_checkpoints(self.directory)[: -self.keep]:
            old.unlink(missing_ok=True)
        for stale in self.directory.iterdir():
            # Temporaries of a process killed mid-write; this process's own writes are already renamed.
            if is_temp_name(stale):
                stale.unlink(missing_ok=True)


# --------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and (when present) CUDA generator states of this process."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states are skipped when this process has no GPU)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------- preemption


REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
"""Advance warnings before a time limit or preemption (``--signal=USR1@120``; submitit uses USR2): save
and requeue. SIGTERM (what ``scancel`` and Slurm's own preemption send) only saves and exits: Slurm itself
requeues a preempted job when its partition says so, and a cancelled job must stay cancelled."""


class PreemptionGuard:
    """Context manager that turns SIGUSR1/SIGUSR2/SIGTERM into a flag the training loop polls.

    The handler only records the signal: saving from inside a signal handler could interrupt a half-done
    optimizer step or a collective. The loop checks :attr:`requested` at each step boundary, saves, and
    (for the requeue signals, under Slurm) calls :func:`requeue_slurm_job`. Previous handlers (e.g.
    submitit's) are restored on exit.
    """

    def __init__(self, signals: Iterable[signal.Signals] = (*REQUEUE_SIGNALS, signal.SIGTERM)) -> None:
        self.signals = tuple(signals)
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        # A later requeue signal upgrades an earlier SIGTERM: the job should still come back.
        if self.received is None or sig in REQUEUE_SIGNALS:
            self.received = sig
        print(f"received {sig.name}: will checkpoint at the next step boundary", file=sys.stderr, flush=True)

    @property
    def requested(self) -> bool:
        """A stop was asked for by a signal."""
        return self.received is not None

    @property
    def wants_requeue(self) -> bool:
        """The signal asks for a requeue (USR1/USR2), not just a stop (TERM)."""
        return self.received in REQUEUE_SIGNALS

    def __enter__(self) -> PreemptionGuard:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def requeue_slurm_job() -> bool:
    """``scontrol requeue $SLURM_JOB_ID`` when inside a Slurm job; True if the requeue was accepted.

    The job keeps its id and its ``run_dir``, so the restarted job resumes from the checkpoint on disk.
    """
    job_id = slurm_job_id()
    if not job_id:
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"requeue of job {job_id} failed: {exc}", file=sys.stderr, flush=True)
        return False
    if result.returncode != 0:
        print(f"requeue of job {job_id} failed: {result.stderr.strip()}", file=sys.stderr, flush=True)
        return False
    print(f"requeued Slurm job {job_id}; it resumes from the latest checkpoint", file=sys.stderr, flush=True)
    return True
