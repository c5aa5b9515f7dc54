"""The synthetic default: real MMEB formats, exact templates, labels that match the pixels, determinism."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from unime_assets.data.catalog import SYNTHETIC_EVAL, SYNTHETIC_TRAIN
from unime_assets.data.images import load_image, resolve_image_path
from unime_assets.data.mmeb import read_eval_subset, read_train_subset
from unime_assets.data.synthetic import (
    CANONICAL,
    CAPTION_PARAPHRASES,
    COLOURS,
    POSITIONS,
    SHAPES,
    SyntheticLayout,
    TruthIndex,
    corpus_texts,
    generate,
    generate_pretraining,
    relation,
)

N_TRAIN, N_EVAL, N_CAND, SIZE = 6, 4, 8, 56
TOK = "<|image_1|>"
COLOUR_ORDER = ["red", "green", "blue", "yellow", "purple", "orange", "white", "cyan"]
COUNTS = ["one", "two", "three", "four"]
IMG_TGT = f"{TOK}\nRepresent the given image.\n"
CROP_TGT = f"{TOK}\nRepresent the given cropped image of the object"
VQA = f"{TOK}\nRepresent the given image with the following question: "
C, S, P = "|".join(COLOUR_ORDER), "circle|square|triangle", "top left|top right|bottom left|bottom right"
CAPTION = rf"A ({C}) ({S}) in the ({P})\."
# Train captions may be paraphrased (the eval keeps the canonical template).
TRAIN_CAPTION = "|".join(
    [CAPTION] + [re.escape(t).replace(r"\{c\}", f"({C})").replace(r"\{s\}", f"({S})").replace(r"\{p\}", f"({P})")
                 for t in CAPTION_PARAPHRASES]
)  # fmt: skip

# Full-match patterns for queries (eval qry_text == train qry).
QRY = {
    "SynColor": re.escape(f"{TOK}\nRepresent the given image for classification\n"),
    "SynShape": re.escape(f"{TOK}\nIdentify the object shown in the image\n"),
    "SynHue": re.escape(f"{TOK}\nIdentify the color depicted in the image\n"),
    "SynVQA": re.escape(VQA) + rf"What color is the ({S})\?\n",
    "SynCount": re.escape(VQA + "How many shapes are in the image?\n"),
    "SynWhere": re.escape(VQA) + rf"Where is the ({C}) ({S})\?\n",
    "SynCaps_t2i": re.escape("Find me an everyday image that matches the given caption: ") + CAPTION + "\n",
    "SynCaps_i2t": re.escape(f"{TOK}\nFind an image caption describing the given everyday image.\n"),
    "SynSimilar": re.escape(f"{TOK}\nFind a day-to-day image that looks similar to the provided image.\n"),
    "SynGround": re.escape(f"{TOK}\nSelect the portion of the image that isolates the object labeled as ")
    + rf'"({C}) ({S})"\n',
    "SynRefer": re.escape(f"{TOK}\nSelect the portion of the image that follows the language expressions. ")
    + rf"the ({C}) one in the ({P})",
}
TEXT_UNIVERSE = {
    "SynColor": COLOUR_ORDER,
    "SynHue": COLOUR_ORDER,
    "SynVQA": COLOUR_ORDER,
    "SynShape": ["circle", "square", "triangle"],
    "SynCount": COUNTS,
    "SynWhere": ["top left", "top right", "bottom left", "bottom right"],
}
IMAGE_QUERY = {
    "SynColor",
    "SynShape",
    "SynHue",
    "SynVQA",
    "SynCount",
    "SynWhere",
    "SynCaps_i2t",
    "SynSimilar",
    "SynGround",
    "SynRefer",
}
# The MMEB on-disk schemas (mmeb.md §2), written out here independently of the generator.
_S, _LS = pa.string(), pa.list_(pa.string())
TRAIN_SCHEMA = pa.schema({"qry": _S, "qry_image_path": _S, "pos_text": _S, "pos_image_path": _S})
TRAIN_NEG_SCHEMA = pa.schema({**dict(zip(TRAIN_SCHEMA.names, TRAIN_SCHEMA.types, strict=True)),
                              "neg_text": _S, "neg_image_path": _S})  # fmt: skip
EVAL_SCHEMA = pa.schema({"qry_text": _S, "qry_img_path": _S, "tgt_text": _LS, "tgt_img_path": _LS})


@pytest.fixture(scope="module")
def syn(tmp_path_factory: pytest.TempPathFactory) -> SyntheticLayout:
    return generate(
        tmp_path_factory.mktemp("syn"), n_train=N_TRAIN, n_eval=N_EVAL, n_candidates=N_CAND, image_size=SIZE
    )


# ----------------------------------------------------------------------------- a tiny pixel "oracle"


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


def objects(img: Image.Image) -> list[tuple[str, str, int]]:
    """(colour, shape, quadrant) of each palette colour drawn in the image (one object per colour).

    Objects are solid palette colours and the background is grey noise, so exact-colour masks
    isolate them; the fill ratio of the bounding box tells the shape.
    """
    a = _arr(img)
    h, w = a.shape[:2]
    found = []
    for name, rgb in COLOURS.items():
        mask = np.all(a == np.array(rgb), axis=2)
        if mask.sum() < 12:
            continue
        ys, xs = np.nonzero(mask)
        fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
        shape = "square" if fill > 0.93 else "circle" if fill > 0.65 else "triangle"
        quad = 2 * int(ys.mean() >= h / 2) + int(xs.mean() >= w / 2)
        found.append((name, shape, quad))
    return found


def occupied_quadrants(img: Image.Image) -> int:
    a = _arr(img)
    palette = np.zeros(a.shape[:2], dtype=bool)
    for rgb in COLOURS.values():
        palette |= np.all(a == np.array(rgb), axis=2)
    h, w = palette.shape
    return sum(
        palette[r * h // 2 : (r + 1) * h // 2, c * w // 2 : (c + 1) * w // 2].mean() > 0.2
        for r in (0, 1)
        for c in (0, 1)
    )


def _train_img(syn: SyntheticLayout, rel: str) -> Image.Image:
    return load_image(resolve_image_path(syn.train_root, rel, fallbacks=False))


def _eval_img(syn: SyntheticLayout, rel: str) -> Image.Image:
    return load_image(resolve_image_path(syn.eval_image_root, rel, fallbacks=False))


# ----------------------------------------------------------------------------- layout and formats


def test_layout_matches_catalog(syn: SyntheticLayout, tmp_path_factory) -> None:
    root = syn.train_root.parent
    assert syn.train_root == root / "MMEB-train" and syn.eval_root == root / "MMEB-eval"
    assert syn.eval_image_root == root / "eval_images"
    assert syn.train_subsets == list(SYNTHETIC_TRAIN) and syn.eval_subsets == list(SYNTHETIC_EVAL)
    for s, info in SYNTHETIC_EVAL.items():
        assert [p.name for p in (syn.eval_root / s).iterdir()] == ["test-00000-of-00001.parquet"]
        if info.split == "IND":
            assert [p.name for p in (syn.train_root / s).iterdir()] == ["original-00000-of-00001.parquet"]
        else:
            assert not (syn.train_root / s).exists()
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["params"]["n_train"] == N_TRAIN and manifest["files"]["eval_parquet"] == len(
        SYNTHETIC_EVAL
    )


def test_parquet_schemas_are_mmeb(syn: SyntheticLayout) -> None:
    for s in syn.train_subsets:
        schema = pq.read_schema(syn.train_root / s / "original-00000-of-00001.parquet").remove_metadata()
        assert schema.equals(TRAIN_NEG_SCHEMA if s == "SynVQA" else TRAIN_SCHEMA), (s, schema)
        assert pq.read_metadata(syn.train_root / s / "original-00000-of-00001.parquet").num_rows == N_TRAIN
    for s in syn.eval_subsets:
        schema = pq.read_schema(syn.eval_root / s / "test-00000-of-00001.parquet").remove_metadata()
        assert [f.name for f in schema] == [f.name for f in EVAL_SCHEMA]
        assert [f.type for f in schema] == [f.type for f in EVAL_SCHEMA]
        assert schema.field("tgt_text").type.value_type == pa.string()  # not large_string / string_view
        assert pq.read_metadata(syn.eval_root / s / "test-00000-of-00001.parquet").num_rows == N_EVAL


def test_query_and_target_templates(syn: SyntheticLayout) -> None:
    for s in syn.eval_subsets:
        ev = read_eval_subset(syn.eval_root, s)
        for q, qi, tt, ti in ev.iter_rows():
            assert re.fullmatch(QRY[s], q), (s, q)
            assert (qi != "") == (s in IMAGE_QUERY), (s, qi)
            if s in ("SynCaps_t2i", "SynSimilar"):
                assert set(tt) == {IMG_TGT} and all(ti)
            elif s in ("SynGround", "SynRefer"):
                assert set(tt) == {CROP_TGT} and all(ti)
            else:
                assert set(ti) == {""}
    for s in syn.train_subsets:
        tr = read_train_subset(syn.train_root, s)
        for q in tr["qry"]:
            assert re.fullmatch(QRY[s], q), (s, q)
        if s == "SynCaps_t2i":
            assert set(tr["pos_text"]) == {IMG_TGT} and set(tr["qry_image_path"]) == {""}
        if s == "SynCaps_i2t":
            assert all(re.fullmatch(TRAIN_CAPTION, p) for p in tr["pos_text"])
        if s == "SynGround":
            assert set(tr["pos_text"]) == {CROP_TGT}


def test_candidates_gt_first_and_aligned(syn: SyntheticLayout) -> None:
    for s in syn.eval_subsets:
        for _, _, tt, ti in read_eval_subset(syn.eval_root, s).iter_rows():
            assert len(tt) == len(ti) > 1
            if s in TEXT_UNIVERSE:
                universe = TEXT_UNIVERSE[s]
                assert tt == [tt[0]] + [u for u in universe if u != tt[0]]  # GT, then catalogue order
            elif s == "SynCaps_i2t":
                assert len(tt) == N_CAND and len(set(tt)) == N_CAND
            else:
                assert len(ti) == N_CAND and len(set(ti)) == N_CAND


def test_all_paths_resolve_and_open_at_expected_size(syn: SyntheticLayout) -> None:
    for s in syn.train_subsets:
        tr = read_train_subset(syn.train_root, s)
        for col in ("qry_image_path", "pos_image_path"):
            for rel in tr[col]:
                if rel:
                    assert re.fullmatch(rf"images/{s}/Train/{s}_image_\d+[\w]*\.png", rel), rel
                    size = 2 * SIZE if (s == "SynGround" and col == "qry_image_path") else SIZE
                    assert _train_img(syn, rel).size == (size, size)
    for s in syn.eval_subsets:
        ev = read_eval_subset(syn.eval_root, s)
        for _, qi, _, ti in ev.iter_rows():
            for rel in [qi, *ti]:
                if rel:
                    assert rel.startswith(f"{s}/") and not rel.startswith("images/")
                    size = 2 * SIZE if (rel == qi and s in ("SynGround", "SynRefer")) else SIZE
                    assert _eval_img(syn, rel).size == (size, size)


def test_train_rows_unique_and_images_per_row(syn: SyntheticLayout) -> None:
    for s in syn.train_subsets:
        tr = read_train_subset(syn.train_root, s)
        assert tr.select("qry", "qry_image_path", "pos_text", "pos_image_path").is_unique().all()
        paths = [p for p in tr["qry_image_path"].to_list() + tr["pos_image_path"].to_list() if p]
        assert len(paths) == len(set(paths))


# ----------------------------------------------------------------------------- labels match the pixels


def test_classification_labels_match_pixels(syn: SyntheticLayout) -> None:
    for s, attr in (("SynColor", 0), ("SynShape", 1), ("SynHue", 0)):
        ev = read_eval_subset(syn.eval_root, s)
        rows = [(qi, tt[0]) for _, qi, tt, _ in ev.iter_rows()]
        if s in SYNTHETIC_TRAIN:
            tr = read_train_subset(syn.train_root, s)
            rows += [("train:" + qi, p) for qi, p in zip(tr["qry_image_path"], tr["pos_text"], strict=True)]
        for rel, label in rows:
            img = _train_img(syn, rel[6:]) if rel.startswith("train:") else _eval_img(syn, rel)
            (obj,) = objects(img)
            assert obj[attr] == CANONICAL[label], (s, rel, obj, label)  # train labels may be synonyms
            # big enough for 14 px patches: the object covers a large part of the canvas
            assert (np.all(_arr(img) == np.array(COLOURS[obj[0]]), axis=2)).mean() > 0.25


def test_vqa_labels_match_pixels(syn: SyntheticLayout) -> None:
    tr = read_train_subset(syn.train_root, "SynVQA")
    for q, qi, pos, _, neg, neg_i in tr.iter_rows():
        objs = objects(_train_img(syn, qi))
        assert len(objs) == 2 and objs[0][1] != objs[1][1] and objs[0][2] != objs[1][2]
        shape = re.search(r"the (\w+)\?", q).group(1)
        assert [c for c, sh, _ in objs if sh == shape] == [CANONICAL[pos]]
        assert neg != pos and neg in {c for c, _, _ in objs} and neg_i == ""
    for q, qi, tt, _ in read_eval_subset(syn.eval_root, "SynVQA").iter_rows():
        shape = re.search(r"the (\w+)\?", q).group(1)
        assert [c for c, sh, _ in objects(_eval_img(syn, qi)) if sh == shape] == [tt[0]]
    for _, qi, tt, _ in read_eval_subset(syn.eval_root, "SynCount").iter_rows():
        assert occupied_quadrants(_eval_img(syn, qi)) == COUNTS.index(tt[0]) + 1
    for q, qi, tt, _ in read_eval_subset(syn.eval_root, "SynWhere").iter_rows():
        colour, shape = re.search(r"Where is the (\w+) (\w+)\?", q).groups()
        assert objects(_eval_img(syn, qi)) == [(colour, shape, POSITIONS.index(tt[0]))]


def _caption(obj: tuple[str, str, int]) -> str:
    return f"A {obj[0]} {obj[1]} in the {POSITIONS[obj[2]]}."


def test_retrieval_labels_match_pixels(syn: SyntheticLayout) -> None:
    for q, _, _, ti in read_eval_subset(syn.eval_root, "SynCaps_t2i").iter_rows():
        cap = re.search(CAPTION, q).group(0)
        matches = [_caption(objects(_eval_img(syn, rel))[0]) == cap for rel in ti]
        assert matches == [True] + [False] * (len(ti) - 1)  # exactly one correct image, at [0]
    for _, qi, tt, _ in read_eval_subset(syn.eval_root, "SynCaps_i2t").iter_rows():
        assert _caption(objects(_eval_img(syn, qi))[0]) == tt[0]
        assert tt[0] not in tt[1:]
    for _, qi, _, ti in read_eval_subset(syn.eval_root, "SynSimilar").iter_rows():
        ((c, sh, quad),) = objects(_eval_img(syn, qi))
        ((gc, gsh, gquad),) = objects(_eval_img(syn, ti[0]))
        assert (gc, gsh) == (c, sh) and gquad != quad
        for rel in ti[1:]:
            ((oc, osh, _),) = objects(_eval_img(syn, rel))
            assert (oc, osh) != (c, sh)
    tr = read_train_subset(syn.train_root, "SynCaps_t2i")
    for q, _, _, pi in tr.iter_rows():
        assert _caption(objects(_train_img(syn, pi))[0]) == re.search(CAPTION, q).group(0)


def test_grounding_labels_match_pixels(syn: SyntheticLayout) -> None:
    for s in ("SynGround", "SynRefer"):
        for q, qi, _, ti in read_eval_subset(syn.eval_root, s).iter_rows():
            scene = objects(_eval_img(syn, qi))
            assert len(scene) == 3 and len({o[2] for o in scene}) == 3
            if s == "SynGround":
                colour, shape = re.search(r'labeled as "(\w+) (\w+)"', q).groups()
                (target,) = [o for o in scene if o[:2] == (colour, shape)]
            else:
                colour, pos = re.search(r"the (\w+) one in the (.+)$", q).groups()
                (target,) = [o for o in scene if o[0] == colour]
                assert POSITIONS[target[2]] == pos
            crops = [objects(_eval_img(syn, rel)) for rel in ti]
            assert [(c, sh) for c, sh, _ in crops[0]] == [target[:2]]  # the GT crop holds the named object
            assert {crops[k][0][:2] for k in (1, 2)} == {
                o[:2] for o in scene if o != target
            }  # same-scene crops
            for crop in crops[1:]:
                assert crop[0][0] != colour if s == "SynRefer" else crop[0][:2] != (colour, shape)
    for q, qi, _, pi in read_train_subset(syn.train_root, "SynGround").iter_rows():
        colour, shape = re.search(r'labeled as "(\w+) (\w+)"', q).groups()
        assert (colour, shape) in {o[:2] for o in objects(_train_img(syn, qi))}
        assert [o[:2] for o in objects(_train_img(syn, pi))] == [(colour, shape)]


# ----------------------------------------------------------------------------- determinism, idempotency


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_bytes(tmp_path: Path) -> None:
    a = _files(generate(tmp_path / "a", n_train=3, n_eval=2, seed=7).train_root.parent)
    b = _files(generate(tmp_path / "b", n_train=3, n_eval=2, seed=7).train_root.parent)
    assert a.keys() == b.keys() and a == b
    assert not any(".tmp" in k for k in a)  # no leftover atomic-write temporaries
    c = _files(generate(tmp_path / "c", n_train=3, n_eval=2, seed=8).train_root.parent)
    assert (
        c["MMEB-train/SynColor/original-00000-of-00001.parquet"]
        != a["MMEB-train/SynColor/original-00000-of-00001.parquet"]
    )


def test_train_and_eval_streams_differ(syn: SyntheticLayout) -> None:
    tr = read_train_subset(syn.train_root, "SynCaps_i2t")
    ev = read_eval_subset(syn.eval_root, "SynCaps_i2t")
    tr_img = _train_img(syn, tr["qry_image_path"][0]).tobytes()
    assert all(_eval_img(syn, qi).tobytes() != tr_img for qi in ev["qry_img_path"])


def test_idempotent_and_regenerates_on_change(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    layout = generate(out, n_train=2, n_eval=2)
    parquet = layout.train_root / "SynColor" / "original-00000-of-00001.parquet"
    stamp = (parquet.stat().st_mtime_ns, (out / "manifest.json").stat().st_mtime_ns)
    assert generate(out, n_train=2, n_eval=2) == layout
    assert (
        parquet.stat().st_mtime_ns,
        (out / "manifest.json").stat().st_mtime_ns,
    ) == stamp  # nothing rewritten
    assert (layout.eval_image_root / "SynColor" / "image_1.png").exists()
    generate(out, n_train=2, n_eval=1)  # other params: regenerate, without stale files
    assert not (layout.eval_image_root / "SynColor" / "image_1.png").exists()
    assert read_eval_subset(layout.eval_root, "SynColor").height == 1
    # a file lost after generation no longer matches the manifest's counts: regenerate
    (layout.eval_image_root / "SynColor" / "image_0.png").unlink()
    generate(out, n_train=2, n_eval=1)
    assert (layout.eval_image_root / "SynColor" / "image_0.png").exists()


def test_invalid_params(tmp_path: Path) -> None:
    for kw in ({"n_train": 0}, {"n_eval": 0}, {"n_candidates": 1}, {"image_size": 4}, {"seed": -1}):
        with pytest.raises(ValueError):
            generate(tmp_path / "x", **kw)


def test_few_eval_rows_still_fill_candidates(tmp_path: Path) -> None:
    layout = generate(tmp_path / "one", n_train=1, n_eval=1, n_candidates=10)
    for s in ("SynCaps_t2i", "SynCaps_i2t", "SynSimilar", "SynGround", "SynRefer"):
        (row,) = read_eval_subset(layout.eval_root, s).iter_rows()
        assert len(row[2]) == len(row[3]) == 10
        for rel in row[3]:
            if rel:
                resolve_image_path(layout.eval_image_root, rel, fallbacks=False)


def test_corpus_texts(syn: SyntheticLayout) -> None:
    texts = corpus_texts(syn)
    assert len(texts) == len(set(texts)) and "" not in texts
    for t in (*COLOUR_ORDER, *SHAPES, *COUNTS, *POSITIONS, IMG_TGT, CROP_TGT):
        assert t in texts, t
    assert f"{TOK}\nRepresent the given image for classification\n" in texts
    assert any(re.fullmatch(QRY["SynRefer"], t) for t in texts)


# ----------------------------------------------------------------------------- phenomena and ground truth


def test_truth_sidecar_labels_every_train_row(tmp_path: Path) -> None:
    layout = generate(tmp_path / "syn", n_train=40, n_eval=2, synonym_rate=0.5, paraphrase_rate=0.5)
    truth = TruthIndex.read(layout.truth_file)
    for s in layout.train_subsets:
        rows = read_train_subset(layout.train_root, s).select("qry", "qry_image_path", "pos_text", "pos_image_path")
        for q, qi, pt, pi in rows.iter_rows():
            assert truth.relation((q, qi, pt, pi), (pt, pi)) == "false_negative"  # the positive is correct
            assert not truth.is_false_negative((q, qi, pt, pi), (pt, pi))  # ... but not a false negative
    # synonyms of both colour tables and paraphrases are written
    texts = {t for (t, _) in truth.meaning}
    assert texts & {"scarlet", "emerald", "azure"} and texts & {"crimson", "jade", "cobalt"}
    assert any(v == "paraphrase" for v in truth.variant.values())
    counts = json.loads((tmp_path / "syn" / "manifest.json").read_text())["phenomena"]
    assert counts["SynColor"]["mean_false_negative"] > 0 and counts["SynColor"]["mean_false_negative_other_subset"] > 0
    assert counts["SynCaps_i2t"]["mean_hard"] > 0 and counts["SynGround"]["mean_easy"] > 0
    assert counts["SynColor"]["positives_synonym"] > 0 and counts["SynCaps_i2t"]["positives_paraphrase"] > 0


def test_relation_matrix_matches_relation(tmp_path: Path) -> None:
    layout = generate(tmp_path / "syn", n_train=8, n_eval=1)
    truth = TruthIndex.read(layout.train_root.parent)  # the data root finds the sidecar too
    queries, targets = list(truth.want), list(truth.meaning)
    m = truth.relation_matrix(queries, targets)
    names = ("false_negative", "hard", "same_type", "easy")
    for i, q in enumerate(queries):
        for j, t in enumerate(targets):
            expected = -1 if t == (q[2], q[3]) else names.index(truth.relation(q, t))
            assert m[i, j] == expected
    assert (truth.relation_matrix([("x", "", "y", "")], targets) == -1).all()  # unknown query: no relation


def test_relation_kinds() -> None:
    assert relation(["colour", "red"], ["colour", "red"]) == "false_negative"
    assert relation(["colour", "red"], ["colour", "blue"]) == "hard"
    assert relation(["scene", "red", "circle", "top left"], ["scene", "red", "square", "top right"]) == "same_type"
    assert relation(["colour", "red"], ["count", "two"]) == "easy"


def test_eval_unchanged_by_train_phenomena(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", n_train=5, n_eval=3, synonym_rate=0.0, paraphrase_rate=0.0)
    b = generate(tmp_path / "b", n_train=5, n_eval=3, synonym_rate=1.0, paraphrase_rate=1.0)
    assert _files(a.eval_root) == _files(b.eval_root) and _files(a.eval_image_root) == _files(b.eval_image_root)
    assert all(CANONICAL[t] != t for t in read_train_subset(b.train_root, "SynColor")["pos_text"])


def test_truth_file_lost_regenerates(tmp_path: Path) -> None:
    layout = generate(tmp_path / "syn", n_train=2, n_eval=1)
    layout.truth_file.unlink()
    generate(tmp_path / "syn", n_train=2, n_eval=1)
    assert layout.truth_file.is_file()


def test_pretraining_corpus(tmp_path: Path) -> None:
    f = generate_pretraining(tmp_path, n_images=30)
    assert _files(f.parent) == _files(generate_pretraining(tmp_path / "again", n_images=30).parent)
    rows = pq.read_table(f).to_pylist()
    assert len(rows) == 60 and {r["kind"] for r in rows} == {"describe", "vqa"}
    assert all(r["image_path"].startswith("images/pretrain_") and r["answer"] for r in rows)
    for r in rows:  # answers are about what is drawn
        objs = objects(load_image(resolve_image_path(f.parent, r["image_path"], fallbacks=False)))
        if r["question"] == "How many shapes are in the image?":
            assert COUNTS.index(r["answer"]) + 1 == len(objs)
        if r["kind"] == "describe":
            words = re.findall(r"\w+", r["answer"].lower())
            assert {CANONICAL.get(w) for w in words} >= {c for c, _, _ in objs}
