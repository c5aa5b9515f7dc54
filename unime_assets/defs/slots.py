"""Concurrency slots that recover: runs of a dead worker give their `gpu` slot back, waiting steps
sleep and stop on SIGTERM, and simultaneous claims on a sqlite instance cannot share one slot.

What Dagster provides and is used as is: pools and their limits (`concurrency.pools` in
dagster.yaml), `DagsterInstance.report_run_failed`, `EventLogStorage.free_concurrency_slots_for_run`
(what the UI's "free slots" and the daemon call), and the daemon's `run_monitoring.
free_slots_after_run_end_seconds` (slots of runs that ended).

What Dagster 1.13 lacks, added here:

1. A run whose worker was SIGKILLed stays STARTED forever: run monitoring detects dead workers only
   through run launchers with health checks (k8s, docker, ECS), not the default launcher nor the
   in-process runs of `dg.materialize` (our CLI, `make demo`, the tests). `recover_dead_runs` finds the
   runs that hold or wait for slots whose worker process is gone (the pid Dagster records in the run's
   first engine event; a pid reused by a newer process counts as gone), marks them failed and frees
   their slots, and frees the slots of runs that ended. It runs whenever a step finds its pool full
   (at most every SWEEP_SECONDS), and from `unime-assets recover`. Liveness is read on this machine,
   so only on a sqlite instance (one machine by definition); on Postgres the production run launcher's
   health checks and `free_slots_after_run_end_seconds` do it.
2. `InstanceConcurrencyContext.interval_to_next_pending_claim_check` returns `min(0, ...)`, always
   <= 0, so a step waiting for a slot never sleeps: it spins a core and, since the in-process loop
   never looks at captured interrupts, ignores SIGTERM/SIGINT. The patch sleeps until the next claim
   check (at most MAX_WAIT_SECONDS at a time) and raises Dagster's interruption error when a signal
   was captured, so the run ends and its pending claim is withdrawn.
3. On sqlite the claim is check-then-write without row locks: two runs starting in the same second
   both see a free slot and both take it. The patch serialises claims with a file lock in the
   instance folder (sqlite instances are one machine, so a file lock covers every process).

`install()` applies 2 and 3 (idempotent); `unime_assets.defs` calls it on import, so every process
that executes these assets (CLI, UI run workers, tests) has it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psutil
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.events import DagsterEventType
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.storage.dagster_run import FINISHED_STATUSES
from dagster._utils.interrupts import check_captured_interrupt

log = logging.getLogger(__name__)

SWEEP_SECONDS = 30.0  # a blocked claim looks for dead holders at most this often (per process)
MAX_WAIT_SECONDS = 1.0  # longest sleep between two looks at signals while a step waits for a slot
MIN_WAIT_SECONDS = 0.05
LOCK_FILE = ".concurrency-claims.lock"
ALIVE_STATUSES = (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.CANCELING)


@dataclass(frozen=True)
class RecoveredRun:
    run_id: str
    status: str  # the run's status when found
    action: str  # "marked failed and slots freed" | "slots freed"
    reason: str


def is_local(instance: dg.DagsterInstance) -> bool:
    """A sqlite instance: one machine, so process ids and file locks mean the same to every run."""
    from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage

    return isinstance(instance.run_storage, SqliteRunStorage)


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """(pid, time) of the run's worker: the first engine event that names a pid (the launcher's
    "Started process for run" or the executor's "Executing steps in process")."""
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        data = record.dagster_event.engine_event_data if record.dagster_event else None
        pid = (data.metadata or {}).get("pid") if data else None
        if pid is not None:
            with contextlib.suppress(TypeError, ValueError):
                return int(pid.value), record.timestamp
    return None


def worker_alive(instance: dg.DagsterInstance, run_id: str) -> bool | None:
    """True / False when known (a local instance and a recorded pid), else None."""
    if not is_local(instance):
        return None
    found = worker_pid(instance, run_id)
    if found is None:
        return None
    pid, since = found
    try:
        # A process started after the run's engine event is a reused pid, not the run's worker.
        return psutil.Process(pid).create_time() <= since + 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return None


def recover_dead_runs(instance: dg.DagsterInstance, exclude: tuple[str, ...] = ()) -> list[RecoveredRun]:
    """Free the slots (and pending claims) of runs that ended, and fail and free the runs that hold
    or wait for slots while their worker is gone. Returns what was done."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    out = []
    for run_id in sorted(storage.get_concurrency_run_ids() - set(exclude)):
        run = instance.get_run_by_id(run_id)
        if run is None or run.status in FINISHED_STATUSES:
            status = run.status.value if run else "deleted"
            storage.free_concurrency_slots_for_run(run_id)
            out.append(RecoveredRun(run_id, status, "slots freed", f"the run has ended ({status})"))
            continue
        if run.status not in ALIVE_STATUSES or worker_alive(instance, run_id) is not False:
            continue
        pid = worker_pid(instance, run_id)
        reason = f"its worker process (pid {pid[0] if pid else '?'}) is gone"
        instance.report_run_failed(run, message=f"Marked failed: {reason}; its concurrency slots were freed.")
        storage.free_concurrency_slots_for_run(run_id)
        out.append(RecoveredRun(run_id, run.status.value, "marked failed and slots freed", reason))
    for r in out:
        log.warning(f"run {r.run_id} ({r.status}): {r.action}: {r.reason}")
    return out


@contextlib.contextmanager
def _claim_lock(instance: dg.DagsterInstance):
    if not is_local(instance):
        yield
        return
    path = Path(instance.root_directory) / LOCK_FILE
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


_original_claim = InstanceConcurrencyContext.claim
_original_interval = InstanceConcurrencyContext.interval_to_next_pending_claim_check


def _claim(self: InstanceConcurrencyContext, concurrency_key: str, step_key: str, step_priority: int = 0) -> bool:
    with _claim_lock(self._instance):
        claimed = _original_claim(self, concurrency_key, step_key, step_priority)
    last = getattr(self, "_unime_last_sweep", None)
    if not claimed and (last is None or time.monotonic() - last >= SWEEP_SECONDS):
        self._unime_last_sweep = time.monotonic()
        with contextlib.suppress(Exception):  # recovery is best effort; the claim is retried anyway
            if recover_dead_runs(self._instance, exclude=(self._run_id,)):
                self._pending_timeouts[step_key] = 0.0  # look again at once
    return claimed


def _interval(self: InstanceConcurrencyContext) -> float:
    if check_captured_interrupt():  # SIGTERM / SIGINT while waiting: end the run (pending claims go)
        raise DagsterExecutionInterruptedError("interrupted while waiting for a concurrency slot")
    if not self._pending_claims:
        return 0.0
    ready = min((self._pending_timeouts.get(k, 0.0) for k in self._pending_claims), default=0.0)
    return min(MAX_WAIT_SECONDS, max(MIN_WAIT_SECONDS, ready - time.time()))


def install() -> None:
    """Patch Dagster's concurrency context (idempotent); see the module docstring for why.
    `UNIME_DAGSTER_PATCHES=off` leaves Dagster as it is (to compare, or once upstream is fixed)."""
    if getattr(InstanceConcurrencyContext, "_unime_patched", False) or os.environ.get("UNIME_DAGSTER_PATCHES") == "off":
        return
    InstanceConcurrencyContext.claim = _claim  # type: ignore[method-assign]
    InstanceConcurrencyContext.interval_to_next_pending_claim_check = _interval  # type: ignore[method-assign]
    InstanceConcurrencyContext._unime_patched = True  # type: ignore[attr-defined]


def wait_seconds_unpatched() -> float:
    """What the unpatched Dagster method returns for a claim due in 5 s (tests pin the upstream bug)."""
    from types import SimpleNamespace

    fake = SimpleNamespace(_pending_claims={"s"}, _pending_timeouts={"s": time.time() + 5})
    return _original_interval(fake)  # type: ignore[arg-type]

