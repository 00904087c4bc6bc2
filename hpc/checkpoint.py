"""Checkpoint files and preemption signals: atomic writes, keep-last-k, best-by-metric, requeue.

Nothing here knows what is inside a payload beyond a few bookkeeping keys (``step``, ``best_metric``);
the trainer decides the contents. Layout of a checkpoint directory::

    step-00001200.pt   the latest ``keep`` periodic checkpoints (step number zero-padded, so names sort)
    best.pt            the checkpoint with the lowest validation metric so far

Every file is written with ``hpc.files.atomic_write_bytes`` (temporary name, fsync, rename), so a job killed
at any instant leaves either the old file or the new one, never a torn one. Leftover temporaries from such
a kill are ignored and cleaned up.

Safety: checkpoints travel between people on shared file systems, and unpickling an arbitrary file can run
arbitrary code. So every payload holds only tensors, numbers, strings, None and dicts/lists/tuples of them
(RNG states included, see :func:`capture_rng_state`), and every load uses ``torch.load(weights_only=True)``,
which refuses anything else. Each payload carries the sha256 of its own contents (:func:`payload_digest`),
checked on every load, so a flipped byte that still unpickles is caught as well.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
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

from hpc.cli import UserError
from hpc.dist import slurm_job_id
from hpc.files import atomic_write_bytes, is_temp_name

BEST_NAME = "best.pt"
DIGEST_KEY = "sha256"
"""Payload key holding :func:`payload_digest` of the rest of the payload."""
BAD_SUFFIX = ".bad"
"""Appended to a corrupt checkpoint that resume skipped (kept for inspection, no longer matched as a step)."""
_STEP_RE = re.compile(r"step-(\d{8,})\.pt")


class CheckpointError(UserError):
    """A checkpoint file is missing, unreadable or does not fit this run; the message names the fix."""


class InvalidCheckpoint(CheckpointError):
    """The file itself is bad (unreadable, corrupt, unsafe or incomplete), as opposed to not fitting a run;
    resume may fall back to an older checkpoint."""


def step_name(step: int) -> str:
    """File name of the periodic checkpoint at ``step`` (``step-00001200.pt``)."""
    return f"step-{step:08d}.pt"


# --------------------------------------------------------------------------- files


def payload_digest(payload: Mapping[str, Any]) -> str:
    """sha256 over a canonical encoding of everything in ``payload`` except ``DIGEST_KEY``.

    Computed on the objects, not the file bytes, so it does not depend on how torch lays out the zip;
    tensors contribute dtype, shape and raw bytes, other leaves their type and repr.
    """
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in payload.items() if k != DIGEST_KEY})
    return digest.hexdigest()


def _feed(digest: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, Mapping):
        digest.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            _feed(digest, key)
            _feed(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(f"{type(obj).__name__[0]}{len(obj)}".encode())
        for item in obj:
            _feed(digest, item)
    else:
        digest.update(f"{type(obj).__name__}:{obj!r};".encode())


def serialize(payload: Mapping[str, Any]) -> bytes:
    """``torch.save`` bytes of a payload with its digest added (so one serialization can feed several files)."""
    buf = io.BytesIO()
    body = {k: v for k, v in payload.items() if k != DIGEST_KEY}
    torch.save({**body, DIGEST_KEY: payload_digest(body)}, buf)
    return buf.getvalue()


def atomic_save(payload: Mapping[str, Any], path: str | Path) -> None:
    """``torch.save`` ``payload`` (plus its digest) to ``path`` atomically."""
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
    """Read a payload written by :func:`atomic_save`, safely and verified; problems raise a one-line
    :class:`InvalidCheckpoint` (bad file) naming the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; pass an existing .pt file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower():  # a class or function reference: the code-running kind
            raise InvalidCheckpoint(
                f"checkpoint {str(path)!r} holds objects other than tensors and plain containers; refused, since "
                "loading it could run code (only files written by holstein-dist >= 0.2 load)"
            ) from None
        raise _unreadable(path, exc) from None
    except Exception as exc:  # truncated zip, flipped byte, wrong file type, ...: all get the same answer
        raise _unreadable(path, exc) from None
    if not isinstance(payload, dict):
        raise InvalidCheckpoint(f"checkpoint {str(path)!r} holds a {type(payload).__name__}, not a payload dict")
    stored = payload.get(DIGEST_KEY)
    if stored is None:
        raise InvalidCheckpoint(f"checkpoint {str(path)!r} has no {DIGEST_KEY} checksum; it was not written by "
                                "holstein-dist >= 0.2, use another checkpoint or a fresh run_dir")
    if stored != payload_digest(payload):
        raise InvalidCheckpoint(f"checkpoint {str(path)!r} is corrupt (checksum mismatch); resume from an older "
                                "checkpoint (delete or rename this one) or start a fresh run_dir")
    missing = [key for key in required if key not in payload]
    if missing:
        raise InvalidCheckpoint(
            f"checkpoint {str(path)!r} lacks {missing}; it was not written by this trainer, use another run_dir"
        )
    return payload


def _unreadable(path: Path, exc: Exception) -> InvalidCheckpoint:
    return InvalidCheckpoint(
        f"checkpoint {str(path)!r} is unreadable ({type(exc).__name__}); it is corrupt or not a checkpoint: "
        "resume from an older one (delete or rename this one) or start a fresh run_dir"
    )


def load_latest_valid(
    directory: str | Path, required: Iterable[str], rename_bad: bool
) -> tuple[Path, dict[str, Any]] | None:
    """(path, payload) of the newest loadable periodic checkpoint in ``directory`` (None if there is none).

    A corrupt, unsafe or incomplete newer file is skipped with a warning; with ``rename_bad`` (one process,
    rank 0) it is renamed to ``<name>.bad`` so the next run does not trip on it again, but only once an
    older valid checkpoint exists: if none is valid the files stay as they are and the error names the
    newest, so a re-run can never silently start from scratch over a run's history.
    """
    found = list_checkpoints(directory)
    skipped: list[tuple[Path, InvalidCheckpoint]] = []
    for _, path in reversed(found):
        try:
            payload = load_checkpoint(path, required)
        except InvalidCheckpoint as exc:
            skipped.append((path, exc))
            continue
        for bad, why in skipped:
            where = bad
            if rename_bad:
                where = bad.with_name(bad.name + BAD_SUFFIX)
                os.replace(bad, where)
            print(f"warning: skipped {bad.name} and resumed from {path.name}: {why} (kept as {where})",
                  file=sys.stderr, flush=True)
        return path, payload
    if skipped:
        raise skipped[0][1]
    return None


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

    def load_latest_valid(self, required: Iterable[str], rename_bad: bool) -> tuple[Path, dict[str, Any]] | None:
        """:func:`load_latest_valid` on this manager's directory (what a resume reads)."""
        return load_latest_valid(self.directory, required, rename_bad)

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
    """Python, numpy, torch CPU and (when present) CUDA generator states of this process, as tensors and
    plain containers only (so checkpoints holding them load with ``weights_only=True``)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    return {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states are skipped when this process has no GPU)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
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
