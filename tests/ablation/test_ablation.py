"""The ablation package: variants as settings overrides (shared rows run once), statistics over seeds
(mean ± std, the paired difference with its t-interval), the report's tables and ablation.json."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from unime_assets.ablation import (
    ablation_variants,
    mean_std,
    paired_difference,
    summary_rows,
    table_markdown,
    variant_names,
    variant_settings,
    write_ablation_json,
)
from unime_assets.config import with_overrides


def test_variants_change_one_factor_and_share_the_recipe_row(settings):
    v = ablation_variants(settings)  # the test profile: k 2, τ 0.02, unime_v2 mining, one judge
    assert list(v)[:3] == ["infonce_inbatch", "infonce_mined", "unime_v2"]
    assert {"k4", "tau0.01", "tau0.05", "mining:topk_perc_pos", "mining:random"} <= set(v)
    # the profile's own k, τ and rule are the `unime_v2` run, shown in each of their tables
    assert v["unime_v2"].rows == {"table4": v["unime_v2"].rows["table4"], "table6": "k = 2", "table10": "τ = 0.02",
                                  "mining": "unime_v2"}  # fmt: skip
    assert not any(name.startswith("judge:") for name in v)  # one judge: no Table 5
    for name, expect in (("infonce_inbatch", {"loss": "infonce_inbatch", "k_negatives": 2, "temperature": 0.02}),
                         ("k4", {"loss": "judge_kl", "k_negatives": 4, "temperature": 0.02}),
                         ("tau0.05", {"loss": "judge_kl", "k_negatives": 2, "temperature": 0.05})):  # fmt: skip
        e = variant_settings(settings, name, 7).embedder
        assert {k: getattr(e, k) for k in expect} == expect and e.seed == 7
        # every other setting is the profile's: same budget, same base
        assert (e.steps, e.batch_size, e.lr) == (settings.embedder.steps, settings.embedder.batch_size, settings.embedder.lr)
    m = variant_settings(settings, "mining:random", 3)
    assert m.mining.strategy == "random" and m.mining.seed == 3 and m.embedder.loss == "judge_kl"


def test_judge_variants_when_the_profile_has_several_judges(settings):
    two = with_overrides(settings, {"judges": [{"name": "qwen25vl", "path": settings.judges[0].path},
                                               {"name": "internvl3", "path": settings.judges[0].path}]})  # fmt: skip
    v = ablation_variants(two)
    assert {"judge:internvl3", "judge:ensemble"} <= set(v) and "judge:qwen25vl" not in v  # the default is unime_v2
    assert v["unime_v2"].rows["table5"] == "qwen25vl"
    assert variant_settings(two, "judge:ensemble", 1).mining_judge == "ensemble"


def test_a_variant_that_is_not_a_valid_profile_fails_naming_it(settings):
    bad = with_overrides(settings, {"ablation": {"k_values": [8]}})  # k 8 > mining.n_negatives 4
    with pytest.raises(ValueError, match="ablation variant 'k8'.*k_negatives"):
        variant_names(bad)
    with pytest.raises(ValueError, match="unknown"):
        variant_names(with_overrides(settings, {"ablation": {"variants": ["nope"]}}))


def test_mean_std_and_the_paired_t_interval():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0) and mean_std([5.0]) == (5.0, None)
    base = {1: 50.0, 2: 52.0, 3: 51.0}
    var = {1: 51.0, 2: 54.0, 3: 54.0, 4: 99.0}  # differences 1, 2, 3; seed 4 has no pair
    d = paired_difference(var, base)
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)  # sd of (1, 2, 3) is 1
    assert d.seeds == (1, 2, 3) and d.mean == pytest.approx(2.0)
    assert (d.low, d.high) == (pytest.approx(2.0 - half), pytest.approx(2.0 + half))
    assert half == pytest.approx(2.4842, abs=1e-4)
    assert paired_difference({1: 3.0}, {1: 1.0}).low is None  # one seed: no interval
    assert paired_difference({1: 3.0}, {2: 1.0}) is None


def _results():
    agg = lambda o: {"overall": o, "ind": o + 1, "ood": o - 1}  # noqa: E731
    return {"infonce_inbatch": {1: agg(48.0), 2: agg(49.0), 3: agg(47.0)},
            "unime_v2": {1: agg(37.0), 2: agg(38.0), 3: agg(36.0)},
            "k4": {1: agg(30.0), 2: agg(31.0)}}  # fmt: skip


def test_summary_rows_tables_and_ablation_json(settings, tmp_path):
    rows = summary_rows(_results(), "infonce_inbatch")
    assert [r["variant"] for r in rows] == ["infonce_inbatch", "unime_v2", "k4"]
    inbatch, unime, k4 = rows
    assert inbatch["seeds"] == [1, 2, 3] and inbatch["overall"] == [48.0, 49.0, 47.0]
    assert inbatch["mean"] == 48.0 and inbatch["std"] == 1.0 and inbatch["delta_vs_baseline"] is None
    assert unime["delta_vs_baseline"]["mean"] == pytest.approx(-11.0) and unime["delta_vs_baseline"]["ci95"] is not None
    assert np.isclose(unime["delta_vs_baseline"]["ci95"][0], -11.0) and k4["delta_vs_baseline"]["seeds"] == [1, 2]
    tables = table_markdown(rows, ablation_variants(settings), "infonce_inbatch")
    assert set(tables) == {"table4", "table6", "table10", "mining"}  # tau / mining variants not run: recipe row only
    assert "`unime_v2`" in tables["table6"] and "`k4`" in tables["table6"] and "-11.00 [" in tables["table4"]
    assert "| 37.00, 38.00, 36.00 | 37.00 ± 1.00 |" in tables["table4"]
    path = write_ablation_json(rows, tmp_path / "a" / "ablation.json", baseline="infonce_inbatch",
                               tables={"table4": ["infonce_inbatch", "unime_v2"]})  # fmt: skip
    data = json.loads(path.read_text())
    for r in data["rows"]:  # the schema the issue names
        assert {"variant", "seeds", "overall", "mean", "std"} <= set(r) and len(r["overall"]) == len(r["seeds"])
        assert r["mean"] == pytest.approx(np.mean(r["overall"]))
    assert not list(path.parent.glob("*.tmp*"))  # written atomically
