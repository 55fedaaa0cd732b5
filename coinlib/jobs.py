"""Independent jobs side by side: one process per CPU core (the CPU fast path's second half).

The quick profile trains many small networks that do not depend on each other: every
seed's classifier, every seed's COIN and Singla*, every ablation row. Their convolutions
are too small for two threads to share well, so two one-thread processes do more work on
two cores than one two-thread process (``benchmarks/train_step.py --jobs 2`` measures it).
:func:`run_jobs` runs a list of :class:`Job` in a pool of worker processes, each on
:func:`coinlib.runtime.job_threads` threads, so a job gives the same numbers whether it ran
in a worker, in a notebook's kernel or from ``coin train``.

On CUDA, under ``torchrun``, or with one worker, the jobs run one after another in this
process. ``COIN_JOBS`` (default: cores / threads per job on the CPU) caps the workers.
A job is a module-level function and its arguments (pickled to the worker); a job that
fails stops the stage with an error naming it, after the jobs already running finish, so
their checkpoints are complete and a re-run resumes. A job's ``cost`` (any relative estimate
of its work) orders the pool's queue, longest first, so that no long job starts last while the
other core idles; results keep the order of the list, and the numbers are the same in any order.
"""

from __future__ import annotations

import atexit
import concurrent.futures as futures
import concurrent.futures.process
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .progress import tqdm
from .runtime import job_threads, positive_int_from_env

__all__ = ["Job", "JobFailed", "job_workers", "run_jobs", "submission_order"]


@dataclass(frozen=True)
class Job:
    """``function(*args, **kwargs)``, described by ``name`` in progress and errors; ``cost``:
    a relative estimate of its work (only the order of the costs matters)."""

    name: str
    function: Callable[..., Any]
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    cost: float = 1.0

    def __call__(self) -> Any:
        return self.function(*self.args, **self.kwargs)


class JobFailed(RuntimeError):
    """A job of :func:`run_jobs` raised; the message names it and the original error."""


def job_workers(device: torch.device | str | None, jobs: int) -> int:
    """How many worker processes :func:`run_jobs` uses for ``jobs`` jobs on ``device``."""
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind != "cpu" or int(os.environ.get("WORLD_SIZE", "1")) > 1 or jobs <= 1:
        return 1
    wanted = positive_int_from_env("COIN_JOBS", "auto")
    if wanted is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        wanted = max(1, cores // job_threads())
    return min(wanted, jobs)


def _die_with_parent() -> None:
    """Linux: this worker gets SIGTERM when the process that started it dies, so a killed
    `coin` or notebook kernel does not leave its jobs training on (elsewhere: nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _start_worker() -> None:
    _die_with_parent()
    torch.set_num_threads(job_threads())
    # Ctrl-C (or a Jupyter kernel's interrupt and shutdown) reaches the whole process group:
    # the parent cancels and stops the pool; workers must not die mid-write on their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


_pools: dict[int, futures.ProcessPoolExecutor] = {}


def _pool(workers: int) -> futures.ProcessPoolExecutor:
    """A pool of ``workers`` processes, started once per process and reused by every stage
    (a worker's start-up, importing torch and coinlib, costs seconds)."""
    pool = _pools.get(workers)
    if pool is None:
        context = multiprocessing.get_context("spawn")  # fork is unsafe with torch's thread pools
        pool = _pools[workers] = futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker)
        atexit.register(pool.shutdown, cancel_futures=True)
    return pool


_NO_START = ("worker processes could not start. A script that runs coinlib stages side by side must call "
             "them under `if __name__ == \"__main__\":` (Python's spawn start method imports the script "
             "in every worker); or set COIN_JOBS=1 to run the jobs one after another in this process")


def run_jobs(jobs: Sequence[Job], device: torch.device | str | None = None, desc: str = "jobs",
             progress: bool = True, workers: int | None = None) -> list[Any]:
    """Run ``jobs`` (in parallel where :func:`job_workers` allows, or on ``workers`` processes
    when given); their results, in order.

    Raises :class:`JobFailed` naming the first job that failed.
    """
    jobs = list(jobs)
    workers = job_workers(device, len(jobs)) if workers is None else max(1, min(workers, len(jobs)))
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress or len(jobs) <= 1)
    results: list[Any] = [None] * len(jobs)
    try:
        if workers == 1:
            for i, job in enumerate(jobs):
                results[i] = _run_here(job)
                bar.update(1)
            return results
        pool = _pool(workers)
        pending = {pool.submit(jobs[i].function, *jobs[i].args, **jobs[i].kwargs): i
                   for i in submission_order(jobs)}
        failure: tuple[Job, BaseException] | None = None
        for done in futures.as_completed(pending):
            i = pending[done]
            if done.cancelled():
                continue
            error = done.exception()
            if error is not None and failure is None:
                failure = (jobs[i], error)
                for other in pending:
                    other.cancel()  # what has not started yet; running jobs finish
            elif error is None:
                results[i] = done.result()
            bar.update(1)
            bar.set_postfix_str(jobs[i].name)
        if failure is not None:
            job, error = failure
            if isinstance(error, futures.process.BrokenProcessPool):
                _pools.pop(workers, None)
                raise JobFailed(f"job {job.name!r} failed: {_NO_START}, or a worker was killed "
                                f"(out of memory?): {error}") from error
            raise JobFailed(f"job {job.name!r} failed: {type(error).__name__}: {error}") from error
        return results
    finally:
        bar.close()


def submission_order(jobs: Sequence[Job]) -> list[int]:
    """Indices of ``jobs``, longest first (greedy longest-processing-time scheduling); ties keep
    the list's order."""
    return sorted(range(len(jobs)), key=lambda i: -jobs[i].cost)


def _run_here(job: Job) -> Any:
    try:
        return job()
    except Exception as error:
        raise JobFailed(f"job {job.name!r} failed: {type(error).__name__}: {error}") from error
