"""Small helpers shared by the integration tests here (imported as ``helpers``)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np

from holstein_dist import shards
from holstein_dist.physics import STATE_KEYS

KEYS = STATE_KEYS + shards.MID_KEYS + ("energy", "t0", "traj_id")


def dataset_arrays(root: Path) -> dict[tuple[str, str], np.ndarray]:
    """Every stored array of every split, trajectories in split order (the shard layout does not matter)."""
    ds = shards.open_dataset(root, verify=True)
    out = {}
    for name in ds.splits:
        split = ds.split(name)
        for key, value in split.read_many(range(split.n_trajectories), keys=KEYS).items():
            out[name, key] = value
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (rendezvous for torchrun / mp.spawn)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
