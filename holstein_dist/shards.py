"""The on-disk dataset: parameters, sharded HDF5 schema, atomic writer, manifest, scales, reader.

Layout (docs/generation.md, "Layout")::

    <out>/manifest.json            parameters, shard list (ranges, sha256, bytes, status), nine scales
    <out>/<split>.h5               optional virtual dataset stitching the split's shards
    <out>/shards/<split>-00000.h5  rho [n,T+1,L,L], Q, P [n,T+1,L], *_mid [n,T,...], t0, traj_id, energy

A shard is written under a hidden temporary name beside its final name, fsynced, and only then
renamed (``publish``); a name without the temporary prefix is therefore always a complete shard.
Trajectory ``k`` (global index over train, val, test in that order) depends only on ``(seed, k)``.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

import holstein_dist
from holstein_dist import physics
from holstein_dist.config import ConfigError, from_dict, to_dict
from holstein_dist.physics import STATE_KEYS
from hpc.cli import UserError
from hpc.files import file_sha256, fsync_path, publish, temp_name, utc_now, write_json_atomic

FORMAT = "holstein-dist-shards"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
# One chunk holds one trajectory x TIME_CHUNK snapshots: a curriculum window of up to 16 rollout steps
# (17 snapshots) is then one or two chunk reads, never a scan across trajectories.
TIME_CHUNK = 17
SPLIT_NAMES = ("train", "val", "test")
SCALE_KEYS = (*STATE_KEYS, *(f"d{k}" for k in STATE_KEYS), *(f"delta_{k}" for k in STATE_KEYS))
"""The nine normalization scales of a dataset (max |x| over its train split) that every model carries:
the state, its exact time derivative, its one-snapshot increment."""
MID_KEYS = tuple(f"{k}_mid" for k in STATE_KEYS)
"""Shard datasets of the mid-interval states (the PARC differentiator's labels come from them)."""
PER_TRAJECTORY_KEYS = ("t0", "traj_id")
ALL_KEYS = STATE_KEYS + MID_KEYS + ("energy",) + PER_TRAJECTORY_KEYS


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Splits:
    """Trajectories per split; global trajectory indices run over train, then val, then test."""

    train: int = 0
    """Training trajectories (the normalization scales are maxima over this split)."""
    val: int = 0
    """Validation trajectories."""
    test: int = 0
    """Test trajectories (evaluation ensemble)."""

    def __post_init__(self) -> None:
        for name in SPLIT_NAMES:
            if getattr(self, name) < 0:
                raise ConfigError(f"splits.{name} must be >= 0, got {getattr(self, name)}; set a trajectory count")

    def count(self, name: str) -> int:
        return int(getattr(self, name))

    @property
    def total(self) -> int:
        return self.train + self.val + self.test


@dataclass(frozen=True)
class DataConfig:
    """Everything that determines a dataset's bits; the field names are the CLI's KEY=VALUE names."""

    protocol: Literal["deep", "shallow", "custom"]
    """Quench label (docs/physics.md section 2); the physics is fixed by ``g_i``/``g_f``, this names it."""
    L: int
    """Ring length (sites); even, >= 4 (half filling)."""
    g_i: float
    """Coupling of the pre-quench mean-field ground state."""
    g_f: float
    """Coupling after the quench at t = 0 (the dynamics and the exact derivatives use it)."""
    save_interval: int
    """RK4 steps between saved snapshots; even, so the mid-interval state falls on a step."""
    n_steps: int
    """Snapshot intervals (predictions) per trajectory: T; each trajectory stores T+1 snapshots."""
    splits: Splits
    """Trajectory counts per split."""
    seed: int
    """Root seed: trajectory k draws its noise, then its phase, from SeedSequence([seed, k])."""
    shard_size: int = 8
    """Trajectories per shard file; fixes shard composition, hence part of the parameters."""
    noise: float = 1e-4
    """Std of the Gaussian phonon noise added to Q and P of the initial state."""
    dt: float = physics.DT_DEFAULT
    """RK4 time step (integration is always float64)."""
    transient_steps: int = 0
    """RK4 steps discarded after the quench before the first snapshot (all trajectories)."""
    max_phase: int = 0
    """Each trajectory skips a further uniform random 0..max_phase RK4 steps (time sampling)."""
    precision: Literal["single", "double"] = "single"
    """Storage precision: single -> complex64/float32 (default), double -> complex128/float64."""

    def __post_init__(self) -> None:
        checks = (
            (self.L >= 4 and self.L % 2 == 0, f"L must be even and >= 4 (half filling on a ring), got {self.L}"),
            (self.save_interval >= 2 and self.save_interval % 2 == 0,
             f"save_interval must be even and >= 2 (the mid state sits half an interval on), got {self.save_interval}"),
            (self.n_steps >= 1, f"n_steps must be >= 1 snapshot interval, got {self.n_steps}"),
            (self.transient_steps >= 0, f"transient_steps must be >= 0, got {self.transient_steps}"),
            (self.max_phase >= 0, f"max_phase must be >= 0, got {self.max_phase}"),
            (self.shard_size >= 1, f"shard_size must be >= 1, got {self.shard_size}"),
            (self.seed >= 0, f"seed must be >= 0 (numpy SeedSequence), got {self.seed}"),
            (self.splits.total >= 1, "splits are all 0; ask for at least one trajectory, e.g. splits.train=8"),
            (math.isfinite(self.dt) and self.dt > 0, f"dt must be a finite number > 0, got {self.dt}"),
            (math.isfinite(self.noise) and self.noise >= 0, f"noise must be a finite number >= 0, got {self.noise}"),
            (math.isfinite(self.g_i) and math.isfinite(self.g_f), f"g_i and g_f must be finite, got {self.g_i}, "
                                                                  f"{self.g_f}"),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(message + "; fix the config file or its KEY=VALUE override")

    @property
    def n_snapshots(self) -> int:
        return self.n_steps + 1

    @property
    def snapshot_dt(self) -> float:
        return self.save_interval * self.dt

    def split_start(self, name: str) -> int:
        """Global index of the split's first trajectory."""
        return sum(self.splits.count(s) for s in SPLIT_NAMES[: SPLIT_NAMES.index(name)])

    def trajectory_steps(self, phase: int) -> int:
        """RK4 steps one trajectory costs (transient + its phase + all snapshot intervals)."""
        return self.transient_steps + int(phase) + self.n_steps * self.save_interval


def storage_dtypes(precision: str) -> tuple[np.dtype, np.dtype]:
    """(complex dtype of rho, real dtype of Q/P) on disk."""
    if precision == "double":
        return np.dtype(np.complex128), np.dtype(np.float64)
    return np.dtype(np.complex64), np.dtype(np.float32)


def flat_params(cfg: DataConfig) -> dict[str, Any]:
    """Config as flat ``{"splits.train": 8, ...}`` plus the fixed physics constants."""
    flat: dict[str, Any] = {}
    for key, value in to_dict(cfg).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    flat.update(K0=physics.K0_DEFAULT, eta=physics.ETA_DEFAULT)
    return flat


def config_differences(stored: dict[str, Any], requested: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable ``"L: 16 != 32"`` lines for every field that differs (stored first)."""
    out = []
    for key in sorted(set(stored) | set(requested), key=lambda k: (k not in requested, k)):
        a, b = stored.get(key), requested.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a} != {b}")
    return out


# ----------------------------------------------------------------------------- shard plan


@dataclass(frozen=True)
class ShardSpec:
    """One shard: trajectories ``[start, stop)`` of ``split`` (split-local), global ``traj_start`` on."""

    split: str
    index: int
    start: int
    stop: int
    traj_start: int

    @property
    def n(self) -> int:
        return self.stop - self.start

    @property
    def traj_ids(self) -> np.ndarray:
        return np.arange(self.traj_start, self.traj_start + self.n, dtype=np.int64)

    @property
    def file(self) -> str:
        """Path relative to the dataset root."""
        return f"{SHARD_DIR}/{self.split}-{self.index:05d}.h5"


def plan_shards(cfg: DataConfig) -> list[ShardSpec]:
    """Fixed shard composition: each split cut into ``shard_size`` runs, in split order."""
    specs = []
    for split in SPLIT_NAMES:
        count, base = cfg.splits.count(split), cfg.split_start(split)
        for index, start in enumerate(range(0, count, cfg.shard_size)):
            stop = min(start + cfg.shard_size, count)
            specs.append(ShardSpec(split, index, start, stop, base + start))
    return specs


# ----------------------------------------------------------------------------- scales


class ScaleTracker:
    """Running max |x| of the nine scale components over one shard, fed snapshot by snapshot.

    Fed the values as stored (rounded to the storage precision, then upcast to float64), so the
    scales equal maxima computed by anyone who reads the shards back.
    """

    def __init__(self, g_f: float) -> None:
        self.g_f = g_f
        self.values = dict.fromkeys(SCALE_KEYS, 0.0)
        self._previous: tuple[np.ndarray, ...] | None = None

    def snapshot(self, rho: np.ndarray, Q: np.ndarray, P: np.ndarray) -> None:
        state = (rho, Q, P)
        for key, x in zip(STATE_KEYS, state):
            self._update(key, x)
        if self._previous is not None:
            for key, x, x0 in zip(STATE_KEYS, state, self._previous):
                self._update(f"delta_{key}", x - x0)
        self._previous = state

    def mid(self, rho: np.ndarray, Q: np.ndarray, P: np.ndarray) -> None:
        for key, d in zip(STATE_KEYS, physics.derivatives(rho, Q, P, g=self.g_f)):
            self._update(f"d{key}", d)

    def _update(self, key: str, x: np.ndarray) -> None:
        self.values[key] = max(self.values[key], float(np.abs(x).max()))


def reduce_scales(per_shard: Iterable[dict[str, float]]) -> dict[str, float] | None:
    """Max over shards; None when there are none (no train split)."""
    per_shard = list(per_shard)
    if not per_shard:
        return None
    return {key: max(float(s[key]) for s in per_shard) for key in SCALE_KEYS}


# ----------------------------------------------------------------------------- writer


class _TimeBlocks:
    """Buffers ``TIME_CHUNK`` time steps of a shard so every HDF5 write fills whole chunks."""

    def __init__(self, datasets: dict[str, h5py.Dataset], length: int, block: int) -> None:
        self.datasets, self.length, self.block = datasets, length, block
        self.buffers = {k: np.empty((d.shape[0], block) + d.shape[2:], d.dtype) for k, d in datasets.items()}
        self.start = 0  # first time index of the buffered block
        self._filled = 0  # time steps buffered so far

    def put(self, t: int, arrays: dict[str, np.ndarray]) -> None:
        if t != self.start + self._filled:
            raise ValueError(f"time index {t} out of order (expected {self.start + self._filled}); write sequentially")
        for key, x in arrays.items():
            self.buffers[key][:, t - self.start] = x
        self._filled += 1
        if self._filled == self.block or t + 1 == self.length:
            for key, d in self.datasets.items():
                d[:, self.start:t + 1] = self.buffers[key][:, : self._filled]
            self.start, self._filled = t + 1, 0


class ShardWriter:
    """Writes one shard under a temporary name; ``seal`` returns it complete, fsynced and hashed.

    Feed ``snapshot(s, ...)`` and ``mid(m, ...)`` in time order with float64 states ``[n, ...]``;
    the writer rounds to the storage precision, tracks the nine scales and the energy, and times its
    own I/O (``write_s``) so that callers can report the fraction of time spent writing.
    Used as a context manager, an exception (or Ctrl-C) removes the temporary file.
    """

    def __init__(self, root: Path, cfg: DataConfig, spec: ShardSpec) -> None:
        self.cfg, self.spec = cfg, spec
        self.final = Path(root) / spec.file
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_name(self.final)
        self.ctype, self.rtype = storage_dtypes(cfg.precision)
        self.scales = ScaleTracker(cfg.g_f)
        self.energy = np.empty((spec.n, cfg.n_snapshots), np.float64)
        self.write_s = 0.0
        start = time.perf_counter()
        self.file = h5py.File(self.tmp, "x")
        self.snapshots = _TimeBlocks(self._create("", cfg.n_snapshots), cfg.n_snapshots, TIME_CHUNK)
        self.mids = _TimeBlocks(self._create("_mid", cfg.n_steps), cfg.n_steps, TIME_CHUNK)
        self.file.attrs.update(self._attrs())
        self.write_s += time.perf_counter() - start

    def _create(self, suffix: str, length: int) -> dict[str, h5py.Dataset]:
        n, L, chunk = self.spec.n, self.cfg.L, min(TIME_CHUNK, length)
        shapes = {"rho": ((L, L), self.ctype), "Q": ((L,), self.rtype), "P": ((L,), self.rtype)}
        return {
            key: self.file.create_dataset(key + suffix, shape=(n, length) + shape, dtype=dtype,
                                          chunks=(1, chunk) + shape, fletcher32=True)
            for key, (shape, dtype) in shapes.items()
        }

    def _attrs(self) -> dict[str, Any]:
        attrs = flat_params(self.cfg)
        attrs.update(split=self.spec.split, shard_index=self.spec.index, start=self.spec.start, stop=self.spec.stop,
                     traj_start=self.spec.traj_start, software_version=holstein_dist.__version__,
                     schema_version=SCHEMA_VERSION, created=utc_now())
        return attrs

    def _stored(self, rho: np.ndarray, Q: np.ndarray, P: np.ndarray) -> tuple[np.ndarray, ...]:
        return rho.astype(self.ctype), Q.astype(self.rtype), P.astype(self.rtype)

    def snapshot(self, s: int, rho: np.ndarray, Q: np.ndarray, P: np.ndarray) -> None:
        self.energy[:, s] = physics.energy(rho, Q, P, g=self.cfg.g_f) / self.cfg.L
        stored = self._stored(rho, Q, P)
        self.scales.snapshot(*(x.astype(np.result_type(x, np.float64)) for x in stored))
        self._put(self.snapshots, s, dict(zip(STATE_KEYS, stored)))

    def mid(self, m: int, rho: np.ndarray, Q: np.ndarray, P: np.ndarray) -> None:
        stored = self._stored(rho, Q, P)
        self.scales.mid(*(x.astype(np.result_type(x, np.float64)) for x in stored))
        self._put(self.mids, m, dict(zip(STATE_KEYS, stored)))

    def _put(self, blocks: _TimeBlocks, t: int, arrays: dict[str, np.ndarray]) -> None:
        start = time.perf_counter()
        blocks.put(t, arrays)
        self.write_s += time.perf_counter() - start

    def seal(self, t0: np.ndarray) -> tuple[Path, str, int]:
        """Finish the file; return (temporary path, sha256, bytes). The caller publishes it."""
        start = time.perf_counter()
        if self.snapshots.start != self.cfg.n_snapshots or self.mids.start != self.cfg.n_steps:
            raise ValueError(f"shard {self.spec.file} sealed before all snapshots were written")
        # Fletcher32 on every dataset: HDF5 checks each chunk on every read, so a flipped byte in a shard
        # stops the reader instead of training or evaluating on it (the manifest's sha256 is only
        # checked by generate's resume and by open_dataset(verify=True), since hashing GBs per run costs).
        self.file.create_dataset("t0", data=np.asarray(t0, np.float64), fletcher32=True)
        self.file.create_dataset("traj_id", data=self.spec.traj_ids, fletcher32=True)
        self.file.create_dataset("energy", data=self.energy, fletcher32=True)
        self.file.attrs.update({f"scale_{k}": v for k, v in self.scales.values.items()})
        self.file.close()
        fsync_path(self.tmp)
        sha, size = file_sha256(self.tmp), self.tmp.stat().st_size
        self.write_s += time.perf_counter() - start
        return self.tmp, sha, size

    def discard(self) -> None:
        if self.file.id.valid:
            self.file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()


# ----------------------------------------------------------------------------- manifest

ShardStatus = Literal["pending", "complete"]


@dataclass
class ShardEntry:
    """One shard's line in the manifest: which trajectories it holds and, once complete, what was written."""

    split: str
    index: int
    file: str
    """Path relative to the dataset root."""
    start: int
    """First split-local trajectory."""
    stop: int
    traj_start: int
    """First global trajectory index (the seed of trajectory k is (seed, k))."""
    traj_stop: int
    status: ShardStatus = "pending"
    sha256: str | None = None
    bytes: int | None = None
    scales: dict[str, float] | None = None
    """The nine scales of this shard alone; the dataset's are their maximum over the train split."""
    worker: str | None = None
    """``host:pid`` that computed it."""

    # Set by mark_complete, dropped by mark_pending; in this order on disk.
    RECORD_KEYS = ("sha256", "bytes", "scales", "worker")

    @classmethod
    def planned(cls, spec: ShardSpec) -> ShardEntry:
        return cls(split=spec.split, index=spec.index, file=spec.file, start=spec.start, stop=spec.stop,
                   traj_start=spec.traj_start, traj_stop=spec.traj_start + spec.n)

    @property
    def n(self) -> int:
        return self.stop - self.start

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, keys in the order the format has always had (record keys only once written)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self.RECORD_KEYS}
        out.update({key: getattr(self, key) for key in self.RECORD_KEYS if getattr(self, key) is not None})
        return out


@dataclass
class Manifest:
    """``<root>/manifest.json``: the dataset's parameters, its shard list and what is done.

    The one reader and writer of that file. Generate creates it, records each shard the moment it is
    published and saves it atomically after every change (so an interrupted run resumes where it
    stopped); training and evaluation read the shard list, the scales and the config through it.
    ``complete`` and ``scales`` are derived from the shard entries and refreshed with every change.
    """

    software_version: str
    created: str
    seed: int
    config_data: dict[str, Any]
    """The config exactly as stored, so a resumed run compares and rewrites what was written (``config``
    parses it)."""
    physics: dict[str, float] | None
    """K0 and eta the data were made with (absent in manifests older than the key: ``constants``)."""
    complete: bool
    scales: dict[str, float] | None
    """Max over the train shards' scales; None until every train shard is complete (or with no train split)."""
    shards: list[ShardEntry]
    runs: list[dict[str, Any]]
    """One record per generate invocation that had work to do: backend, workers, host, timings."""
    updated: str | None = None

    # ------------------------------------------------------------------ create, load, save

    @classmethod
    def new(cls, cfg: DataConfig) -> Manifest:
        """Manifest of a dataset none of whose shards exist yet."""
        return cls(
            software_version=holstein_dist.__version__, created=utc_now(), seed=cfg.seed, config_data=to_dict(cfg),
            physics={"K0": physics.K0_DEFAULT, "eta": physics.ETA_DEFAULT}, complete=False, scales=None,
            shards=[ShardEntry.planned(spec) for spec in plan_shards(cfg)], runs=[],
        )

    @classmethod
    def load(cls, root: str | os.PathLike) -> Manifest:
        """Parse ``<root>/manifest.json``; ValueError (one line, with the fix) when absent or unreadable."""
        path = Path(root) / MANIFEST
        if not path.is_file():
            raise ValueError(f"{root} has no {MANIFEST}; it is not a generated dataset (run python -m "
                             "holstein_dist.generate --out it first)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path} is not valid JSON; delete the directory and regenerate it") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} manifest; point at a directory made by holstein_dist.generate")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{path} has schema version {data.get('schema_version')}, this code reads "
                             f"{SCHEMA_VERSION}; regenerate the dataset with this version")
        try:
            return cls(
                software_version=data["software_version"], created=data["created"], seed=data["seed"],
                config_data=data["config"], physics=data.get("physics"), complete=data["complete"],
                scales=data["scales"], shards=[ShardEntry(**e) for e in data["shards"]], runs=data["runs"],
                updated=data.get("updated"),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path} lacks or garbles {exc}; delete the directory and regenerate it") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, key for key and in the order of every manifest written so far."""
        out: dict[str, Any] = {
            "format": FORMAT, "schema_version": SCHEMA_VERSION, "software_version": self.software_version,
            "created": self.created, "seed": self.seed, "config": self.config_data,
        }
        if self.physics is not None:
            out["physics"] = self.physics
        out.update(complete=self.complete, scales=self.scales, shards=[e.to_dict() for e in self.shards],
                   runs=self.runs)
        if self.updated is not None:
            out["updated"] = self.updated
        return out

    def save(self, root: str | os.PathLike) -> None:
        """Write ``<root>/manifest.json`` atomically: a reader sees the old manifest or the new one."""
        write_json_atomic(Path(root) / MANIFEST, self.to_dict())

    # ------------------------------------------------------------------ reading

    @property
    def config(self) -> DataConfig:
        """The parameters; ValueError naming the fix when the stored config is not a valid DataConfig."""
        try:
            return from_dict(DataConfig, self.config_data)
        except (ConfigError, KeyError, TypeError) as exc:
            raise ValueError(f"{MANIFEST} holds an invalid config ({exc}); regenerate the dataset") from None

    @property
    def constants(self) -> dict[str, float]:
        """``{"K0": ..., "eta": ...}`` for the physics functions' keyword arguments.

        The one fallback for manifests written before the constants were recorded: they were made with
        the defaults, the only values the generator has ever used.
        """
        recorded = self.physics or {}
        return {"K0": float(recorded.get("K0", physics.K0_DEFAULT)),
                "eta": float(recorded.get("eta", physics.ETA_DEFAULT))}

    def entries(self, split: str) -> list[ShardEntry]:
        """The split's shards in trajectory order."""
        return [e for e in self.shards if e.split == split]

    def pending(self) -> list[ShardEntry]:
        return [e for e in self.shards if not e.complete]

    @property
    def total_bytes(self) -> int:
        """Bytes of the shards written so far."""
        return sum(e.bytes or 0 for e in self.shards)

    # ------------------------------------------------------------------ changes

    def entry(self, file: str) -> ShardEntry:
        return next(e for e in self.shards if e.file == file)

    def mark_complete(self, file: str, *, sha256: str, size: int, scales: dict[str, float], worker: str) -> None:
        """Record a published shard and refresh the dataset-level scales and completeness."""
        entry = self.entry(file)
        entry.status, entry.sha256, entry.bytes, entry.scales, entry.worker = "complete", sha256, size, scales, worker
        self.refresh()

    def mark_pending(self, file: str) -> None:
        """Forget a shard (missing or changed on disk) so that the next run recomputes it."""
        entry = self.entry(file)
        entry.status, entry.sha256, entry.bytes, entry.scales, entry.worker = "pending", None, None, None, None
        self.refresh()

    def refresh(self) -> None:
        """Recompute completeness and scales from the entries and stamp ``updated``."""
        self.complete = all(e.complete for e in self.shards)
        train = self.entries("train")
        self.scales = reduce_scales(e.scales for e in train) if all(e.complete for e in train) else None
        self.updated = utc_now()

    def start_run(self, backend: str, workers: int, host: str) -> None:
        """Open the record of a generate invocation that has shards to compute."""
        self.runs.append({"started": utc_now(), "backend": backend, "workers": workers, "host": host,
                          "software_version": holstein_dist.__version__})

    def finish_run(self, shards: int, wall_s: float, traj_steps_per_s: float) -> None:
        """Close the newest run record with what it did."""
        self.runs[-1].update(finished=utc_now(), shards=shards, wall_s=round(wall_s, 3),
                             traj_steps_per_s=round(traj_steps_per_s))


# ----------------------------------------------------------------------------- virtual datasets


def write_virtual_split(root: Path, manifest: Manifest, split: str) -> Path:
    """``<root>/<split>.h5``: each dataset of the split's shards stitched along the trajectory axis.

    Sources are named relative to ``root`` so the directory can be moved as a whole.
    """
    root = Path(root)
    entries = manifest.entries(split)
    total = sum(e.n for e in entries)
    with h5py.File(root / entries[0].file, "r") as first:
        layouts = {key: h5py.VirtualLayout((total,) + first[key].shape[1:], first[key].dtype) for key in ALL_KEYS}
    for e in entries:
        n, lo = e.n, e.start
        for key, layout in layouts.items():
            layout[lo:lo + n] = h5py.VirtualSource(e.file, key, shape=(n,) + layout.shape[1:])
    final = root / f"{split}.h5"
    tmp = temp_name(final)
    try:
        with h5py.File(tmp, "w", libver="latest") as f:
            for key, layout in layouts.items():
                f.create_virtual_dataset(key, layout)
            f.attrs.update(flat_params(manifest.config))
            f.attrs.update(split=split, software_version=holstein_dist.__version__)
        publish(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


# ----------------------------------------------------------------------------- reader


class Split:
    """Read access to one split's trajectories across its shards.

    HDF5 handles are cached per process id: a forked DataLoader worker opens its own, never the
    parent's (h5py handles must not cross a fork); pickling drops them.
    """

    def __init__(self, root: Path, name: str, entries: Sequence[ShardEntry], n_snapshots: int) -> None:
        self.root, self.name, self.n_snapshots = Path(root), name, n_snapshots
        self.shard_paths = [self.root / e.file for e in entries]
        self.shard_sizes = [e.n for e in entries]
        self.n_trajectories = sum(self.shard_sizes)
        self._ends = np.cumsum(self.shard_sizes).tolist()
        self._handles: dict[Path, h5py.File] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.n_trajectories

    def __repr__(self) -> str:
        return f"Split({self.name!r}, {self.n_trajectories} trajectories in {len(self.shard_paths)} shards)"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def locate(self, i: int) -> tuple[Path, int]:
        """(shard path, index inside that shard) of split-local trajectory ``i``."""
        i = int(i)
        if not 0 <= i < self.n_trajectories:
            raise IndexError(f"trajectory {i} out of range for split {self.name!r} with {self.n_trajectories}")
        k = bisect.bisect_right(self._ends, i)
        return self.shard_paths[k], i - (self._ends[k] - self.shard_sizes[k])

    def read(self, i: int, start: int = 0, stop: int | None = None,
             keys: Sequence[str] = STATE_KEYS) -> dict[str, np.ndarray]:
        """Trajectory ``i``, snapshots ``[start, stop)``; ``*_mid`` keys give the intervals in that range."""
        path, local = self.locate(i)
        f = self._file(path)
        with _corruption_named(path, self.root):
            return {key: f[key][(local,) + self._time(key, start, stop)] for key in self._check_keys(keys)}

    def read_many(self, indices: Sequence[int] | np.ndarray, start: int = 0, stop: int | None = None,
                  keys: Sequence[str] = STATE_KEYS) -> dict[str, np.ndarray]:
        """Like ``read`` for many trajectories, stacked in the order given (one read per shard and key)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        keys = self._check_keys(keys)
        located = [self.locate(i) for i in indices]
        out: dict[str, np.ndarray] = {}
        for path in dict.fromkeys(p for p, _ in located):
            rows = [r for r, (p, _) in enumerate(located) if p == path]
            local = np.array([located[r][1] for r in rows])
            unique, inverse = np.unique(local, return_inverse=True)  # h5py wants increasing indices
            f = self._file(path)
            for key in keys:
                with _corruption_named(path, self.root):
                    block = f[key][(unique.tolist(),) + self._time(key, start, stop)][inverse]
                if key not in out:
                    out[key] = np.empty((len(indices),) + block.shape[1:], block.dtype)
                out[key][rows] = block
        return out

    def content_sha256(self) -> str:
        """SHA-256 of the split's stored values in trajectory order (snapshots, energy, t0, ids), not of its files.

        HDF5 files of the same values differ in their bytes (the shard's creation time, the library's layout of
        metadata), so the files' sha256 differ between two generations of one config and seed; this does not, and
        names the trajectories a report was made on. The half-step states are left out: they follow from the
        snapshots' trajectories and evaluation never reads them. Reads those keys once, one trajectory at a time.
        """
        digest = hashlib.sha256()
        for path in self.shard_paths:
            f = self._file(path)
            for key in (k for k in ALL_KEYS if k not in MID_KEYS):
                with _corruption_named(path, self.root):
                    dataset = f[key]
                    digest.update(f"{key}:{dataset.dtype.str}:{dataset.shape}".encode())
                    for row in range(dataset.shape[0]):
                        digest.update(np.ascontiguousarray(dataset[row]).tobytes())
        return digest.hexdigest()

    def nbytes(self, keys: Sequence[str] = STATE_KEYS) -> int:
        """Bytes the whole split's ``keys`` take in memory as stored (what reading them all would allocate)."""
        f = self._file(self.shard_paths[0])
        total = 0
        for key in self._check_keys(keys):
            per_trajectory = math.prod(f[key].shape[1:]) * f[key].dtype.itemsize
            total += per_trajectory * self.n_trajectories
        return total

    def _check_keys(self, keys: Sequence[str]) -> tuple[str, ...]:
        keys = (keys,) if isinstance(keys, str) else tuple(keys)
        unknown = [k for k in keys if k not in ALL_KEYS]
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}; choose from {', '.join(ALL_KEYS)}")
        return keys

    def _time(self, key: str, start: int, stop: int | None) -> tuple[slice, ...]:
        if key in PER_TRAJECTORY_KEYS:
            return ()
        stop = self.n_snapshots if stop is None else int(stop)
        if not 0 <= start < stop <= self.n_snapshots:
            raise ValueError(f"snapshot range [{start}, {stop}) outside [0, {self.n_snapshots}); "
                             f"pass 0 <= start < stop <= {self.n_snapshots}")
        if key in MID_KEYS:
            stop = min(stop, self.n_snapshots - 1)  # intervals: one fewer than snapshots
        return (slice(start, stop),)

    def _file(self, path: Path) -> h5py.File:
        if os.getpid() != self._pid:
            # Forked child: drop (never close, never use) the parent's handles and open afresh.
            self._handles, self._pid = {}, os.getpid()
        f = self._handles.get(path)
        if f is None:
            f = self._handles[path] = h5py.File(path, "r")
        return f

    def close(self) -> None:
        if os.getpid() == self._pid:
            for f in self._handles.values():
                f.close()
        self._handles = {}


class CorruptShard(UserError):
    """A shard failed HDF5's per-chunk checksum (or is otherwise unreadable) while being read; a separate class
    because it surfaces mid-run (often from a DataLoader worker), not in the input checks before the run."""


@contextlib.contextmanager
def _corruption_named(path: Path, root: Path) -> Iterator[None]:
    """Turn h5py's read failure (e.g. a Fletcher32 mismatch) into one line that names the shard and the fix."""
    try:
        yield
    except OSError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptShard(f"shard {path} is corrupt ({reason}); re-run the generate command on {root} to "
                           "repair it (resume recomputes shards whose checksum no longer matches)") from None


class Dataset:
    """A generated dataset directory (see ``open_dataset``)."""

    def __init__(self, root: Path, manifest: Manifest, config: DataConfig) -> None:
        self.root, self.manifest, self.config = root, manifest, config
        self._splits: dict[str, Split] = {}

    def __repr__(self) -> str:
        return f"Dataset({str(self.root)!r}, L={self.L}, {dict((s, len(self.split(s))) for s in self.splits)})"

    @property
    def scales(self) -> dict[str, float]:
        if self.manifest.scales is None:
            raise ValueError(f"{self.root} has no train split, hence no normalization scales; "
                             "generate one with splits.train > 0")
        return dict(self.manifest.scales)

    @property
    def constants(self) -> dict[str, float]:
        """K0 and eta the data were made with (keyword arguments of the physics functions)."""
        return self.manifest.constants

    @property
    def L(self) -> int:
        return self.config.L

    @property
    def n_snapshots(self) -> int:
        return self.config.n_snapshots

    @property
    def g_f(self) -> float:
        return self.config.g_f

    @property
    def snapshot_dt(self) -> float:
        return self.config.snapshot_dt

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLIT_NAMES if self.config.splits.count(s) > 0]

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise ValueError(f"{self.root} has no split {name!r}; available: {', '.join(self.splits)}")
        if name not in self._splits:
            self._splits[name] = Split(self.root, name, self.manifest.entries(name), self.n_snapshots)
        return self._splits[name]

    def close(self) -> None:
        for split in self._splits.values():
            split.close()


def open_dataset(root: str | os.PathLike, *, verify: bool = False) -> Dataset:
    """Open a complete dataset; ValueError with the fix if the manifest or any shard is missing or changed.

    Checks every shard's size against the manifest; ``verify=True`` also recomputes every sha256.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset directory {root} does not exist; generate it with python -m holstein_dist.generate")
    manifest = Manifest.load(root)
    try:
        config = manifest.config
    except ValueError as exc:
        raise ValueError(f"{root}/{exc}") from None  # the message starts with the manifest's file name
    pending = manifest.pending()
    if pending:
        raise ValueError(f"{root} is incomplete ({len(manifest.shards) - len(pending)} of "
                         f"{len(manifest.shards)} shards done); re-run the same generate command to finish it")
    for e in manifest.shards:
        path = root / e.file
        if not path.is_file():
            raise ValueError(f"shard {path} is missing; re-run the generate command on {root} to restore it")
        size = path.stat().st_size
        if size != e.bytes or (verify and file_sha256(path) != e.sha256):
            raise ValueError(f"shard {path} differs from the manifest (size {size} vs {e.bytes} or sha256); "
                             f"re-run the generate command on {root} to repair it")
    return Dataset(root, manifest, config)
