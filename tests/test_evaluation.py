"""MMEB V1 evaluation maths: Precision@1, aggregation (checked on paper numbers), listwise parsing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unime_assets.data.catalog import OFFICIAL_EVAL, SYNTHETIC_EVAL
from unime_assets.evaluation import (
    AGGREGATE_KEYS,
    aggregate,
    aggregate_mmeb,
    parse_listwise_answer,
    precision_at_1,
    rerank_order,
    row_predictions,
)

# VLM2Vec LLaVA-1.6 high-res, paper Table 6 (mmeb.md §4.2 column "P").
VLM2VEC_LLAVA_HR: dict[str, float] = {
    "ImageNet-1K": 74.5, "N24News": 80.3, "HatefulMemes": 67.9, "VOC2007": 91.5, "SUN397": 75.8,
    "Place365": 44.0, "ImageNet-A": 43.6, "ImageNet-R": 79.8, "ObjectNet": 39.6, "Country211": 14.7,
    "OK-VQA": 69.0, "A-OKVQA": 54.4, "DocVQA": 52.0, "InfographicsVQA": 30.7, "ChartQA": 34.8,
    "Visual7W": 49.8, "ScienceQA": 42.1, "VizWiz": 43.0, "GQA": 61.2, "TextVQA": 62.0,
    "VisDial": 80.9, "CIRR": 49.9, "VisualNews_t2i": 75.4, "VisualNews_i2t": 80.0, "MSCOCO_t2i": 75.7,
    "MSCOCO_i2t": 73.1, "NIGHTS": 65.5, "WebQA": 87.6, "FashionIQ": 16.2, "Wiki-SS-NQ": 60.2,
    "OVEN": 56.5, "EDIS": 87.8,
    "MSCOCO": 80.6, "RefCOCO": 88.7, "RefCOCO-Matching": 84.0, "Visual7W-Pointing": 90.9,
}  # fmt: skip


def test_aggregate_reproduces_paper_table6() -> None:
    agg = aggregate_mmeb(VLM2VEC_LLAVA_HR)
    assert tuple(agg) == AGGREGATE_KEYS
    expected = {
        "classification": 61.17, "vqa": 49.90, "retrieval": 67.40, "grounding": 86.05,
        "ind": 67.47, "ood": 57.14, "overall": 62.88,
    }  # fmt: skip
    for key, value in expected.items():
        assert agg[key] == pytest.approx(value, abs=0.01), key
    # Overall is the 36-dataset mean, not the mean of the four meta-task scores (66.1).
    meta_mean = np.mean([agg[m] for m in ("classification", "vqa", "retrieval", "grounding")])
    assert meta_mean == pytest.approx(66.13, abs=0.01)
    assert abs(agg["overall"] - meta_mean) > 3
    assert agg["overall"] == pytest.approx((20 * agg["ind"] + 16 * agg["ood"]) / 36)


def test_aggregate_mmeb_requires_all_36_unless_partial() -> None:
    partial = {k: v for k, v in VLM2VEC_LLAVA_HR.items() if k not in ("GQA", "EDIS")}
    with pytest.raises(ValueError, match="GQA") as err:
        aggregate_mmeb(partial)
    assert "EDIS" in str(err.value)
    agg = aggregate_mmeb(partial, allow_partial=True)
    assert agg["overall"] == pytest.approx(np.mean(list(partial.values())))
    # Only grounding datasets present: other groups are NaN.
    only_vg = aggregate_mmeb({"MSCOCO": 80.0, "RefCOCO": 90.0}, allow_partial=True)
    assert only_vg["grounding"] == pytest.approx(85.0)
    assert only_vg["ind"] == pytest.approx(80.0) and only_vg["ood"] == pytest.approx(90.0)
    assert all(math.isnan(only_vg[k]) for k in ("classification", "vqa", "retrieval"))


def test_aggregate_unknown_names_and_other_catalog() -> None:
    with pytest.raises(ValueError, match="NotADataset"):
        aggregate({"NotADataset": 1.0, "ImageNet-1K": 0.5}, OFFICIAL_EVAL)
    with pytest.raises(ValueError, match="SynColor"):
        aggregate_mmeb({"SynColor": 1.0}, allow_partial=True)
    agg = aggregate({"SynColor": 0.5, "SynHue": 1.0, "SynVQA": 0.0}, SYNTHETIC_EVAL)
    assert agg["classification"] == pytest.approx(0.75) and agg["vqa"] == 0.0
    assert agg["ind"] == pytest.approx(0.25) and agg["ood"] == 1.0
    assert agg["overall"] == pytest.approx(0.5) and math.isnan(agg["grounding"])
    assert all(math.isnan(v) for v in aggregate({}, SYNTHETIC_EVAL).values())


def test_precision_at_1_and_ties_go_to_gt() -> None:
    rows = [
        np.array([0.9, 0.1, 0.2]),  # hit
        np.array([0.5, 0.7]),  # miss
        np.array([0.4, 0.4, 0.1]),  # exact tie with the GT -> hit
        np.array([0.3]),  # single candidate -> hit
    ]
    assert precision_at_1(rows) == pytest.approx(0.75)
    assert precision_at_1([np.array([0.1, np.nan, 0.0])]) == 1.0  # a NaN candidate cannot win
    assert precision_at_1([np.array([np.nan, 0.1])]) == 0.0  # a NaN GT is a miss
    with pytest.raises(ValueError):
        precision_at_1([])
    with pytest.raises(ValueError):
        precision_at_1([np.array([])])


def test_row_predictions_cosine_and_duplicate_gt_tie() -> None:
    q = np.array([[3.0, 4.0], [1.0, 0.0]])
    rows = [
        np.array([[3.0, 4.0], [4.0, -3.0], [-6.0, -8.0]]),  # cos 1, 0, -1
        np.array([[0.0, 2.0], [5.0, 0.0], [5.0, 0.0]]),  # cos 0, 1, 1
    ]
    preds = row_predictions(q, rows)
    np.testing.assert_allclose(preds[0], [1.0, 0.0, -1.0], atol=1e-12)
    np.testing.assert_allclose(preds[1], [0.0, 1.0, 1.0], atol=1e-12)
    assert precision_at_1(preds) == 0.5
    # A GT duplicated among the candidates ties bit-exactly, and the tie goes to the GT.
    rng = np.random.default_rng(0)
    qe = rng.normal(size=(1, 64)).astype(np.float32)
    gt = rng.normal(size=64).astype(np.float32)
    cands = np.stack([gt, *rng.normal(size=(5, 64)).astype(np.float32), gt])
    scores = row_predictions(qe, [cands])[0]
    assert scores[0] == scores[-1]
    gt_best = qe[0] / np.linalg.norm(qe[0])  # the query itself as GT always wins
    assert precision_at_1(row_predictions(qe, [np.stack([gt_best, gt_best, gt])])) == 1.0
    with pytest.raises(ValueError):
        row_predictions(q, rows[:1])
    with pytest.raises(ValueError):
        row_predictions(q, [rows[0], np.zeros((2, 3))])


@pytest.mark.parametrize(
    ("text", "n", "expected"),
    [
        ("Ans: (3)", 10, 2),
        ("(12) x", 12, 11),
        ("(12) x", 10, None),  # out of range
        ("no number", 10, None),
        ("(0)", 10, None),
        ("Ans: (2) or maybe (5)", 10, 1),  # only the first match counts
        ("Ans: (11) then (2)", 10, None),  # first match out of range -> None, no fallback
        ("Ans: 3", 10, None),  # bare digits without parentheses
    ],
)
def test_parse_listwise_answer(text: str, n: int, expected: int | None) -> None:
    assert parse_listwise_answer(text, n) == expected


def test_rerank_order() -> None:
    embed = [7, 3, 9, 1]
    assert rerank_order(embed, None) == embed
    assert rerank_order(embed, 0) == embed
    assert rerank_order(embed, 2) == [9, 7, 3, 1]
    assert rerank_order(embed, 3) == [1, 7, 3, 9]
    assert rerank_order(embed, parse_listwise_answer("Ans: (2)", len(embed))) == [3, 7, 9, 1]
    with pytest.raises(ValueError):
        rerank_order(embed, 4)
