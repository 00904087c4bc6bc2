"""Atomic, durable files: the one mechanism every writer in the suite uses (shards, manifests, reports,
resolved configs, checkpoints).

A file is written under a hidden temporary name beside its final name, fsynced, renamed over the final
name (``os.replace`` is atomic on POSIX) and the directory is fsynced, so a process killed at any
instant leaves either the old file or the new one, never a partial one under the final name.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

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
