"""Distributed setup for every launcher: one plain process, ``torchrun``, ``srun`` and submitit.

This is the only module in the suite that reads launcher environment variables (``RANK``/``WORLD_SIZE``
from torchrun, ``SLURM_*`` from srun). Everything else asks it for a :class:`DistEnv` and uses the small
collective helpers below, which are no-ops in a single process so callers never branch on the launcher.

Launcher detection, in order:

1. ``RANK`` and ``WORLD_SIZE`` set (torchrun, or a job that exported them): ``env://`` as given.
2. Inside a Slurm job *step* (``srun``, also under submitit; ``SLURM_STEP_ID`` set) with more than one
   task: rank, world size and local rank from ``SLURM_PROCID``/``SLURM_STEP_NUM_TASKS``/``SLURM_LOCALID``;
   ``MASTER_ADDR`` is the first node of the step (``127.0.0.1`` when it runs on one node) and
   ``MASTER_PORT`` is derived from the job id, so a requeued job finds the same rendezvous. A batch
   script's own shell (no step id) is NOT a rank: running python there without ``srun`` gives one process
   instead of a hang waiting for peers that never start. ``MASTER_ADDR``/``MASTER_PORT`` already set win.
3. A submitit *local* job (``SUBMITIT_EXECUTOR=local``) with more than one task: the same via submitit's
   helper, on 127.0.0.1.
4. Otherwise: one process, no process group.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import subprocess
from typing import Any

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job. Stable API: the trainer and the evaluator both use it."""

    rank: int
    """Global rank, 0..world_size-1."""
    world_size: int
    """Number of processes taking part; 1 without a launcher."""
    local_rank: int
    """Rank on this node; picks the GPU."""
    device: torch.device
    """``cuda:<local_rank>`` (modulo the visible GPUs) when CUDA is available, else ``cpu``."""
    is_main: bool
    """True on rank 0, the only rank that logs, writes checkpoints and reports."""

    @property
    def distributed(self) -> bool:
        """True when a process group is live (more than one process)."""
        return self.world_size > 1


_ENV: DistEnv | None = None


def _int_env(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise RuntimeError(f"environment variable {name} is not set; launch with torchrun or srun")
        return default
    try:
        return int(raw)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={raw!r} is not an integer; fix the launcher") from None


def slurm_job_id() -> str | None:
    """The Slurm job id when running inside a job (unique per array element too), else None."""
    return os.environ.get("SLURM_JOB_ID") or None


def slurm_job_label() -> str | None:
    """``ARRAYJOB_TASK`` inside a Slurm array task (what squeue and sacct show), the job id in a plain job,
    else None."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return slurm_job_id()


def _in_slurm_step() -> bool:
    return "SLURM_JOB_ID" in os.environ and ("SLURM_STEP_ID" in os.environ or "SLURM_STEPID" in os.environ)


def _in_local_submitit_job() -> bool:
    return os.environ.get("SUBMITIT_EXECUTOR") == "local" and _int_env("SUBMITIT_LOCAL_NTASKS", 1) > 1


def launched_world_size() -> int:
    """The number of ranks this process was launched among (torchrun's WORLD_SIZE or the Slurm step's tasks),
    read before any process group exists."""
    if "WORLD_SIZE" in os.environ:
        return _int_env("WORLD_SIZE", 1)
    if _in_slurm_step():
        return _int_env("SLURM_STEP_NUM_TASKS", _int_env("SLURM_NTASKS", 1))
    return 1


def _first_host(nodelist: str) -> str:
    """First hostname of a Slurm node list such as ``gpu[003-004,010]`` (scontrol knows the syntax)."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        out = None
    if out is None or out.returncode != 0 or not out.stdout.split():
        raise RuntimeError(f"cannot expand SLURM node list {nodelist!r} with scontrol; set MASTER_ADDR yourself")
    return out.stdout.split()[0]


def _export_slurm_env() -> None:
    """Translate a multi-task Slurm step into the ``env://`` variables torch.distributed reads."""
    # The step's task count, not the allocation's: `srun -n 1` inside a bigger job is one rank.
    world = _int_env("SLURM_STEP_NUM_TASKS", _int_env("SLURM_NTASKS", 1))
    nodes = _int_env("SLURM_STEP_NUM_NODES", _int_env("SLURM_NNODES", 1))
    if "MASTER_ADDR" not in os.environ:
        # One node: loopback always resolves, whatever the site's hostname setup.
        nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "")
        os.environ["MASTER_ADDR"] = "127.0.0.1" if nodes == 1 else _first_host(nodelist)
    # A port from the job id: every rank derives the same one, and a requeued job (same id) reuses it.
    os.environ.setdefault("MASTER_PORT", str(20000 + _int_env("SLURM_JOB_ID") % 40000))
    os.environ.update(
        RANK=str(_int_env("SLURM_PROCID")),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(_int_env("SLURM_LOCALID", 0)),
    )


def _export_local_submitit_env() -> None:
    """Same for a multi-task job of submitit's local executor (its own variables, one machine)."""
    from submitit.helpers import TorchDistributedEnvironment

    tde = TorchDistributedEnvironment()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(tde.master_port))
    os.environ.update(RANK=str(tde.rank), WORLD_SIZE=str(tde.world_size), LOCAL_RANK=str(tde.local_rank))


def _pick_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        # Sites often expose one GPU per task (CUDA_VISIBLE_DEVICES); the modulo keeps index 0 then.
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistEnv:
    """Join the job's process group (if any) and return this process's :class:`DistEnv`.

    ``backend``: ``None`` picks nccl when CUDA is available, else gloo (CPU). ``timeout_s`` bounds every
    collective, so a dead peer ends the job instead of hanging it. Safe to call twice (returns the same env).
    """
    global _ENV
    if _ENV is not None:
        return _ENV
    if "RANK" not in os.environ:
        if _in_slurm_step() and _int_env("SLURM_STEP_NUM_TASKS", _int_env("SLURM_NTASKS", 1)) > 1:
            _export_slurm_env()
        elif _in_local_submitit_job():
            _export_local_submitit_env()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = _int_env("RANK"), _int_env("WORLD_SIZE")
        local_rank = _int_env("LOCAL_RANK", 0)
    else:
        rank, world, local_rank = 0, 1, 0
    device = _pick_device(local_rank)
    if world > 1:
        if backend is None:
            backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    _ENV = DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=device, is_main=rank == 0)
    return _ENV


def shutdown() -> None:
    """Leave the process group (if one was joined); the env is forgotten so init can run again."""
    global _ENV
    if dist.is_available() and dist.is_initialized():
        # Meet before tearing down: a rank that destroys its gloo pairs (or whose TCP store host,
        # rank 0, exits) while a peer is still in teardown can abort that peer at interpreter exit
        # ("terminate called without an active exception"), failing a finished job.
        if dist.get_world_size() > 1:
            try:
                if dist.get_backend() == "gloo":
                    dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
                else:
                    dist.barrier()
            except RuntimeError:
                pass  # a peer already failed; its error is the one to report
        dist.destroy_process_group()
    _ENV = None


def _live() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _reduce_device() -> torch.device:
    # NCCL only reduces CUDA tensors; gloo only CPU ones.
    if _live() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if _live():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_reduce_sum(values: torch.Tensor | float) -> torch.Tensor | float:
    """Sum over ranks. A float comes back as a float; a tensor as a new tensor on its own device."""
    if not _live():
        return values
    as_float = not isinstance(values, torch.Tensor)
    t = torch.as_tensor(values, dtype=torch.float64) if as_float else values
    buf = t.detach().to(_reduce_device(), copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return float(buf) if as_float else buf.to(t.device)


def all_reduce_mean(values: torch.Tensor | float) -> torch.Tensor | float:
    """Mean over ranks (equal weights per rank; use ``all_reduce_sum`` of sums and counts otherwise)."""
    if not _live():
        return values
    total = all_reduce_sum(values)
    return total / dist.get_world_size()


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on at least one (e.g. a preemption signal reached only some)."""
    if not _live():
        return bool(flag)
    return all_reduce_sum(1.0 if flag else 0.0) > 0


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s (picklable) ``obj`` on every rank."""
    if not _live():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_reduce_device())
    return box[0]


def gather_objects_to_main(obj: Any) -> list[Any] | None:
    """Rank 0 gets ``[obj from rank 0, obj from rank 1, ...]``; other ranks get None."""
    if not _live():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out
