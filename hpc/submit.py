"""Submit a suite command as a Slurm job from a login node with submitit, wait, and report.

    python -m hpc.submit train --config configs/train/deep_quench.yaml \\
        --nodes 2 --gpus-per-node 4 --tasks-per-node 4 --partition gpu --timeout-min 1440 \\
        data=/scratch/deep_L32 run_dir=/scratch/runs/deep
    python -m hpc.submit ensemble --members 5 --config configs/train/deep_quench.yaml --gpus-per-node 1 \\
        data=/scratch/deep_L32 run_dir=/scratch/runs/deep_ensemble      # one job array, one member per task

Every task of the job runs the command's ``run(argv)`` (``holstein_dist.train:run`` for ``train``), which
sets up torch.distributed from the job's environment (``hpc.dist``). Preemption and time limits:

* submitit asks Slurm for ``--signal=USR2@<delay>``; the trainer catches USR2, writes a checkpoint at the
  next step boundary and requeues the job with ``scontrol requeue``; the job then exits *without* a
  result, so this waiting client keeps waiting for the restarted job, which resumes from ``run_dir``.
* Should the signal arrive while no trainer is listening (start-up, shutdown), submitit's own handler
  calls :meth:`ModuleJob.checkpoint`, which hands back a fresh copy of the job: it too resumes from disk.

Waiting polls the job state through ``sacct`` (Slurm accounting) and falls back to ``squeue``, so a job
that is cancelled or dies without writing a result is reported as such instead of waited on forever.
This module knows nothing about physics; commands are named by ``module:function`` strings.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import submitit

from hpc.cli import ArgumentParser, UserError, report_error

COMMANDS = {"train": "holstein_dist.train:run", "ensemble": "holstein_dist.train:run"}
"""Sub-command -> ``module:function`` run in every task with the remaining KEY=VALUE arguments. ``ensemble``
submits one job array: array task i runs the command with ``ensemble.members=K ensemble.member=i``."""

FINISHED = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT")
"""Slurm states after which a job does not run again by itself."""


class ModuleJob:
    """Picklable callable: import ``target`` (``module:function``) in the job and call it with ``argv``."""

    def __init__(self, target: str, argv: Sequence[str]) -> None:
        self.target = target
        self.argv = list(argv)

    def __call__(self) -> Any:
        module, _, name = self.target.partition(":")
        result = getattr(importlib.import_module(module), name)(self.argv)
        if getattr(result, "requeued", False):
            # The command requeued the job itself. Leaving without a result (as submitit's own handler does)
            # keeps the client waiting for the restarted job instead of reporting this partial run.
            raise SystemExit(0)
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on preemption/timeout: a fresh copy, which resumes from the checkpoint on disk."""
        return submitit.helpers.DelayedSubmission(ModuleJob(self.target, self.argv))

    def __repr__(self) -> str:
        return f"ModuleJob({self.target!r}, {self.argv!r})"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m hpc.submit",
        description="Submit a holstein-dist command with submitit (Slurm), wait, and report the outcome.",
    )
    parser.add_argument("command", choices=sorted(COMMANDS), help="what to run in the job")
    parser.add_argument("--config", required=True, help="the command's config YAML (path as seen from the job)")
    parser.add_argument("--members", type=int, default=None,
                        help="ensemble: members K, one array task each (required for ensemble)")
    parser.add_argument("--array-parallelism", type=int, default=None,
                        help="ensemble: array tasks running at once (default: Slurm's, i.e. as many as fit)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    parser.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node; 0 for CPU-only (default 0)")
    parser.add_argument("--tasks-per-node", type=int, default=None,
                        help="tasks (ranks) per node; default: one per GPU, else 1")
    parser.add_argument("--cpus-per-task", type=int, default=None, help="CPU cores per task (default: site's)")
    parser.add_argument("--mem-gb", type=float, default=None, help="memory per node in GB (default: site's)")
    parser.add_argument("--partition", default=None, help="Slurm partition (default: site's)")
    parser.add_argument("--account", default=None, help="Slurm account (default: site's)")
    parser.add_argument("--timeout-min", type=int, default=60, help="wall-clock limit per job run (default 60)")
    parser.add_argument("--signal-delay-s", type=int, default=120,
                        help="seconds before the limit that the checkpoint signal (USR2) arrives (default 120)")
    parser.add_argument("--folder", type=Path, default=None,
                        help="submitit logs/pickles; default submitit/<timestamp>-<pid> (a fresh one per submission: "
                             "Slurm job ids can repeat after a controller reset)")
    parser.add_argument("--cluster", choices=("auto", "slurm", "local", "debug"), default="auto",
                        help="submitit backend: auto = slurm when sbatch exists, else local processes")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    parser.add_argument("--poll-s", type=float, default=10.0, help="seconds between state checks (default 10)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. run_dir=runs/x")
    args = parser.parse(argv)
    for name in ("nodes", "timeout_min"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.gpus_per_node < 0 or (args.tasks_per_node is not None and args.tasks_per_node < 1):
        parser.error("--gpus-per-node must be >= 0 and --tasks-per-node >= 1")
    if args.command == "ensemble" and (args.members is None or args.members < 2):
        parser.error("ensemble needs --members K with K >= 2 (one Slurm array task per member)")
    if args.command != "ensemble" and (args.members is not None or args.array_parallelism is not None):
        parser.error("--members and --array-parallelism belong to the ensemble command; use `hpc.submit ensemble`")
    if not Path(args.config).is_file():
        parser.error(f"config file {args.config!r} does not exist; pass a path under configs/")
    return args


def make_executor(args: argparse.Namespace) -> submitit.AutoExecutor:
    """An executor whose jobs have one task per GPU (or ``--tasks-per-node``) and a USR2 warning."""
    folder = args.folder or Path("submitit") / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    cluster = None if args.cluster == "auto" else args.cluster
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    tasks = args.tasks_per_node or max(1, args.gpus_per_node)
    params: dict[str, Any] = {
        "name": f"holstein-{args.command}",
        "nodes": args.nodes,
        "tasks_per_node": tasks,
        "timeout_min": args.timeout_min,
        "slurm_signal_delay_s": args.signal_delay_s,
        "stderr_to_stdout": True,
    }
    optional = {
        "gpus_per_node": args.gpus_per_node or None,
        "cpus_per_task": args.cpus_per_task,
        "mem_gb": args.mem_gb,
        "slurm_partition": args.partition,
        "slurm_account": args.account,
    }
    if args.array_parallelism is not None:
        optional["slurm_array_parallelism"] = args.array_parallelism
    params.update({k: v for k, v in optional.items() if v is not None})
    if executor.cluster != "slurm":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    executor.update_parameters(**params)
    return executor


def _query(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def slurm_state(job_id: str) -> str:
    """The job's state from accounting (sacct), else from the queue (squeue); GONE if neither knows it."""
    lines = _query(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id]).splitlines()
    if lines and lines[-1].strip():
        return lines[-1].split()[0]  # "CANCELLED by 0" -> "CANCELLED"
    queued = _query(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"])
    return queued.splitlines()[0].strip() if queued else "GONE"


def _has_results(job: submitit.Job) -> bool:
    # One result file per task; a job is over only once every task has written its own.
    return all(job.task(i).paths.result_pickle.exists() for i in range(job.num_tasks))


def _state(job: submitit.Job) -> str:
    if isinstance(job, submitit.SlurmJob):
        return slurm_state(job.job_id)
    return "COMPLETED" if job.done() else job.state


def wait(job: submitit.Job, poll_s: float) -> int:
    """Wait for ``job`` and report; exit code for this CLI: 0 finished, 1 failed/cancelled, 3 stopped early."""
    last = None
    while not _has_results(job):
        state = _state(job)
        if state != last:
            print(f"job {job.job_id}: {state}", flush=True)
            last = state
        if state.startswith(FINISHED) or state == "GONE":
            # Result files can land just after the state flips: give them a moment before calling them lost.
            deadline = time.monotonic() + 10
            while not _has_results(job) and time.monotonic() < deadline:
                time.sleep(0.5)
            break
        time.sleep(poll_s)
    if not _has_results(job):
        print(f"job {job.job_id} ended as {last} without a result (cancelled or killed); "
              f"log: {job.task(0).paths.stdout}", flush=True)
        return 1
    try:
        result = job.results()[0]  # rank 0's answer; every task returns one
    except Exception as exc:  # the command raised in the job; submitit carries its traceback
        print(f"job {job.job_id} failed; log: {job.task(0).paths.stdout}\n{exc}", flush=True)
        return 1
    if getattr(result, "status", None) == "preempted":
        # The command stopped on a signal (checkpoint written) and did not requeue: scancel, or a
        # preemption Slurm does not requeue. Say which, from the job's final state.
        final = _state(job)
        if "CANCELLED" in (final, last):
            print(f"job {job.job_id} ended as CANCELLED after writing a checkpoint: {result}; submit again to "
                  "resume", flush=True)
            return 1
        print(f"job {job.job_id} stopped on a signal without a requeue: {result}; submit again to resume", flush=True)
        return 3
    print(f"job {job.job_id} finished: {result}", flush=True)
    return 0


def task_argvs(args: argparse.Namespace) -> list[list[str]]:
    """The command line of each job: one for ``train``, one per member for ``ensemble``."""
    base = ["--config", args.config, *args.overrides]
    if args.command != "ensemble":
        return [base]
    return [[*base, f"ensemble.members={args.members}", f"ensemble.member={i}"] for i in range(args.members)]


def submit(executor: submitit.AutoExecutor, args: argparse.Namespace) -> list[submitit.Job]:
    """Submit the jobs; several (an ensemble) go in as ONE Slurm job array (``executor.batch``)."""
    argvs = task_argvs(args)
    jobs = []
    with executor.batch() if len(argvs) > 1 else contextlib.nullcontext():
        for argv in argvs:
            jobs.append(executor.submit(ModuleJob(COMMANDS[args.command], argv)))
    return jobs


def main(argv: Sequence[str] | None = None) -> int:
    """Thin CLI: build the executor, submit, then wait and report (unless --no-wait); bad input: exit 2."""
    try:
        args = parse_args(argv)
    except UserError as exc:
        return report_error(exc)
    executor = make_executor(args)
    jobs = submit(executor, args)
    for job in jobs:
        print(f"submitted {args.command} job {job.job_id} ({executor.cluster}); log: {job.task(0).paths.stdout}",
              flush=True)
    if args.no_wait:
        return 0
    # Each array task is waited on in turn; the exit status is the worst of them.
    return max(wait(job, args.poll_s) for job in jobs)


if __name__ == "__main__":
    sys.exit(main())
