"""Independent jobs side by side (coinlib.jobs): order kept, failures named, one worker in-process."""

from __future__ import annotations

import os

import pytest

from coinlib.config import get_profile
from coinlib.jobs import Job, JobFailed, job_workers, run_jobs

NAMES = ("smoke", "quick", "paper", "lesson")


def test_jobs_run_in_worker_processes_and_come_back_in_order(monkeypatch):
    monkeypatch.setenv("COIN_JOBS", "2")
    assert job_workers("cpu", len(NAMES)) == 2
    done = run_jobs([Job(f"profile {n}", get_profile, (n,)) for n in NAMES], "cpu", progress=False)
    assert [p.name for p in done] == list(NAMES)
    pids = run_jobs([Job(f"pid {i}", os.getpid) for i in range(4)], "cpu", progress=False)
    assert os.getpid() not in pids


def test_a_failing_job_is_named_and_the_others_finish(monkeypatch):
    monkeypatch.setenv("COIN_JOBS", "2")
    jobs = [Job("fine", get_profile, ("smoke",)), Job("the typo", get_profile, ("quik",))]
    with pytest.raises(JobFailed, match="'the typo' failed: KeyError.*quik"):
        run_jobs(jobs, "cpu", progress=False)


def test_one_worker_or_one_job_runs_in_this_process(monkeypatch):
    monkeypatch.setenv("COIN_JOBS", "1")
    assert run_jobs([Job("pid", os.getpid), Job("pid", os.getpid)], "cpu", progress=False) == [os.getpid()] * 2
    monkeypatch.setenv("COIN_JOBS", "auto")
    assert job_workers("cpu", 1) == 1 and job_workers("cuda", 8) == 1
    monkeypatch.setenv("COIN_JOBS", "0")
    with pytest.raises(ValueError, match="COIN_JOBS must be at least 1"):
        job_workers("cpu", 4)
