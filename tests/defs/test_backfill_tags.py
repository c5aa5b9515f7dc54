"""A partition backfill of the `mine` job, executed by the daemon's backfill loop, launches runs that
carry the job's retry and time-limit tags (job backfills copy a job's `tags`, never its `run_tags`)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from unime_assets.defs.automation import RUN_RETRIES
from unime_assets.defs.partitions import TRAIN_SUBSETS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_daemon_backfill_of_mine_carries_the_job_tags(tmp_path, monkeypatch):
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._daemon.backfill import execute_backfill_iteration
    from dagster._time import get_current_timestamp

    home = tmp_path / "dg"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    parts = TRAIN_SUBSETS[:2]
    target = ModuleTarget(module_name="unime_assets.definitions", attribute=None, working_directory=os.getcwd(),
                          location_name="unime_assets")  # fmt: skip
    with dg.DagsterInstance.get() as instance, create_test_daemon_workspace_context(target, instance) as ctx:
        location = next(iter(ctx.create_request_context().get_code_location_entries().values())).code_location
        assert location is not None
        partition_set = location.get_repository("__repository__").get_partition_set("mine_partition_set")
        instance.add_backfill(PartitionBackfill(  # what the UI's "Launch backfill" on the job creates
            backfill_id="minebf", partition_set_origin=partition_set.get_remote_origin(),
            status=BulkActionStatus.REQUESTED, partition_names=parts, from_failure=False, reexecution_steps=None,
            tags={}, backfill_timestamp=get_current_timestamp()))  # fmt: skip
        list(execute_backfill_iteration(ctx, logging.getLogger("backfill")))
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": "minebf"}))
    assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(parts)
    for run in runs:
        assert {k: run.tags.get(k) for k in RUN_RETRIES} == RUN_RETRIES, run.tags
        assert run.tags["dagster/max_runtime"] == str(24 * 3600) and run.tags["unime/stage"] == "mine"
