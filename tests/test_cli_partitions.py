"""`unime-assets materialize --workers`: a partitioned stage's runs shared between this process and a spawned
worker. The runs here are stand-ins (the e2e tests run the real mining stage both ways and compare every
number: tests/e2e/test_reproducible.py); these pin the sharing itself: every partition once, in whichever
process is free, and nothing new after a failure."""

from __future__ import annotations

import functools
import os
import threading

from unime_assets.cli import _partitions_side_by_side


def _in_worker(outcome: str, key: str) -> tuple[bool, str]:
    """The spawned worker's stand-in run ("ok", "fail" every partition, or "die"): its run id names the process."""
    if outcome == "die":
        os._exit(3)  # the worker process ends mid-run, as if killed
    return outcome == "ok", f"worker-{os.getpid()}-{key}"


def _sharing(keys: list[str], worker: str = "ok", here_ok: bool = True):
    reported: list[tuple[str, bool, str]] = []
    worker_reported = threading.Event()

    def report(key: str, ok: bool, run_id: str) -> None:
        reported.append((key, ok, run_id))
        if not run_id.startswith("here-"):
            worker_reported.set()

    def here(key: str) -> tuple[bool, str]:
        # This process's first run lasts until the worker has reported one: both processes take part.
        assert worker_reported.wait(timeout=120), f"the spawned worker never reported a run: {reported}"
        return here_ok, f"here-{key}"

    ok = _partitions_side_by_side(keys, 2, here, functools.partial(_in_worker, worker), report)
    return ok, reported


def test_every_partition_runs_once_in_either_process():
    keys = [f"p{i}" for i in range(6)]
    ok, reported = _sharing(keys)
    assert ok
    assert sorted(k for k, _, _ in reported) == keys
    assert all(good for _, good, _ in reported)
    where = {run_id.split("-")[0] for _, _, run_id in reported}
    assert where == {"here", "worker"}
    assert not any(run_id.startswith(f"worker-{os.getpid()}-") for _, _, run_id in reported)  # another process


def test_no_partition_starts_after_a_failed_run():
    keys = [f"p{i}" for i in range(6)]
    # The worker's first partition fails while this process is still in its first run (it waits for the
    # worker's report): that run finishes, and no other partition starts.
    ok, reported = _sharing(keys, worker="fail")
    assert not ok
    assert len(reported) == 2 and {k for k, _, _ in reported} <= {"p0", "p1"}
    assert {(run_id.split("-")[0], good) for _, good, run_id in reported} == {("worker", False), ("here", True)}


def test_a_failed_run_here_stops_the_worker_taking_more():
    keys = [f"p{i}" for i in range(6)]
    ok, reported = _sharing(keys, here_ok=False)
    assert not ok
    assert [good for _, good, run_id in reported if run_id.startswith("here-")] == [False]
    # the worker may have taken one more partition before the failure was reported, not a third
    assert len(reported) <= 3


def test_a_worker_that_dies_fails_its_partition_and_the_stage(capfd):
    keys = [f"p{i}" for i in range(6)]
    ok, reported = _sharing(keys, worker="die")
    assert not ok
    died = [(k, run_id) for k, good, run_id in reported if not good]
    assert len(died) == 1 and died[0][1].startswith("worker error: BrokenProcessPool")
    assert len(reported) == 2  # this process's run under way finished; nothing started after
    assert "BrokenProcessPool" in capfd.readouterr().err  # the traceback is printed
