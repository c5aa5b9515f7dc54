"""The Dagster and MLflow UIs over the session's materialized instance and store, both on 127.0.0.1, on the
ports the materializations link to: the GraphQL API asked for the asset graph (every asset, its
dependencies, partitions and latest materialization), for the metadata an operator reads (rounded
numbers, native tables, inline plots the MLflow server serves, described columns) and for the runs list
(named jobs); the MLflow run of an asset links back to its Dagster run. Headless Chromium screenshots of
the asset graph, the `judge_scores` and `mmeb_report` asset pages, the runs list and an MLflow run page
are kept as CI artifacts ($UNIME_ARTIFACTS_DIR/ui/, default ci-artifacts/ui/)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from defs_helpers import running_mlflow_server, stop_group
from test_definitions import CONTRACT, PARTITIONED  # the asset-key contract (tests/ is on sys.path)

# What `unime-assets materialize` (the demo graph) materializes: every asset but the ablation job's, which
# `unime-assets ablate` runs (tests/e2e/test_ablation_cli.py).
DEMO_GRAPH = {name: parents for name, parents in CONTRACT.items() if not name.startswith("ablation_")}

ROOT = Path(__file__).parents[2]
JUDGE_SCORES, JUDGE_MODEL = "judge_scores/qwen25vl", "judge_model/qwen25vl"  # the demo's judge (one asset per judge)
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
    port = urllib.parse.urlsplit(materialized["env"]["DAGSTER_UI_URL"]).port  # where the MLflow runs link
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
        stop_group(proc, signal.SIGINT)


@pytest.mark.slow
def test_graphql_serves_every_asset_with_lineage_partitions_and_latest_materialization(
    webserver, materialized
):
    nodes = {"/".join(n["assetKey"]["path"]): n for n in webserver["nodes"]}
    assert set(nodes) == set(CONTRACT)
    for name, parents in DEMO_GRAPH.items():
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


def _screenshot(url: str, name: str, profile: Path, size: str = "2000,1250") -> Path:
    """A headless Chromium screenshot of `url` into $UNIME_ARTIFACTS_DIR/ui/<name>.png (skip without chromium)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium on PATH: the screenshot is skipped (.ci/run installs Debian's `chromium`)")
    out = ARTIFACTS / "ui" / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--hide-scrollbars",
           f"--window-size={size}", "--virtual-time-budget=30000", f"--screenshot={out}", url]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and out.exists(), proc.stderr[-3000:]
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, f"{out}: {len(data)} bytes"
    return out


@pytest.mark.slow
def test_screenshot_of_the_asset_graph(webserver, tmp_path):
    _screenshot(lineage_url(webserver["base"], {n["groupName"] for n in webserver["nodes"]}), "asset-graph",
                tmp_path / "chromium-profile")  # fmt: skip


# --- what an operator reads: asset pages, runs list, the MLflow side ---------------------------------

METADATA_QUERY = """
query ($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      assetMaterializations(limit: 1) {
        runId
        partition
        metadataEntries {
          __typename
          label
          ... on FloatMetadataEntry { floatValue }
          ... on MarkdownMetadataEntry { mdStr }
          ... on TextMetadataEntry { text }
          ... on UrlMetadataEntry { url }
          ... on TableMetadataEntry { table { records schema { columns { name description } } } }
          ... on TableSchemaMetadataEntry { schema { columns { name description } } }
        }
      }
    }
  }
}
"""
RUNS_QUERY = "{ runsOrError { ... on Runs { results { runId jobName tags { key value } } } } }"


@pytest.fixture(scope="module")
def mlflow_server(materialized, tmp_path_factory):
    """`mlflow server` on the 127.0.0.1 port the materializations' plots and links point at."""
    base = materialized["env"]["MLFLOW_UI_URL"]
    log = tmp_path_factory.mktemp("mlflow") / "mlflow.log"
    args = ["--backend-store-uri", materialized["env"]["MLFLOW_TRACKING_URI"], "--host", "127.0.0.1",
            "--port", str(urllib.parse.urlsplit(base).port), "--workers", "1"]  # fmt: skip
    with running_mlflow_server(args, base, log, env=materialized["env"], cwd=ROOT):
        yield base


def _latest_entries(base: str, asset: str) -> tuple[dict, dict[str, dict]]:
    node = graphql(base, METADATA_QUERY, {"key": {"path": asset.split("/")}})["assetNodeOrError"]
    event = node["assetMaterializations"][0]
    return event, {e["label"]: e for e in event["metadataEntries"]}


def _significant_digits(x: float) -> int:
    digits = f"{abs(x):.15g}".replace(".", "").lstrip("0").rstrip("0")
    return len(digits.split("e")[0])


def _fetch(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


@pytest.mark.slow
def test_asset_pages_show_rounded_numbers_tables_inline_plots_and_described_columns(webserver, mlflow_server):
    base = webserver["base"]
    for asset in (JUDGE_SCORES, "mined_negatives", "candidate_pool", JUDGE_MODEL, "embedder_checkpoint",
                  "mmeb_report"):  # fmt: skip
        _, entries = _latest_entries(base, asset)
        floats = {k: e["floatValue"] for k, e in entries.items() if e["__typename"] == "FloatMetadataEntry"}
        assert floats or asset == "mmeb_report", asset  # the report's numbers are in its tables
        too_long = {k: v for k, v in floats.items() if v == v and _significant_digits(v) > 4 and abs(v) < 1e4}
        assert not too_long, f"{asset}: unrounded floats {too_long}"
        for key, e in entries.items():
            if e["__typename"] == "MarkdownMetadataEntry" and e["mdStr"].startswith("!["):
                # short enough for the UI to render inline, and an image the MLflow server serves
                assert len(e["mdStr"]) < 1000, (asset, key)
                src = e["mdStr"].rsplit("(", 1)[1].rstrip(")")
                assert src.startswith(mlflow_server), (asset, key, src)
                status, ctype, body = _fetch(src)
                assert status == 200 and ctype.startswith("image/png") and body[:4] == b"\x89PNG", (asset, key)
                assert entries[f"{key}_mlflow"]["__typename"] == "UrlMetadataEntry", (asset, key)
    _, judge = _latest_entries(base, JUDGE_SCORES)
    assert {"histogram", "histogram_mlflow", "auc_pos_vs_candidates", "pairs"} <= set(judge)
    _, report = _latest_entries(base, "mmeb_report")
    table = report["aggregates"]["table"]
    columns = [c["name"] for c in table["schema"]["columns"]]
    assert columns[0] == "model" and "overall" in columns and all(c["description"] for c in table["schema"]["columns"])
    models = [json.loads(r)["model"] for r in table["records"]]
    assert models[:2] == ["retriever", "embedder (untrained base)"] and models[2] == "embedder"
    assert models[3].startswith("embedder + reranker")
    assert report["per_dataset"]["__typename"] == "TableMetadataEntry"
    for asset in DEMO_GRAPH:  # every table asset: every column described
        _, entries = _latest_entries(base, asset)
        if "dagster/column_schema" in entries:
            undescribed = [c["name"] for c in entries["dagster/column_schema"]["schema"]["columns"] if not c["description"]]
            assert not undescribed, f"{asset}: columns without a description {undescribed}"


@pytest.mark.slow
def test_runs_are_named_jobs_tagged_with_assets_and_partitions(webserver):
    runs = graphql(webserver["base"], RUNS_QUERY)["runsOrError"]["results"]
    jobs = {r["jobName"] for r in runs}
    assert {"ingest_train", "ingest_eval", "models", "index", "mine", "train", "evaluate"} <= jobs, jobs
    assert not any(j.startswith("__") for j in jobs), jobs  # no anonymous asset-job runs
    for r in runs:
        tags = {t["key"]: t["value"] for t in r["tags"]}
        assert tags.get("unime/assets"), r
        if r["jobName"] in {"ingest_train", "ingest_eval", "mine"}:
            assert tags.get("dagster/partition"), r


@pytest.mark.slow
def test_mlflow_run_links_back_to_its_dagster_run(webserver, mlflow_server, materialized):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=materialized["env"]["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("unime-v2")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the classic tracking view
    assert "Dagster" in exp.tags["mlflow.note.content"]
    event, judge = _latest_entries(webserver["base"], JUDGE_SCORES)
    run = client.get_run(judge["mlflow_run_id"]["text"])
    link = run.data.tags["dagster.run_url"]
    assert link == f"{webserver['base']}/runs/{event['runId']}"
    assert link in run.data.tags["mlflow.note.content"]  # the run's description, shown on its page
    found = graphql(webserver["base"], "query ($id: ID!) { runOrError(runId: $id) { __typename ... on Run { jobName } } }",
                    {"id": link.rsplit("/", 1)[1]})["runOrError"]  # fmt: skip
    assert found == {"__typename": "Run", "jobName": "mine"}
    assert _fetch(link)[0] == 200
    for name in ("unime-v2-embedder", "unime-v2-reranker"):
        assert client.get_registered_model(name).description
        mv = client.get_model_version_by_alias(name, "candidate")
        assert "queries from" in mv.description and "judge scores from" in mv.description, mv.description
        assert mv.tags["dagster.run_url"].startswith(webserver["base"] + "/runs/")
    embedder = client.get_model_version_by_alias("unime-v2-embedder", "candidate")
    assert "**MMEB**: overall Precision@1" in embedder.description, embedder.description


@pytest.mark.slow
def test_screenshots_of_the_pages_an_operator_reads(webserver, mlflow_server, tmp_path):
    base = webserver["base"]
    profile = tmp_path / "chromium-profile"
    for asset in (JUDGE_SCORES, "mmeb_report"):
        _screenshot(f"{base}/assets/{asset}", f"asset-{asset.split('/')[0]}", profile, size="2200,2600")
    _screenshot(f"{base}/runs", "runs", profile, size="1600,1400")
    _, judge = _latest_entries(base, JUDGE_SCORES)
    link = judge["mlflow_run"]["url"]  # what the asset page links to: the run in MLflow's classic view
    assert link.startswith(mlflow_server) and link.endswith("?workflowType=machine_learning")
    _screenshot(link, "mlflow-run", profile, size="1600,1300")
