"""`unime-assets recover`: put an instance and its artifacts back in order after crashes.

1. Dagster: runs that hold or wait for concurrency slots while their worker is gone are marked
   failed and their slots freed; slots of runs that ended are freed (defs/slots.py).
2. MLflow: runs left RUNNING by Dagster runs that ended or died are closed (KILLED / FAILED).
3. Files: orphan temporary files, stale judge shards, cache namespaces of retrained checkpoints
   (unime_assets/maintenance.py).

With `dry_run` nothing changes; the report lists what would be done.
"""

from __future__ import annotations

from unime_assets.config import Settings


def collect_artifacts(s: Settings, tables_root, dry_run: bool = False):
    """Files part (shared with the assets' `maintenance.collect_garbage` option)."""
    from unime_assets import maintenance

    m = s.maintenance
    found = maintenance.find_garbage(s.artifacts_root, (tables_root,), tmp_age=m.tmp_age_hours * 3600,
                                     idle=m.cache_idle_days * maintenance.DAY)  # fmt: skip
    freed = 0 if dry_run else maintenance.collect(found)
    return found, freed


def recover(dry_run: bool = False) -> list[str]:
    """Run the three parts on the instance at $DAGSTER_HOME and the configured MLflow store and
    artifacts; returns report lines."""
    import dagster as dg

    from unime_assets.config import unime_home
    from unime_assets.defs.resources import MlflowResource, SettingsResource
    from unime_assets.defs.slots import recover_dead_runs

    lines: list[str] = []
    with dg.DagsterInstance.get() as instance:
        if dry_run:
            lines.append("dry run: nothing is changed")
        else:
            for r in recover_dead_runs(instance):
                lines.append(f"dagster run {r.run_id} ({r.status}): {r.action} ({r.reason})")
            for run_id, status in MlflowResource().close_stale_runs(instance, current_run_id=""):
                lines.append(f"mlflow run {run_id}: closed as {status}")
    s = SettingsResource().get()
    found, freed = collect_artifacts(s, unime_home() / "assets" / "tables", dry_run=dry_run)
    for g in found:
        lines.append(f"{'would delete' if dry_run else 'deleted'} {g.kind} {g.path} ({g.bytes / 2**20:.1f} MiB): {g.reason}")
    lines.append(f"{len(found)} item(s), {sum(g.bytes for g in found) / 2**20:.1f} MiB"
                 + ("" if dry_run else f" freed ({freed / 2**20:.1f} MiB)"))  # fmt: skip
    return lines
