"""Independent jobs side by side (coinlib.jobs): order kept, longest queued first, failures named,
one worker in-process."""

from __future__ import annotations

import os

import pytest

from coinlib.config import get_profile
from coinlib.jobs import Job, JobFailed, job_workers, run_jobs, submission_order

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


def test_the_longest_jobs_are_queued_first_and_results_keep_the_list_order(monkeypatch):
    jobs = [Job(f"profile {n}", get_profile, (n,), cost=cost) for n, cost in zip(NAMES, (1.0, 5.0, 3.0, 5.0))]
    assert submission_order(jobs) == [1, 3, 2, 0]  # ties keep the list's order
    assert submission_order([Job("a", os.getpid), Job("b", os.getpid)]) == [0, 1]
    monkeypatch.setenv("COIN_JOBS", "2")
    assert [p.name for p in run_jobs(jobs, "cpu", progress=False)] == list(NAMES)


def test_the_pipeline_queues_the_tumour_classifiers_and_the_costly_saliency_first():
    from coinlib.pipeline import _classifier_training_cost, _saliency_cost

    quick = get_profile("quick")
    # the quick tumour f: half width (4x the convolutions), 20 full epochs against at most 8
    assert _classifier_training_cost(quick, "tumour") > 4 * _classifier_training_cost(quick, "synthetic")
    costs = {(track, method): _saliency_cost(quick, track, method)
             for track in ("synthetic", "tumour") for method in quick.saliency.methods}
    assert sorted(costs, key=costs.get, reverse=True)[:2] == [("tumour", "scorecam"), ("tumour", "rise")]
    assert max(costs[t, m] for t in ("synthetic", "tumour") for m in ("gradcam", "layercam")) < min(
        costs[t, m] for t in ("synthetic", "tumour") for m in ("rise", "scorecam"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux: the parent-death signal")
def test_the_workers_stop_when_the_process_that_started_them_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys, time\n"
        "from coinlib.jobs import Job, run_jobs\n"
        "if __name__ == '__main__':\n"
        "    os.environ['COIN_JOBS'] = '2'\n"
        "    print(*run_jobs([Job(str(i), os.getpid) for i in range(2)], 'cpu', progress=False), flush=True)\n"
        "    time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in parent.stdout.readline().split()]
    assert workers and parent.pid not in workers
    parent.send_signal(signal.SIGKILL)  # no clean-up of its own: only the kernel's signal reaches them
    parent.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in workers):
        time.sleep(0.2)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in workers)
