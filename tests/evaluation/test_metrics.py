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


# --- published numbers: the aggregate arithmetic reproduces what the papers print --------------------


def test_published_per_dataset_columns_reproduce_their_aggregates() -> None:
    from unime_assets.evaluation.published import PUBLISHED, published_for

    by_label = {p.label: p for p in PUBLISHED}
    # VLM2Vec V2-code re-evaluations (mmeb.md §4.1 rows "V2-code re-eval"): every aggregate to 0.05.
    for label, expected in {
        "VLM2Vec Qwen2-VL-2B": (58.6, 49.2, 65.0, 73.0, 64.8, 53.4, 59.7),
        "VLM2Vec Qwen2-VL-7B": (62.8, 56.5, 69.4, 81.9, 71.3, 57.9, 65.4),
        "VLM2Vec LLaVA-1.6 high-res": (61.2, 49.9, 67.4, 86.1, 67.5, 57.1, 62.9),
    }.items():
        agg = aggregate_mmeb(by_label[label].per_dataset)
        for key, value in zip(AGGREGATE_KEYS, expected, strict=True):
            assert agg[key] == pytest.approx(value, abs=0.051), (label, key)
    # UniME-V2 LLaVA-OV (Supp. Table 11): IND / OOD / overall as published in Table 1 (to OCR rounding).
    ov = by_label["UniME-V2 LLaVA-OV-7B"]
    agg = aggregate_mmeb(ov.per_dataset)
    for key in ("ind", "ood", "overall"):
        assert agg[key] == pytest.approx(ov.aggregates[key], abs=0.1), key
    assert agg["overall"] == pytest.approx((20 * agg["ind"] + 16 * agg["ood"]) / 36)
    # The published overall is the 36-dataset mean, not the mean of the four meta-task means.
    for p in PUBLISHED:
        if len(p.aggregates) == len(AGGREGATE_KEYS):
            a = p.aggregates
            assert (20 * a["ind"] + 16 * a["ood"]) / 36 == pytest.approx(a["overall"], abs=0.1), p.label
            meta = (10 * a["classification"] + 10 * a["vqa"] + 12 * a["retrieval"] + 4 * a["grounding"]) / 36
            assert meta == pytest.approx(a["overall"], abs=0.1), p.label
    assert published_for(["SynColor", "SynHue"]) == [] and published_for(["ImageNet-1K"]) == list(PUBLISHED)


# --- reranking order helpers ---------------------------------------------------------------------------


def test_top_k_order_is_stable_so_a_tied_gt_stays_first() -> None:
    from unime_assets.evaluation import top_k_order

    assert top_k_order(np.array([0.5, 0.9, 0.5, 0.1]), 3) == [1, 0, 2]
    assert top_k_order(np.array([0.7, 0.7, 0.7]), 2) == [0, 1]
    assert top_k_order(np.array([0.2, np.nan, 0.3]), 3) == [2, 0, 1]  # NaN last
    with pytest.raises(ValueError):
        top_k_order(np.array([1.0]), 0)


def test_pairwise_order_by_yes_probability_ties_keep_embedder_order() -> None:
    from unime_assets.evaluation import pairwise_order

    assert pairwise_order([4, 0, 7], [0.2, 0.9, 0.5]) == [0, 7, 4]
    assert pairwise_order([4, 0, 7], [0.5, 0.5, 0.5]) == [4, 0, 7]
    assert pairwise_order([4, 0, 7], [np.nan, 0.1, 0.1]) == [0, 7, 4]
    with pytest.raises(ValueError):
        pairwise_order([1, 2], [0.1])


# --- zero-shot metrics ---------------------------------------------------------------------------------


def _naive_recall(img: np.ndarray, txt: np.ndarray, owner: list[int], k: int) -> tuple[float, float]:
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    t2i = np.mean([owner[j] in np.argsort(-(img @ txt[j]), kind="stable")[:k] for j in range(len(txt))])
    i2t = np.mean(
        [any(owner[j] == i for j in np.argsort(-(txt @ img[i]), kind="stable")[:k]) for i in range(len(img))]
    )
    return float(t2i), float(i2t)


def test_retrieval_recall_matches_a_naive_reference_and_labels_directions() -> None:
    from unime_assets.evaluation import retrieval_recall

    rng = np.random.default_rng(0)
    img = rng.normal(size=(12, 8))
    owner = [i for i in range(12) for _ in range(3)]  # 3 captions per image
    txt = img[owner] + 1.5 * rng.normal(size=(36, 8))
    out = retrieval_recall(img, txt, owner, ks=(1, 3, 5), chunk=5)
    for k in (1, 3, 5):
        t2i, i2t = _naive_recall(img, txt, owner, k)
        assert out[f"t2i_r@{k}"] == pytest.approx(t2i) and out[f"i2t_r@{k}"] == pytest.approx(i2t)
    # Directions are not interchangeable: captions that all point at image 0 make t2i easy for them only.
    img2 = np.eye(3)
    txt2 = np.array([[1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0]])
    r = retrieval_recall(img2, txt2, [0, 1, 2], ks=(1,))
    assert r["t2i_r@1"] == pytest.approx(1 / 3)  # only caption 0 finds its image
    assert r["i2t_r@1"] == pytest.approx(
        1.0
    )  # ties go to the ground truth: every image has a GT caption on top
    with pytest.raises(ValueError):
        retrieval_recall(img2, txt2, [0, 0, 0])  # images 1 and 2 have no caption


def test_composition_accuracy_is_strict() -> None:
    from unime_assets.evaluation import composition_accuracy

    assert composition_accuracy([0.9, 0.5, 0.2], [0.1, 0.5, 0.3]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        composition_accuracy([], [])


# --- report rendering ------------------------------------------------------------------------------------


def test_report_table_and_markdown() -> None:
    from unime_assets.evaluation.published import published_for
    from unime_assets.evaluation.report import aggregate_markdown, per_dataset_markdown, report_table

    per_model = {
        "embedder": {"ImageNet-1K": 0.5, "GQA": 0.25, "MSCOCO": 1.0},
        "embedder + reranker (top-10 listwise)": {"ImageNet-1K": 0.75, "GQA": 0.25, "MSCOCO": 0.5},
    }
    table = report_table(per_model, OFFICIAL_EVAL)
    assert table.columns == ["subset", "meta_task", "split", "model", "precision_at_1"]
    assert table.height == 6 and set(table["split"]) == {"IND", "OOD"}
    pubs = published_for(list(per_model["embedder"]))
    md = per_dataset_markdown(per_model, OFFICIAL_EVAL, pubs)
    assert (
        "UniME-V2 LLaVA-OV-7B (published)" in md
        and "| ImageNet-1K | classification | IND | 50.0 | 75.0 | " in md
    )
    agg = aggregate_markdown(per_model, OFFICIAL_EVAL, pubs, n_configured=36)
    assert "| embedder | 50.0 | 25.0 | – | 100.0 | 75.0 | 25.0 | 58.3 | 3 of 36 |" in agg
    assert "UniME-V2 Qwen2-VL-2B (published) | 62.1 |" in agg
    # partial evaluation: the published per-dataset numbers averaged over the same 3 datasets
    assert "UniME-V2 LLaVA-OV-7B (published, same 3 datasets) | 78.8 | 69.5 | – | 78.2 |" in agg
    synth = per_dataset_markdown({"embedder": {"SynColor": 0.5}}, SYNTHETIC_EVAL, published_for(["SynColor"]))
    assert "published" not in synth


def test_top_ties_counts_rows_with_a_shared_top_score() -> None:
    from unime_assets.evaluation import top_ties

    rows = [
        np.array([0.9, 0.9, 0.1]),  # GT tied at the top
        np.array([0.1, 0.9, 0.9]),  # a tie at the top without the GT
        np.array([0.9, 0.5, 0.5]),  # a tie below the top does not count
        np.array([0.7, np.nan, 0.7]),  # NaN never ties; GT tied with candidate 2
        np.array([np.nan, np.nan]),  # nothing finite
    ]
    assert top_ties(rows) == (3, 2)
    assert top_ties([np.array([1.0])]) == (0, 0)
