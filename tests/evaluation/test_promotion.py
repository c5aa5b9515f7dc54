"""Champion promotion: the pure decision (both ways, partial never, no champion yet) and the registry
helpers on a throwaway MLflow sqlite store."""

from __future__ import annotations

import json

import pytest

from unime_assets.evaluation.promotion import (
    SCORES_TAG,
    EvalRecord,
    alias_version,
    comparable_scores,
    decide_promotion,
    download_checkpoint,
    encode_scores,
    record_evaluation,
    set_champion,
)

REQUIRED = ["A", "B", "C"]


def test_promote_when_strictly_better_on_the_same_subsets():
    cand = EvalRecord("3", {"A": 0.6, "B": 0.5, "C": 0.7})
    champ = EvalRecord("2", {"A": 0.5, "B": 0.5, "C": 0.7, "Z": 0.0})  # extra subsets are ignored
    d = decide_promotion(cand, champ, REQUIRED)
    assert d.promote and d.champion_version == "2"
    assert d.candidate_score == pytest.approx(0.6) and d.champion_score == pytest.approx(1.7 / 3)
    assert d.subsets == ("A", "B", "C") and "beats" in d.reason


def test_keep_when_worse_or_tied():
    champ = EvalRecord("2", {"A": 0.6, "B": 0.5, "C": 0.7})
    worse = decide_promotion(EvalRecord("3", {"A": 0.6, "B": 0.4, "C": 0.7}), champ, REQUIRED)
    assert not worse.promote and "does not beat" in worse.reason
    tied = decide_promotion(EvalRecord("3", {"A": 0.7, "B": 0.5, "C": 0.6}), champ, REQUIRED)
    assert not tied.promote  # the same overall is not better
    small = decide_promotion(EvalRecord("3", {"A": 0.61, "B": 0.5, "C": 0.7}), champ, REQUIRED, min_gain=0.01)
    assert not small.promote


def test_overall_is_the_mean_over_datasets_not_meta_tasks():
    # One dataset much better, two slightly worse: the mean over datasets decides.
    champ = EvalRecord("1", {"A": 0.5, "B": 0.5, "C": 0.5})
    cand = EvalRecord("2", {"A": 0.8, "B": 0.4, "C": 0.4})
    assert decide_promotion(cand, champ, REQUIRED).promote


def test_partial_evaluation_never_promotes():
    cand = EvalRecord("3", {"A": 1.0, "B": 1.0})  # C not evaluated
    for champ in (None, EvalRecord("2", {"A": 0.0, "B": 0.0, "C": 0.0})):
        d = decide_promotion(cand, champ, REQUIRED)
        assert not d.promote and d.reason.startswith("partial evaluation") and "C" in d.reason
        assert d.candidate_score is None
    nan = decide_promotion(EvalRecord("3", {"A": 1.0, "B": 1.0, "C": float("nan")}), None, REQUIRED)
    assert not nan.promote


def test_no_champion_yet_promotes_and_same_version_is_a_no_op():
    cand = EvalRecord("1", {"A": 0.1, "B": 0.1, "C": 0.1})
    first = decide_promotion(cand, None, REQUIRED)
    assert first.promote and first.reason == "no champion yet" and first.champion_version is None
    same = decide_promotion(cand, EvalRecord("1", dict(cand.scores)), REQUIRED)
    assert not same.promote and "already" in same.reason
    incomparable = decide_promotion(cand, EvalRecord("0", {"A": 0.0}), REQUIRED)
    assert not incomparable.promote and "no comparable score" in incomparable.reason
    with pytest.raises(ValueError):
        decide_promotion(cand, None, [])


def test_scores_tag_only_compares_matching_fingerprints():
    tag = encode_scores({"A": 0.5, "B": 0.25}, {"A": "fa", "B": "fb"})
    assert comparable_scores(tag, {"A": "fa", "B": "other", "C": "fc"}) == {"A": 0.5}
    assert comparable_scores(None, {"A": "fa"}) == {} and comparable_scores("not json", {"A": "fa"}) == {}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("registry")
    src = root / "src" / "artifacts" / "checkpoint"
    src.mkdir(parents=True)
    (src / "config.json").write_text("{}")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    client.create_registered_model("emb")
    for _ in range(2):
        client.create_model_version("emb", source=str(root / "src"))
    return uri, root


def test_registry_alias_tags_and_download(registry):
    uri, root = registry
    assert alias_version(uri, "emb", "champion") is None
    assert alias_version(uri, "no-such-model", "champion") is None
    record_evaluation(uri, "emb", "1", {"A": 0.5}, {"A": "fa"}, extra={"mmeb.promotion": "promoted: first"})
    record_evaluation(uri, "emb", "1", {"B": 0.25}, {"B": "fb"})  # merged with the earlier subset
    set_champion(uri, "emb", "1")
    champ = alias_version(uri, "emb", "champion")
    assert str(champ.version) == "1" and champ.tags["mmeb.promotion"] == "promoted: first"
    assert json.loads(champ.tags[SCORES_TAG]) == {"A": [0.5, "fa"], "B": [0.25, "fb"]}
    assert comparable_scores(champ.tags[SCORES_TAG], {"A": "fa", "B": "fb"}) == {"A": 0.5, "B": 0.25}
    assert champ.tags["mmeb.overall"] == "25.00" and champ.tags["mmeb.subsets"] == "B"
    ckpt = download_checkpoint(uri, "emb", "2", root / "dl")
    assert (ckpt / "config.json").is_file() and ckpt.name == "checkpoint"
    assert download_checkpoint(uri, "emb", "2", root / "dl") == ckpt  # reused, not downloaded again
