"""The Dagster UI over the session's materialized instance: dagster-webserver on 127.0.0.1 serving the
code location, its GraphQL API asked for the asset graph (every asset, its dependencies, partitions and
latest materialization), and a headless Chromium screenshot of the asset graph page kept as a CI
artifact ($UNIME_ARTIFACTS_DIR/ui/asset-graph.png, default ci-artifacts/ui/)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from test_definitions import CONTRACT, PARTITIONED  # the asset-key contract (tests/ is on sys.path)

ROOT = Path(__file__).parents[2]
ARTIFACTS = Path(os.environ.get("UNIME_ARTIFACTS_DIR", ROOT / "ci-artifacts"))

ASSET_GRAPH_QUERY = """
{
  assetNodes {
    assetKey { path }
    groupName
    dependencyKeys { path }
    isPartitioned
    partitionKeys
    pools
    jobNames
    assetPartitionStatuses { ... on DefaultPartitionStatuses { materializedPartitions } }
    assetMaterializations(limit: 1) { runId timestamp partition }
  }
}
"""


def lineage_url(base: str, groups: set[str]) -> str:
    """The global lineage page with every group expanded (its `expanded` parameter lists group ids)."""
    return f"{base}/asset-groups?" + urllib.parse.urlencode(
        {"expanded": ",".join(f"global@global:{g}" for g in sorted(groups))}
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(base: str, query: str, variables: dict | None = None) -> dict:
    req = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=60) as resp:
        body = json.load(resp)
    assert "errors" not in body, body["errors"]
    return body["data"]


def _wait_for_assets(base: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> list[dict]:
    """Poll until the code location is loaded and serves its assets (no fixed sleeps)."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster-webserver exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            nodes = graphql(base, ASSET_GRAPH_QUERY)["assetNodes"]
            if nodes:
                return nodes
        except Exception as exc:  # not listening yet, or location still loading
            last = exc
        time.sleep(1)
    pytest.fail(
        f"no asset graph from {base} within {timeout}s (last error: {last}):\n{log.read_text()[-4000:]}"
    )


@pytest.fixture(scope="module")
def webserver(materialized, tmp_path_factory):
    """dagster-webserver on a free 127.0.0.1 port, pointed at the materialized instance; stopped by
    SIGINT to its process group (started in its own session so the signals reach every child)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("webserver") / "webserver.log"
    config = Path(materialized["env"]["DAGSTER_HOME"]) / "dagster.yaml"
    if not config.exists():  # the defaults, minus the first-visit "join the community" dialog
        config.write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
    exe = Path(sys.executable).with_name("dagster-webserver")
    cmd = [str(exe), "-h", "127.0.0.1", "-p", str(port), "-m", "unime_assets.definitions"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=materialized["env"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        nodes = _wait_for_assets(base, proc, log)
        yield {"base": base, "nodes": nodes, "startup_s": time.monotonic() - t0}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.mark.slow
def test_graphql_serves_every_asset_with_lineage_partitions_and_latest_materialization(
    webserver, materialized
):
    nodes = {"/".join(n["assetKey"]["path"]): n for n in webserver["nodes"]}
    assert set(nodes) == set(CONTRACT)
    for name, parents in CONTRACT.items():
        node = nodes[name]
        assert {"/".join(k["path"]) for k in node["dependencyKeys"]} == parents, name
        latest = node["assetMaterializations"]
        assert latest and latest[0]["runId"], f"{name} has no materialization in the UI"
        assert node["isPartitioned"] == (name in PARTITIONED), name
        if name in PARTITIONED:
            materialized_parts = set(node["assetPartitionStatuses"]["materializedPartitions"])
            expected = materialized["train" if PARTITIONED[name] == "train" else "eval"]
            assert set(expected) <= set(node["partitionKeys"]), name
            assert materialized_parts == set(expected), name
            assert latest[0]["partition"] in expected, name
    assert "gpu" in nodes["judge_scores/qwen25vl"]["pools"]
    assert "mine" in nodes["judge_scores/qwen25vl"]["jobNames"] and "evaluate" in nodes["mmeb_report"]["jobNames"]


@pytest.mark.slow
def test_screenshot_of_the_asset_graph(webserver, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium on PATH: the screenshot is skipped (.ci/run installs Debian's `chromium`)")
    out = ARTIFACTS / "ui" / "asset-graph.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--hide-scrollbars",
           "--window-size=2000,1250", "--virtual-time-budget=30000", f"--screenshot={out}",
           lineage_url(webserver["base"], {n["groupName"] for n in webserver["nodes"]})]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and out.exists(), proc.stderr[-3000:]
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, f"{out}: {len(data)} bytes"
