"""Atomic, durable files: the one mechanism every writer in the suite uses (shards, manifests, reports,
resolved configs, checkpoints).

A file is written under a hidden temporary name beside its final name, fsynced, renamed over the final
name (``os.replace`` is atomic on POSIX) and the directory is fsynced, so a process killed at any
instant leaves either the old file or the new one, never a partial one under the final name.

Also the generic helpers around such files that know nothing of the science: atomic JSON, a file's
sha256, the UTC timestamp of records, the directory lock and the output-directory check.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import secrets
import socket
from pathlib import Path
from typing import Any

from hpc.cli import UserError

TMP_SUFFIX = ".tmp"


def temp_name(final: Path) -> Path:
    """Hidden, unique temporary name beside ``final`` (unique per process and call, so writers never collide)."""
    return final.with_name(f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")


def is_temp_name(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)


def fsync_path(path: Path) -> None:
    """fsync a file or directory. A rename is durable only once its directory is synced; file systems
    that refuse to fsync a directory (some network mounts) are tolerated."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if Path(path).is_dir():
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not Path(path).is_dir():
            raise
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """Atomically move a complete, fsynced temporary file to its final name and make the rename durable."""
    os.replace(tmp, final)
    fsync_path(final.parent)


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    """Write ``data`` to ``path`` via a temporary file + fsync + rename; nothing partial is ever visible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(text: str, path: str | Path) -> None:
    atomic_write_bytes(text.encode(), path)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """``obj`` as indented JSON (indent 1: readable, yet compact for long shard lists), written atomically."""
    atomic_write_text(json.dumps(obj, indent=1), path)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks so a multi-GB shard never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def utc_now() -> str:
    """Current UTC time as ISO 8601 to the second: the timestamp format of every record we write."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


LOCK_NAME = ".lock"


class LockHeld(UserError):
    """Another live process holds a directory's lock; the message says who (callers add which directory)."""


class DirectoryLock:
    """Exclusive ``flock`` on ``<directory>/.lock`` while one command writes into the directory.

    Stale-safe by construction: the kernel drops an flock when its process dies (crash, kill -9, node
    reboot), so no clean-up is ever needed. The holder (host, pid, Slurm job id) is written into the file,
    so a refusal names it, and a Slurm job that was requeued (same job id, possibly another node, where a
    network file system may still show the dead incarnation's lock for its lease time) is let through with
    a warning instead of being blocked by itself. File systems without flock run unguarded.
    """

    def __init__(self, directory: str | Path, job_id: str | None = None) -> None:
        self.path = Path(directory) / LOCK_NAME
        self.job_id = job_id
        self._handle = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "{}"
            handle.close()
            try:
                owner = json.loads(holder)
            except json.JSONDecodeError:
                owner = {}
            if self.job_id and owner.get("slurm_job_id") == self.job_id:
                print(f"warning: {self.path} is held by an earlier run of this Slurm job {self.job_id} "
                      f"({owner.get('host')}:{owner.get('pid')}); continuing as its requeued run", flush=True)
                return
            who = f"{owner.get('host', '?')}:{owner.get('pid', '?')}"
            if owner.get("slurm_job_id"):
                who += f" (Slurm job {owner['slurm_job_id']})"
            raise LockHeld(f"{self.path.parent} is in use by another process ({who}); wait for it to finish "
                           "or use another directory") from None
        except OSError:
            pass  # no flock on this file system: unguarded, as before locking existed
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": self.job_id}))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing drops the flock
            self._handle = None

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_is_held(directory: str | Path) -> bool:
    """Whether a live process holds ``<directory>/.lock`` now (a probe: takes and drops the flock at once)."""
    path = Path(directory) / LOCK_NAME
    if not path.is_file():
        return False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False  # no flock here: nobody can be seen holding it
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def check_output_dir(path: str | Path, what: str) -> Path:
    """Refuse an output location that is a file or cannot be created/written, before any work is done.

    Creates nothing; ``what`` names the option in the message (e.g. ``--out``).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a file, not a directory; pass a directory path")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what} {str(path)!r} lies under the file {str(existing)!r}; pass a directory path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(path)!r} is not writable ({str(existing)!r} denies it); pass a directory "
                         "you can write to")
    return path
