"""Model registry versions that are complete or absent, and registration that can be retried.

A version is created with its lineage tags in the same call (`create_model_version(tags=...)`, one
database transaction), so a version without `dagster.run_id` comes only from an interrupted
registration made elsewhere (or by an older release); such a version is never evaluated or
promoted (`is_complete`). Each version also carries the content fingerprint of the checkpoint it
holds: a retried registration of the same weights finds that version and only moves the alias,
instead of registering a duplicate.

`UNIME_REGISTER_FAIL_AT` (fault injection for the tests) raises at one point of the sequence:
`logged` (model logged, no version), `registered` (version created, alias not moved), `aliased`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from mlflow import MlflowClient

LINEAGE_TAG = "dagster.run_id"
FINGERPRINT_TAG = "unime.checkpoint_fingerprint"
FAIL_AT_ENV = "UNIME_REGISTER_FAIL_AT"
FAULT_POINTS = ("logged", "registered", "aliased")


class InjectedRegistrationFailure(RuntimeError):
    pass


def fault_point(point: str) -> None:
    if os.environ.get(FAIL_AT_ENV) == point:
        raise InjectedRegistrationFailure(f"injected failure after '{point}' (${FAIL_AT_ENV})")


def is_complete(tags: Mapping[str, str] | None) -> bool:
    """Registered with its lineage (the Dagster run that trained it)."""
    return bool((tags or {}).get(LINEAGE_TAG))


def find_version(tracking_uri: str, name: str, fingerprint: str) -> str | None:
    """The newest complete version of `name` holding the checkpoint with this fingerprint."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except Exception:  # no registered model yet
        return None
    hits = [int(v.version) for v in versions if is_complete(v.tags) and v.tags.get(FINGERPRINT_TAG) == fingerprint]
    return str(max(hits)) if hits else None


def create_version(tracking_uri: str, name: str, model_uri: str, run_id: str, fingerprint: str,
                   lineage: Mapping[str, str]) -> str:  # fmt: skip
    """A new version of `name` for `model_uri`, with the lineage and fingerprint tags in the same call.

    Called inside the run `start_run` opened, which set the process's tracking URI (the registry
    follows it); a process-wide registry URI is never set here."""
    import mlflow

    if mlflow.get_tracking_uri() != tracking_uri:
        raise RuntimeError(f"register {name}: the active tracking URI is {mlflow.get_tracking_uri()}, not {tracking_uri}")
    tags = {**lineage, FINGERPRINT_TAG: fingerprint, "mlflow.run_id": run_id}
    mv = mlflow.register_model(model_uri, name, tags=dict(tags))
    return str(mv.version)
