"""Run independent tasks on a pool of workers, whatever the pool is. Knows nothing about the tasks.

Backends:

* ``serial``: in this process, one task after another;
* ``dask``: a local ``distributed.LocalCluster`` (processes, one thread each, dashboard on
  127.0.0.1 only), an existing scheduler (``--dask-scheduler-file``), or workers submitted as Slurm
  jobs through ``dask_jobqueue.SLURMCluster``; a task whose worker process dies is retried on
  another worker by the scheduler;
* ``mpi``: every rank of an ``mpirun``/``srun`` job computes. Rank 0's main thread hands tasks out
  on request (fast ranks take more) and collects results, while a thread on rank 0 computes tasks
  too; only that main thread calls MPI, so any MPI thread level works.

Usage (the same on every rank)::

    with open_fanout("mpi") as fan:
        if fan.is_coordinator:
            for index, result in fan.map_unordered(fn, tasks):
                ...
        else:
            fan.serve(fn)    # returns when the coordinator has no more work

``fn`` and the tasks must be picklable (importable functions, plain data); results should be small.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

BACKENDS = ("dask", "mpi", "serial")
POLL_S = 0.002  # MPI polling period: low latency, negligible CPU next to a computing thread


class Fanout:
    """Base class and the serial backend: tasks run here, in order."""

    name = "serial"
    is_coordinator = True

    @property
    def n_workers(self) -> int:
        return 1

    @property
    def dashboard_link(self) -> str | None:
        return None

    def describe(self) -> str:
        return f"{self.name} backend, {self.n_workers} worker(s)"

    def start(self) -> None:
        """Bring the workers up (a no-op where they already are); called before ``map_unordered``."""

    def map_unordered(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """Yield ``(index into tasks, fn(task))`` as tasks finish, in any order (coordinator only)."""
        for index, task in enumerate(tasks):
            yield index, fn(task)

    def serve(self, fn: Callable[[Any], Any]) -> None:
        """Non-coordinator processes compute tasks here until the coordinator is done."""
        raise RuntimeError(f"the {self.name} backend has no worker processes to serve")

    def close(self, error: BaseException | None = None) -> None:
        """Release the workers; ``error`` is what the coordinator is leaving with, if anything."""

    def __enter__(self) -> Fanout:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(error=exc)


SerialFanout = Fanout


# ----------------------------------------------------------------------------- dask


def _bokeh_available() -> bool:
    return importlib.util.find_spec("bokeh") is not None


class DaskFanout(Fanout):
    """Tasks as Dask futures. The cluster starts on the first ``map_unordered`` (cheap to construct)."""

    name = "dask"

    def __init__(self, connect: Callable[[], tuple[Any, Any]], workers: int | None, description: str) -> None:
        self._connect, self._workers, self._description = connect, workers, description
        self.client: Any = None
        self.cluster: Any = None

    @classmethod
    def local(cls, workers: int) -> DaskFanout:
        def connect():
            from distributed import Client, LocalCluster

            # Processes with one thread each: the integrator holds the GIL, so threads would not scale.
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address="127.0.0.1:0" if _bokeh_available() else None)
            return Client(cluster), cluster

        return cls(connect, workers, f"dask LocalCluster, {workers} worker processes")

    @classmethod
    def scheduler_file(cls, path: str) -> DaskFanout:
        if not os.path.isfile(path):
            raise ValueError(f"Dask scheduler file {path} does not exist; start dask scheduler --scheduler-file "
                             f"{path} first or fix the path")

        def connect():
            from distributed import Client

            return Client(scheduler_file=path), None

        return cls(connect, None, f"dask scheduler from {path}")

    @classmethod
    def slurm(cls, workers: int, *, cores: int | None = None, memory: str | None = None,
              walltime: str | None = None, queue: str | None = None, account: str | None = None) -> DaskFanout:
        """Workers in Slurm jobs of ``cores`` single-threaded processes each; unset options come from
        Dask's jobqueue config (``~/.config/dask/jobqueue.yaml`` or ``DASK_JOBQUEUE__SLURM__*``)."""
        import dask

        cores = cores or dask.config.get("jobqueue.slurm.cores")
        memory = memory or dask.config.get("jobqueue.slurm.memory")
        if not cores or not memory:
            raise ValueError("--dask-slurm needs cores and memory per job; pass --slurm-cores N --slurm-memory 64GB "
                             "or set DASK_JOBQUEUE__SLURM__CORES / DASK_JOBQUEUE__SLURM__MEMORY")
        options = {k: v for k, v in dict(walltime=walltime, queue=queue, account=account).items() if v is not None}

        def connect():
            from dask_jobqueue import SLURMCluster
            from distributed import Client

            cluster = SLURMCluster(cores=int(cores), processes=int(cores), memory=memory, **options)
            cluster.scale(n=workers)
            return Client(cluster), cluster

        return cls(connect, workers, f"dask SLURMCluster, {workers} workers in jobs of {cores}")

    def start(self) -> None:
        if self.client is None:
            self.client, self.cluster = self._connect()

    @property
    def n_workers(self) -> int:
        if self._workers is not None:
            return self._workers
        self.start()
        return len(self.client.scheduler_info()["workers"])

    @property
    def dashboard_link(self) -> str | None:
        if self.client is None or not _bokeh_available():
            return None
        return self.client.dashboard_link

    def describe(self) -> str:
        return self._description

    def map_unordered(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        if not tasks:
            return
        from distributed import as_completed

        self.start()
        client = self.client
        run = uuid.uuid4().hex[:8]  # unique keys: a shared scheduler may hold another run's tasks
        futures = {client.submit(fn, task, key=f"{getattr(fn, '__name__', 'task')}-{run}-{i}", pure=False): i
                   for i, task in enumerate(tasks)}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()  # re-raises the task's exception (or KilledWorker)
        finally:
            client.cancel([f for f in futures if not f.done()])

    def close(self, error: BaseException | None = None) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None


# ----------------------------------------------------------------------------- mpi

_TAG_READY = 71  # worker -> coordinator: previous result (or None) and a request for work
_TAG_TASK = 72  # coordinator -> worker: (index, task), or None to stop


def _describe_failure(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()


class MPIFanout(Fanout):
    """Dynamic self-scheduling over ``MPI.COMM_WORLD``; rank 0 coordinates and computes."""

    name = "mpi"

    def __init__(self, comm: Any = None, poll_s: float = POLL_S) -> None:
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.is_coordinator = self.rank == 0
        self.poll_s = poll_s
        self._stopped: set[int] = set()
        self._remote_in_flight = 0

    @property
    def n_workers(self) -> int:
        return self.size

    def describe(self) -> str:
        return f"mpi, {self.size} ranks (rank 0 coordinates and computes)"

    def _recv_when_ready(self, source: int, tag: int) -> tuple[int, Any]:
        # Iprobe + sleep instead of a blocking recv: Open MPI's blocking receive spins a core, which
        # would steal it from the computing thread on rank 0 and from other ranks when oversubscribed.
        status = self.MPI.Status()
        while not self.comm.Iprobe(source=source, tag=tag, status=status):
            time.sleep(self.poll_s)
        src = status.Get_source()
        return src, self.comm.recv(source=src, tag=tag)

    def serve(self, fn: Callable[[Any], Any]) -> None:
        if self.is_coordinator:
            raise RuntimeError("rank 0 coordinates; call map_unordered there")
        result = None
        while True:
            self.comm.send(result, dest=0, tag=_TAG_READY)
            _, item = self._recv_when_ready(0, _TAG_TASK)
            if item is None:
                return
            index, task = item
            try:
                result = ("ok", index, fn(task), self.rank)
            except Exception as exc:
                result = ("error", index, _describe_failure(exc), self.rank)

    def map_unordered(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        pending = deque(enumerate(tasks))
        lock = threading.Lock()
        local: queue.Queue = queue.Queue()

        def take() -> tuple[int, Any] | None:
            with lock:
                return pending.popleft() if pending else None

        def compute_on_rank0() -> None:
            while (item := take()) is not None:
                try:
                    local.put(("ok", item[0], fn(item[1]), 0))
                except Exception as exc:
                    local.put(("error", item[0], _describe_failure(exc), 0))
                    return

        threading.Thread(target=compute_on_rank0, name="fanout-rank0-compute", daemon=True).start()
        outstanding = len(tasks)
        status = self.MPI.Status()
        while outstanding:
            if not local.empty():
                outstanding -= 1
                yield self._unpack(local.get())
            elif len(self._stopped) < self.size - 1 and self.comm.Iprobe(tag=_TAG_READY, status=status):
                src = status.Get_source()
                message = self.comm.recv(source=src, tag=_TAG_READY)
                item = take()
                self.comm.send(item, dest=src, tag=_TAG_TASK)
                if item is None:
                    self._stopped.add(src)
                else:
                    self._remote_in_flight += 1
                if message is not None:
                    self._remote_in_flight -= 1
                    outstanding -= 1
                    yield self._unpack(message)
            else:
                time.sleep(self.poll_s)

    @staticmethod
    def _unpack(message: tuple) -> tuple[int, Any]:
        status, index, payload, rank = message
        if status != "ok":
            raise RuntimeError(f"task {index} failed on MPI rank {rank}:\n{payload}")
        return index, payload

    def close(self, error: BaseException | None = None) -> None:
        if not self.is_coordinator or self.size == 1:
            return
        if error is not None and self._remote_in_flight:
            # Other ranks are mid-task and would only finish work nobody collects: end the job now,
            # saying why first (Abort kills this process before Python could print the exception).
            if isinstance(error, KeyboardInterrupt):
                print("interrupted: aborting the MPI job", file=sys.stderr)
            else:
                traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
            sys.stderr.flush()
            self.comm.Abort(130 if isinstance(error, KeyboardInterrupt) else 1)
        for rank in range(1, self.size):
            if rank not in self._stopped:
                self._recv_when_ready(rank, _TAG_READY)
                self.comm.send(None, dest=rank, tag=_TAG_TASK)
                self._stopped.add(rank)


# ----------------------------------------------------------------------------- factory


def open_fanout(backend: str, *, workers: int | None = None, scheduler_file: str | None = None,
                slurm: dict[str, Any] | None = None) -> Fanout:
    """The backend named on the command line. ``slurm`` (options of ``DaskFanout.slurm``) selects
    dask-jobqueue; ``scheduler_file`` an existing Dask scheduler; otherwise a local cluster."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if (scheduler_file or slurm is not None) and backend != "dask":
        raise ValueError("--dask-scheduler-file and --dask-slurm need --backend dask")
    if scheduler_file and slurm is not None:
        raise ValueError("--dask-scheduler-file and --dask-slurm exclude each other; pick one")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    workers = workers or default_workers()
    if backend == "serial":
        return SerialFanout()
    if backend == "mpi":
        return MPIFanout()
    if scheduler_file:
        return DaskFanout.scheduler_file(scheduler_file)
    if slurm is not None:
        return DaskFanout.slurm(workers, **slurm)
    return DaskFanout.local(workers)


def default_workers() -> int:
    """Cores this process may use (respects affinity masks set by Slurm or taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def is_coordinator_process(backend: str) -> bool:
    """Whether this process speaks for the run (prints, writes); False on MPI ranks other than 0."""
    if backend != "mpi":
        return True
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_rank() == 0
