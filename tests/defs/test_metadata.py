"""Metadata helpers: rounding, native tables with described columns, column descriptions for every
table asset's columns, MLflow descriptions."""

from __future__ import annotations

import math

import dagster as dg
import numpy as np
import pytest

from unime_assets.defs.descriptions import MMEB_MARKER, version_description, with_mmeb_overall
from unime_assets.defs.metadata import COLUMNS, column_schema, readable, rounded, rows_table, table


@pytest.mark.parametrize(("value", "expected"), [(0.7012875000000001, 0.7013), (27.50123, 27.5), (0.000123456, 0.0001235),
                                                 (98765.4321, 98765.0), (0.0, 0.0), (-3.14159, -3.142)])  # fmt: skip
def test_rounded_to_four_significant_digits(value, expected):
    assert rounded(value) == expected


def test_readable_rounds_every_float_and_keeps_the_rest():
    meta = readable({"auc": np.float32(0.95312345), "loss": 9.58912, "n": np.int64(3), "ok": True, "s": "x",
                     "nan": float("nan"), "piped": dg.MetadataValue.float(3.168275833129883)})  # fmt: skip
    assert meta["auc"] == dg.MetadataValue.float(0.9531) and meta["loss"] == dg.MetadataValue.float(9.589)
    assert meta["n"] == 3 and type(meta["n"]) is int and meta["ok"] is True and meta["s"] == "x"
    assert math.isnan(meta["nan"].value) and meta["piped"] == dg.MetadataValue.float(3.168)


def test_tables_have_schemas_with_descriptions_and_numeric_cells():
    t = table([("SynColor", 12, 0.123456)], [("subset", "string", "the subset"), ("queries", "int", "rows"),
                                            ("fallback", "float", "fraction")])  # fmt: skip
    assert t.records[0].data == {"subset": "SynColor", "queries": 12, "fallback": 0.123}
    assert [c.description for c in t.schema.columns] == ["the subset", "rows", "fraction"]
    r = rows_table(["model", "overall", "datasets"], [["embedder", "25.2", "3 of 11"], ["paper (published)", "–", "36"]],
                   {"model": "which", "*": "P@1 (%)"})  # fmt: skip
    assert [c.type for c in r.schema.columns] == ["string", "float", "string"]
    assert r.records[0].data == {"model": "embedder", "overall": 25.2, "datasets": "3 of 11"}
    assert r.records[1].data["overall"] is None
    assert [c.description for c in r.schema.columns] == ["which", "P@1 (%)", "P@1 (%)"]


def test_every_column_the_pipeline_writes_is_described():
    from unime_assets.data.unime_scores import MINED_SCHEMA
    from unime_assets.evaluation.report import REPORT_SCHEMA

    # the ablation's tables: ablation_run (one row per subset) and ablation_report (one row per variant)
    ablation = ["variant", "seed", "subset", "meta_task", "split", "precision_at_1", "seeds", "mean", "std",
                "delta_vs_baseline"]  # fmt: skip
    for name in [*REPORT_SCHEMA, *MINED_SCHEMA, *ablation]:
        assert COLUMNS.get(name), name
    schema = column_schema("training_set", {"pos_score": "Float64", "unknown_column": "String"})
    assert schema.columns[0].description.startswith("judge score") and schema.columns[1].description == ""


def test_version_description_says_data_judge_and_is_updated_with_the_mmeb_overall():
    text = version_description(asset="embedder_checkpoint", run_url="http://d/runs/abcdef123", source="mined",
                               queries=24, subsets=["SynColor", "SynCaps_t2i"], strategy="unime_v2",
                               judge="/m/judge", base="/m/base")  # fmt: skip
    assert "24 queries from 2 MMEB-train subset(s) (SynColor, SynCaps_t2i)" in text and "`/m/judge`" in text
    assert "[abcdef12](http://d/runs/abcdef123)" in text and f"{MMEB_MARKER}: not evaluated yet" in text
    once = with_mmeb_overall(text, 25.24, 11, True, "http://d/runs/r1")
    twice = with_mmeb_overall(once, 30.0, 3, False, "http://d/runs/r2")
    assert once.count(MMEB_MARKER) == twice.count(MMEB_MARKER) == 1
    assert "overall Precision@1 25.2 % over 11" in once
    assert "30.0 % over 3 eval subset(s) (partial evaluation)" in twice and "24 queries" in twice


def test_a_stages_wall_time_counts_side_by_side_runs_once():
    from unime_assets.defs.summary import _covered_seconds

    assert _covered_seconds([(0.0, 10.0), (10.5, 20.0)]) == pytest.approx(19.5)  # one after the other
    assert _covered_seconds([(0.0, 10.0), (2.0, 12.0), (12.0, 15.0)]) == pytest.approx(15.0)  # side by side
    assert _covered_seconds([(5.0, 6.0), (0.0, 10.0)]) == pytest.approx(10.0)  # one inside another
    assert _covered_seconds([]) == 0.0
