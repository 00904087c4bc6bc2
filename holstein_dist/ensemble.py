"""Ensembles of independently trained surrogates: one directory, K member run directories, one manifest.

    python -m holstein_dist.train --config CFG run_dir=ENS ensemble.members=5                     # one after another
    python -m holstein_dist.train --config CFG run_dir=ENS ensemble.members=5 ensemble.parallel=2  # 2 processes at once
    python -m holstein_dist.train --config CFG run_dir=ENS ensemble.members=5 ensemble.member=3    # member 3 alone
    python -m hpc.submit ensemble --config CFG --members 5 run_dir=ENS                           # one Slurm job array
    sbatch --array=0-4 slurm/train_ensemble.sh CFG run_dir=ENS ensemble.members=5                 # same, plain sbatch
    python -m holstein_dist.ensemble status ENS

Layout::

    ENS/ensemble.json     manifest: members, their seeds and state (pending/running/finished/preempted/failed)
    ENS/config.yaml       the resolved config every member shares (the member's own seed and run_dir aside)
    ENS/member-00/ ...    one normal run directory per member: config, checkpoints, TensorBoard

Members differ only by seed (``seed + i``: initialization, window order, input noise, dropout); everything
else is the shared config, which the manifest pins: a later command on the same ENS with another recipe is
refused instead of silently mixing two ensembles. Each member resumes, checkpoints on a signal and is
requeued exactly as a single run, so a failed or killed member is rerun alone with ``ensemble.member=i``.
``evaluate --checkpoint ENS`` evaluates the ensemble (``holstein_dist.evaluate``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from holstein_dist import config as config_io
from hpc.cli import ArgumentParser, UserError, report_error
from hpc.files import LockHeld, lock_is_held, utc_now, write_json_atomic

MANIFEST_NAME = "ensemble.json"
FORMAT = "holstein-dist-ensemble/1"
STATES = ("pending", "running", "finished", "preempted", "failed")
RUNTIME_KEYS = ("run_dir", "seed", "ensemble", "threads", "num_workers", "device", "max_steps", "compile",
                "deterministic", "log_every", "data")
"""Config keys that may differ between commands on one ensemble: where and how fast it runs, not what it
learns (``data`` may move between file systems; its identity is checked through the data signature)."""


@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    """The ``ensemble`` section of a training config (``ensemble.members=K`` on the command line)."""

    members: int = 1
    """Members K; 1 is a plain run. With K > 1, ``run_dir`` is the ensemble directory."""
    member: int | None = None
    """Train only this member (0..K-1): a Slurm array task, or the rerun of one member. None: all of them."""
    parallel: int = 1
    """Members trained at once as separate processes on this machine (one process each; set ``threads``)."""

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ValueError(f"ensemble.members is {self.members}; it must be >= 1")
        if self.member is not None and not 0 <= self.member < self.members:
            raise ValueError(f"ensemble.member is {self.member}; it must lie in 0..{self.members - 1} "
                             f"(ensemble.members={self.members})")
        if self.parallel < 1:
            raise ValueError(f"ensemble.parallel is {self.parallel}; it must be >= 1")


def member_name(index: int) -> str:
    return f"member-{index:02d}"


def member_dir(ensemble_dir: str | Path, index: int) -> Path:
    return Path(ensemble_dir) / member_name(index)


def is_ensemble(path: str | Path) -> bool:
    """Whether ``path`` is an ensemble directory (holds a manifest)."""
    return (Path(path) / MANIFEST_NAME).is_file()


def member_config(cfg: Any, index: int) -> Any:
    """The config member ``index`` trains with: its own run directory and seed, otherwise the shared one."""
    return dataclasses.replace(cfg, run_dir=str(member_dir(cfg.run_dir, index)), seed=cfg.seed + index,
                               ensemble=EnsembleConfig())


def recipe(config: dict[str, Any]) -> dict[str, Any]:
    """What makes two members members of the same ensemble: the config without its run-time keys."""
    return {k: v for k, v in config.items() if k not in RUNTIME_KEYS}


# --------------------------------------------------------------------------- manifest


@contextlib.contextmanager
def _manifest_lock(ensemble_dir: Path) -> Iterator[None]:
    """Serializes read-modify-write of the manifest between array tasks (a blocking flock, held briefly)."""
    ensemble_dir.mkdir(parents=True, exist_ok=True)
    with open(ensemble_dir / f"{MANIFEST_NAME}.lock", "a+") as handle:
        with contextlib.suppress(OSError):  # no flock on this file system: unguarded
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def read_manifest(ensemble_dir: str | Path) -> dict[str, Any]:
    path = Path(ensemble_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read the ensemble manifest {path} ({exc}); pass an ensemble directory made by "
                        "`holstein_dist.train ... ensemble.members=K`") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}; retrain the ensemble "
                        "into a fresh run_dir")
    return manifest


def open_ensemble(cfg: Any) -> dict[str, Any]:
    """Create the manifest (first command on this directory) or check that this command belongs to it."""
    root = Path(cfg.run_dir)
    mine = recipe(config_io.to_dict(cfg))
    with _manifest_lock(root):
        if not (root / MANIFEST_NAME).is_file():
            manifest = {
                "format": FORMAT,
                "created": utc_now(),
                "members": [{"name": member_name(i), "seed": cfg.seed + i, "state": "pending", "step": 0,
                             "updated": utc_now()} for i in range(cfg.ensemble.members)],
                "recipe": mine,
            }
            write_json_atomic(root / MANIFEST_NAME, manifest)
            config_io.save_resolved(cfg, root / "config.yaml")
            return manifest
        manifest = read_manifest(root)
    have = len(manifest["members"])
    if have != cfg.ensemble.members:
        raise UserError(f"{root} is an ensemble of {have} members, not {cfg.ensemble.members}; pass "
                        f"ensemble.members={have} or use a fresh run_dir")
    if manifest["members"][0]["seed"] != cfg.seed:
        raise UserError(f"{root} was trained with seed {manifest['members'][0]['seed']}, not {cfg.seed}; pass "
                        f"seed={manifest['members'][0]['seed']} or use a fresh run_dir")
    differing = sorted(k for k in set(manifest["recipe"]) | set(mine) if manifest["recipe"].get(k) != mine.get(k))
    if differing:
        raise UserError(f"this config differs from the one ensemble {root} was started with in {', '.join(differing)}; "
                        f"train with {root / 'config.yaml'} (its recipe) or use a fresh run_dir")
    return manifest


def set_member_state(ensemble_dir: str | Path, index: int, state: str, **fields: Any) -> None:
    """Record one member's state (and e.g. its step, Slurm job, error) in the manifest."""
    if state not in STATES:
        raise ValueError(f"unknown member state {state!r}")
    root = Path(ensemble_dir)
    with _manifest_lock(root):
        manifest = read_manifest(root)
        manifest["members"][index].update(state=state, updated=utc_now(), **fields)
        if state != "failed":
            manifest["members"][index].pop("error", None)
        write_json_atomic(root / MANIFEST_NAME, manifest)


def member_status(ensemble_dir: str | Path) -> list[dict[str, Any]]:
    """The manifest's members, with a ``running`` member whose directory lock is free shown as ``stopped``
    (its process died without a word: kill -9, node failure, a cancelled job)."""
    members = read_manifest(ensemble_dir)["members"]
    for i, member in enumerate(members):
        if member["state"] == "running" and not lock_is_held(member_dir(ensemble_dir, i)):
            member["state"] = "stopped"
    return members


def member_checkpoints(ensemble_dir: str | Path) -> list[Path]:
    """The file each member is evaluated with (its ``best.pt``, else its newest checkpoint), in member order.

    Members that are not finished are used as they are, with a warning; a member without any checkpoint is
    an error that names the command to train it.
    """
    from holstein_dist.checkpoints import find_in_run  # torch: only when models are wanted

    paths = []
    for i, member in enumerate(member_status(ensemble_dir)):
        try:
            paths.append(find_in_run(member_dir(ensemble_dir, i)))
        except ValueError:
            raise UserError(f"{member['name']} of ensemble {ensemble_dir} has no checkpoint yet (state "
                            f"{member['state']}); train it with `python -m holstein_dist.train --config "
                            f"{Path(ensemble_dir) / 'config.yaml'} ensemble.member={i}`") from None
        if member["state"] != "finished":
            print(f"warning: {member['name']} of {ensemble_dir} is {member['state']} at step {member['step']}; "
                  "evaluating its newest checkpoint", file=sys.stderr, flush=True)
    return paths


# --------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class EnsembleResult:
    """How an ensemble command ended: ``status``/``requeued`` as for one run (``hpc.submit`` reads them)."""

    status: str
    members: tuple[tuple[str, Any], ...]
    requeued: bool = False


def train_members(cfg: Any, train_one: Callable[[Any], Any], is_main: bool) -> EnsembleResult:
    """Train the selected members one after another with ``train_one(member_cfg) -> RunResult``.

    Stops at the first member that is stopped by a signal (it resumes on the next run or after the requeue)
    or fails (its error is recorded and raised).
    """
    if is_main:
        open_ensemble(cfg)
    selected = range(cfg.ensemble.members) if cfg.ensemble.member is None else [cfg.ensemble.member]
    from hpc.dist import slurm_job_label  # torch: the status command does without it

    job_id = slurm_job_label()  # the array task in an array job
    results: list[tuple[str, Any]] = []
    for index in selected:
        member = member_config(cfg, index)
        if is_main:
            set_member_state(cfg.run_dir, index, "running", **({"job": job_id} if job_id else {}))
        try:
            result = train_one(member)
        except LockHeld:
            raise  # another process trains this member right now: its state is that process's to record
        except BaseException as exc:
            if is_main:
                first = (str(exc).strip().splitlines() or [""])[0]
                set_member_state(cfg.run_dir, index, "failed", error=f"{type(exc).__name__}: {first}"[:300])
            raise
        if is_main:
            set_member_state(cfg.run_dir, index, result.status, step=result.step)
        results.append((member_name(index), result))
        if result.status != "finished":
            return EnsembleResult(result.status, tuple(results), getattr(result, "requeued", False))
    return EnsembleResult("finished", tuple(results))


def train_parallel(cfg: Any, argv: Sequence[str]) -> EnsembleResult:
    """Train the members as ``ensemble.parallel`` concurrent processes, each this command plus
    ``ensemble.member=i``; each member's output goes to ``ENS/member-XX.log``."""
    from concurrent.futures import ThreadPoolExecutor

    open_ensemble(cfg)
    root = Path(cfg.run_dir)

    def one(index: int) -> tuple[str, int]:
        command = [sys.executable, "-m", "holstein_dist.train", *argv, f"ensemble.member={index}",
                   "ensemble.parallel=1"]
        log = root / f"{member_name(index)}.log"
        print(f"{member_name(index)}: training (log {log})", flush=True)
        with open(log, "a") as out:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
        print(f"{member_name(index)}: exit {code}", flush=True)
        return member_name(index), code

    with ThreadPoolExecutor(cfg.ensemble.parallel) as pool:
        codes = list(pool.map(one, range(cfg.ensemble.members)))
    failed = [name for name, code in codes if code != 0]
    if failed:
        raise UserError(f"ensemble member(s) {', '.join(failed)} failed; see {root}/<member>.log and rerun each "
                        "with ensemble.member=<i>")
    states = {m["state"] for m in member_status(root)}
    return EnsembleResult("finished" if states == {"finished"} else "preempted", tuple(codes))


# --------------------------------------------------------------------------- status CLI


def status_lines(ensemble_dir: str | Path) -> list[str]:
    members = member_status(ensemble_dir)
    lines = [f"ensemble {ensemble_dir}: {len(members)} members"]
    for m in members:
        extra = f" job {m['job']}" if m.get("job") else ""
        error = f"  {m['error']}" if m.get("error") else ""
        lines.append(f"  {m['name']}  seed {m['seed']:>6}  {m['state']:<9} step {m['step']:>7}  "
                     f"updated {m['updated']}{extra}{error}")
    todo = [i for i, m in enumerate(members) if m["state"] != "finished"]
    if todo:
        lines.append(f"to (re)train member i: python -m holstein_dist.train --config "
                     f"{Path(ensemble_dir) / 'config.yaml'} ensemble.member=i   (i in {todo})")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m holstein_dist.ensemble", description="Ensemble directories.")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="members, seeds and state of an ensemble directory")
    status.add_argument("ensemble_dir", type=Path)
    try:
        args: argparse.Namespace = parser.parse_args(argv)
        print("\n".join(status_lines(args.ensemble_dir)))
    except UserError as exc:
        return report_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

