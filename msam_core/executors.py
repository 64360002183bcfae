"""Run independent jobs (one training run each) here, in N local processes, or as Ray tasks.

:func:`msam_core.compare.compare` builds a list of :class:`Job` (a config and the run
directory it goes to) and hands it to an :class:`Executor` with the function that does one
job.  The executor only decides *where* jobs run; it knows nothing about methods or seeds, so
new kinds of runs (e.g. a modality trained alone) slot in as more jobs.

- ``local`` with ``jobs=1``: one after the other in this process (no start-up cost);
- ``local`` with ``jobs=N``: N worker processes (:class:`concurrent.futures.ProcessPoolExecutor`),
  each with its share of the CPU threads, taking job after job.  Where the OS allows, they are
  forked from a *fork server* (:mod:`multiprocessing.forkserver`) that imports torch and the
  ``preload`` modules once, started when the executor is built, so its imports overlap the
  caller's own checks and a worker starts in milliseconds instead of re-importing torch (seconds
  each); the server never runs torch ops, so no thread pool or gloo state is forked.  Elsewhere
  (Windows) they are spawned;
- ``ray``: each job a Ray task (``ray.remote``), on the cluster at ``address`` or on a local
  Ray instance of ``jobs`` CPUs; ``gpus_per_run`` is the task's GPU request.

A job that raises is reported as a :class:`JobResult` with ``action="failed"`` and the error
text; the other jobs go on.  Ctrl-C stops everything.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
import signal
import socket
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

EXECUTORS = ("local", "ray")
FAILED = "failed"
#: imported by the fork server for every worker: torch.optim imports torch._dynamo on the first
#: optimizer a process builds (about 1.5 s), which each worker would otherwise pay in its first job
WORKER_PRELOAD = ("torch", "torch._dynamo")


@dataclass(frozen=True)
class Job:
    """One run to make: ``config`` (a ``TrainConfig``) trained into ``path``."""

    label: str
    config: Any
    path: Path
    options: dict[str, Any] = field(default_factory=dict)  # passed to the work function


@dataclass(frozen=True)
class JobResult:
    """What became of a job: the work function's answer, or ``"failed"`` and why."""

    job: Job
    action: str
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.action == FAILED


Work = Callable[[Job], str]
OnDone = Callable[[JobResult, int, int], None]


def available_cpus() -> int:
    """CPUs this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def threads_per_job(jobs: int) -> int:
    """Intra-op threads for each of ``jobs`` concurrent runs: the CPUs shared out, at least
    one, never more than ``OMP_NUM_THREADS`` when the user set it."""
    share = max(1, available_cpus() // max(1, jobs))
    limit = os.environ.get("OMP_NUM_THREADS", "")
    return min(share, int(limit)) if limit.isdigit() and int(limit) > 0 else share


def _limit_threads(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _call(work: Work, job: Job, threads: int | None = None, cwd: str | None = None) -> JobResult:
    """Run one job; an exception becomes a failed result carrying its message.  ``cwd``: the
    caller's working directory (a forked worker has the fork server's), for relative paths."""
    if threads is not None:
        _limit_threads(threads)
    if cwd is not None:
        os.chdir(cwd)
    try:
        return JobResult(job, str(work(job)))
    except Exception as err:  # reported in the table, the others go on
        last = traceback.extract_tb(err.__traceback__)[-1:]
        where = f" ({Path(last[0].filename).name}:{last[0].lineno})" if last else ""
        return JobResult(job, FAILED, f"{type(err).__name__}: {err}{where}")


class Executor:
    """Where jobs run.  Build it (and so check it can run anything) before writing any file.

    Args:
        kind: ``"local"`` or ``"ray"``.
        jobs: runs at once (local processes; a local Ray instance's CPU count).
        ray_address: a running Ray cluster (``host:port``, ``ray://host:port`` or ``auto``);
            None starts a local instance and shuts it down afterwards.
        gpus_per_run: GPUs each Ray task asks for (fractions share a GPU).
        preload: modules the local worker processes need (the work function's), imported once
            by the fork server with :data:`WORKER_PRELOAD`.

    Raises:
        ValueError: unknown kind, ``jobs < 1``, Ray options without Ray, Ray not installed,
            or no Ray cluster at ``ray_address``.
    """

    def __init__(
        self,
        kind: str = "local",
        jobs: int = 1,
        *,
        ray_address: str | None = None,
        gpus_per_run: float = 0.0,
        preload: Sequence[str] = (),
    ) -> None:
        if kind not in EXECUTORS:
            raise ValueError(f"executor {kind!r} is not known; choose one of {list(EXECUTORS)}")
        if int(jobs) < 1:
            raise ValueError(f"--jobs must be at least 1, got {jobs}")
        given = [
            option
            for option, value in (("--ray-address", ray_address), ("--gpus-per-run", gpus_per_run))
            if value
        ]
        if kind != "ray" and given:
            verb = "need" if len(given) > 1 else "needs"
            raise ValueError(f"{' and '.join(given)} {verb} --executor ray")
        if gpus_per_run < 0:
            raise ValueError(f"--gpus-per-run must be >= 0, got {gpus_per_run}")
        self.kind, self.jobs = kind, int(jobs)
        self.ray_address, self.gpus_per_run = ray_address, float(gpus_per_run)
        self._ray = _connect_ray(ray_address, self.jobs) if kind == "ray" else None
        self._context = None
        if kind == "local" and self.jobs > 1:
            self._context = _worker_context([*WORKER_PRELOAD, *preload])

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f", address={self.ray_address!r}" if self.ray_address else ""
        return f"Executor({self.kind!r}, jobs={self.jobs}{where})"

    def run(
        self, work: Work, jobs: Sequence[Job], on_done: OnDone | None = None
    ) -> list[JobResult]:
        """Do every job with ``work`` (a module-level function: it travels by reference);
        results in the order of ``jobs``; ``on_done(result, finished, total)`` as each ends."""
        jobs = list(jobs)
        results: dict[int, JobResult] = {}

        def finish(index: int, result: JobResult) -> None:
            results[index] = result
            if on_done is not None:
                on_done(result, len(results), len(jobs))

        if self.kind == "ray":
            self._run_ray(work, jobs, finish)
        elif self.jobs == 1 or len(jobs) <= 1:
            for index, job in enumerate(jobs):
                finish(index, _call(work, job))
        else:
            self._run_processes(work, jobs, finish)
        return [results[i] for i in range(len(jobs))]

    def _run_processes(self, work: Work, jobs: list[Job], finish) -> None:
        workers = min(self.jobs, len(jobs))
        threads, cwd = threads_per_job(workers), os.getcwd()
        with ProcessPoolExecutor(workers, mp_context=self._context) as pool:
            futures = {pool.submit(_call, work, job, threads, cwd): i for i, job in enumerate(jobs)}
            try:
                for future in as_completed(futures):
                    finish(futures[future], future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def _run_ray(self, work: Work, jobs: list[Job], finish) -> None:
        ray = self._ray
        task = ray.remote(_call).options(num_cpus=1, num_gpus=self.gpus_per_run, max_retries=0)
        refs = {task.remote(work, job, 1): i for i, job in enumerate(jobs)}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        result = ray.get(ref)
                    except Exception as err:  # a worker that died
                        result = JobResult(jobs[refs[ref]], FAILED, f"Ray task lost: {err}")
                    finish(refs[ref], result)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise

    def close(self) -> None:
        """Shut down a Ray instance this executor started (a cluster is left running)."""
        if self._ray is not None and self.ray_address is None and self._ray.is_initialized():
            self._ray.shutdown()


def start_workers(kind: str, jobs: int, preload: Sequence[str] = ()) -> None:
    """Start the local workers' fork server now (nothing for one job or Ray), so that its
    imports run while the caller checks its jobs; the :class:`Executor` then finds it running."""
    if kind == "local" and int(jobs) > 1:
        _worker_context([*WORKER_PRELOAD, *preload])


def _worker_context(preload: Sequence[str]):
    """The start method of local workers: a fork server importing ``preload``, started now (its
    imports run while the caller goes on); ``spawn`` where there is no fork server."""
    if "forkserver" not in multiprocessing.get_all_start_methods():  # pragma: no cover - Windows
        return get_context("spawn")
    from multiprocessing import forkserver

    context = get_context("forkserver")
    # the server imports __main__ (as spawn would in each worker) and then the rest, once; a
    # server already running (an earlier executor in this process) is reused as it is
    context.set_forkserver_preload(["__main__", *dict.fromkeys(preload)])
    forkserver.ensure_running()
    _end_fork_server_at_exit()
    return context


@functools.cache
def _end_fork_server_at_exit() -> None:
    """Have this process end its fork server as it exits (registered once).

    Left to itself the server sees its parent's end only after it, then spends about a second
    unloading torch (or seconds finishing its imports, after an early error) while it still
    holds the command's stdout and stderr: a pipeline (``msam compare ... | tee log``) or a
    captured subprocess waits for it.  By then every worker has been joined, and the server
    holds nothing to save."""
    from multiprocessing import forkserver

    def end() -> None:
        pid = forkserver._forkserver._forkserver_pid  # no public accessor (CPython 3.11-3.14)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass

    atexit.register(end)


def _connect_ray(address: str | None, cpus: int):
    """Import Ray and connect (or start a local instance); ValueError saying what to do."""
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--executor ray needs Ray, which is not installed here: pip install 'msam[ray]' "
            "(or use the default --executor local)"
        ) from None
    if ray.is_initialized():
        return ray
    if address not in (None, "auto"):
        _check_reachable(address)
    try:
        if address is None:
            ray.init(
                num_cpus=cpus,
                include_dashboard=False,
                log_to_driver=False,
                object_store_memory=100 * 2**20,  # runs return a few strings: keep it small
            )
        else:
            ray.init(address=address, log_to_driver=False)
    except ConnectionError as err:
        raise ValueError(
            f"no Ray cluster at {address!r} ({err}); start one with `ray start --head`, or "
            "drop --ray-address to run on a local Ray instance"
        ) from None
    return ray


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast (instead of Ray's long retry loop) when nothing listens at ``address``."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"--ray-address {address!r} is not host:port (e.g. 10.0.0.5:6379 or "
            "ray://10.0.0.5:10001) nor 'auto'"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ValueError(
            f"no Ray cluster at {address!r}: cannot connect ({err}); start one there with "
            "`ray start --head`, or drop --ray-address to run on a local Ray instance"
        ) from None
