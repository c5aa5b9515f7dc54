"""The official UniME-V2 judge-score JSON: reading, lossless writing, conversion to and from pipeline tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unime_assets.data import unime_scores as us
from unime_assets.data.candidates import build_candidate_table, candidate_key
from unime_assets.data.errors import DataValidationError
from unime_assets.data.mmeb import LOAD_TRAIN_COLUMNS, load_train, pair_id
from unime_assets.mining import mine_table

# The 50 real records of the official repo's data/example_data.json (MIT; see tests/fixtures/README.md).
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "unime_v2_example_scores.json"


@pytest.fixture(scope="module")
def fixture_path() -> Path:
    assert FIXTURE.is_file(), f"{FIXTURE} is part of the repository"
    return FIXTURE


@pytest.fixture(scope="module")
def official(fixture_path: Path) -> pl.DataFrame:
    return us.read(fixture_path)


@pytest.fixture(scope="module")
def tables(official: pl.DataFrame) -> us.PipelineTables:
    return us.to_pipeline_tables(official)


def record(**changes: Any) -> dict[str, Any]:
    """A valid record in the official shape (hand-written, so malformed-input tests need no fixture)."""
    rec: dict[str, Any] = {
        "query_text": "<|image_1|>\nRepresent the given image with the following question: Why?\n",
        "query_image": "images/OK-VQA/Train/OK-VQA_1.jpg",
        "pos_text": "because",
        "pos_image": "",
        "query_pos_scores": 0.9,
        "hard_negatives": [["no", ""], ["yes", ""]],
        "hard_negatives_scores": [0.25, 0.5],
    }
    rec.update(changes)
    return rec


def dump(path: Path, records: Any) -> Path:
    path.write_text(json.dumps(records, indent=4, ensure_ascii=False), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- reading and writing


def test_read_fixture_schema_and_values(official: pl.DataFrame) -> None:
    assert official.height == 50
    assert official.schema == pl.Schema(us.FIELDS)
    row = official.row(0, named=True)
    assert row["query_text"].startswith("<|image_1|>\nRepresent the given image with the following question")
    assert row["query_text"].endswith("shade?\n")  # trailing newline kept
    assert row["query_image"] == "images/A-OKVQA/Train/A-OKVQA_image_3179.jpg"
    assert row["query_pos_scores"] == 0.7215937972068787
    assert row["hard_negatives"][0] == ["prevent parking", ""]
    assert row["hard_negatives_scores"][0] == 0.44075605273246765
    assert set(official["hard_negatives"].list.len()) == {10}
    assert set(official["hard_negatives_scores"].list.len()) == {10}


def test_round_trip_is_lossless(fixture_path: Path, official: pl.DataFrame, tmp_path: Path) -> None:
    out = us.write(official, tmp_path / "rewritten.json")
    assert us.read(out).equals(official)
    original = json.loads(fixture_path.read_text(encoding="utf-8"))
    rewritten = json.loads(out.read_text(encoding="utf-8"))
    assert rewritten == original  # every float compares equal, every key and list element too
    assert out.read_bytes() == fixture_path.read_bytes()  # same layout as the release as well
    assert [p.name for p in tmp_path.iterdir()] == ["rewritten.json"]  # no temporary left behind


def test_write_ignores_extra_columns_and_accepts_int_scores(tmp_path: Path) -> None:
    src = dump(tmp_path / "in.json", [record(query_pos_scores=1, hard_negatives_scores=[0, 1])])
    df = us.read(src).with_columns(pl.lit("x").alias("note"))
    assert df["query_pos_scores"].to_list() == [1.0]
    out = us.write(df, tmp_path / "out.json")
    assert json.loads(out.read_text()) == json.loads(src.read_text())  # 1 == 1.0 after parsing


# ----------------------------------------------------------------------------- malformed input

MALFORMED = {
    "not_an_object": ([record(), ["query_text"]], 1, None, "JSON object"),
    "missing_field": (
        [record(), {k: v for k, v in record().items() if k != "pos_image"}],
        1,
        "pos_image",
        "missing",
    ),
    "unknown_field": ([record(subset="OK-VQA")], 0, "subset", "unknown field"),
    "null_string": ([record(), record(), record(query_image=None)], 2, "query_image", "must be a string"),
    "score_as_string": ([record(query_pos_scores="0.9")], 0, "query_pos_scores", "number"),
    "score_out_of_range": ([record(query_pos_scores=1.5)], 0, "query_pos_scores", "[0, 1]"),
    "score_bool": ([record(query_pos_scores=True)], 0, "query_pos_scores", "number"),
    "negatives_not_list": ([record(hard_negatives="no")], 0, "hard_negatives", "pairs"),
    "negative_not_pair": ([record(hard_negatives=[["no", ""], ["yes"]])], 0, "hard_negatives[1]", "pair"),
    "negative_path_not_str": (
        [record(hard_negatives=[["no", ""], ["yes", 3]])],
        0,
        "hard_negatives[1]",
        "pair",
    ),
    "neg_score_wrong_type": (
        [record(hard_negatives_scores=[0.2, None])],
        0,
        "hard_negatives_scores[1]",
        "number",
    ),
    "length_mismatch": (
        [record(), record(hard_negatives_scores=[0.1])],
        1,
        "hard_negatives_scores",
        "has 1 scores",
    ),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_record_names_file_record_field(kind: str, tmp_path: Path) -> None:
    records, index, field, words = MALFORMED[kind]
    src = dump(tmp_path / "scores.json", records)
    out = tmp_path / "out" / "scores.json"
    with pytest.raises(DataValidationError) as e:
        us.write(us.read(src), out)  # an import step: nothing may be written when reading fails
    msg = str(e.value)
    assert str(src) in msg and f"record {index}" in msg and words in msg
    assert (e.value.file, e.value.row) == (str(src), index)
    if field is not None:
        assert f"field {field!r}" in msg and e.value.field == field
    assert not out.parent.exists()


def test_non_finite_score_rejected(tmp_path: Path) -> None:
    src = tmp_path / "nan.json"
    src.write_text(json.dumps([record()]).replace('"query_pos_scores": 0.9', '"query_pos_scores": NaN'))
    with pytest.raises(DataValidationError, match=r"record 0: field 'query_pos_scores'.*nan"):
        us.read(src)


@pytest.mark.parametrize(
    "text, words",
    [("[{", "not valid JSON"), ('{"query_text": "q"}', "expected a JSON list")],
    ids=["syntax", "top"],
)
def test_malformed_file_names_file(text: str, words: str, tmp_path: Path) -> None:
    src = tmp_path / "bad.json"
    src.write_text(text)
    with pytest.raises(DataValidationError) as e:
        us.read(src)
    assert str(src) in str(e.value) and words in str(e.value)


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    src = tmp_path / "latin1.json"
    src.write_bytes(json.dumps([record(pos_text="caf\u00e9")], ensure_ascii=False).encode("latin-1"))
    with pytest.raises(DataValidationError, match=rf"{src}: not UTF-8 text"):
        us.read(src)


def test_records_that_cannot_train_are_named_before_training(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "root"
    (root / "images/OK-VQA/Train").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "images/OK-VQA/Train/OK-VQA_1.jpg")
    good = record()
    df = us.read(dump(tmp_path / "s.json", [good, record(query_text="another query")]))
    us.check_usable(df, "s.json", k_negatives=2, image_root=root)
    with pytest.raises(DataValidationError, match=r"s.json: record 0: field 'hard_negatives': has 2 candidates; "
                       r"training takes embedder.k_negatives = 3 \(2 record\(s\) have fewer\)"):  # fmt: skip
        us.check_usable(df, "s.json", k_negatives=3, image_root=root)
    negs = [["no", ""], ["yes", "images/OK-VQA/Train/missing.jpg"]]
    df = us.read(dump(tmp_path / "s.json", [good, record(query_text="q2", hard_negatives=negs)]))
    with pytest.raises(DataValidationError, match=r"s.json: record 1: field 'hard_negatives\[1\]': image "
                       r"'images/OK-VQA/Train/missing.jpg': missing_image"):  # fmt: skip
        us.check_usable(df, "s.json", k_negatives=2, image_root=root)
    both = record(query_text="q2", query_image="images/OK-VQA/Train/gone.jpg", hard_negatives=negs)
    df = us.read(dump(tmp_path / "s.json", [good, both]))
    with pytest.raises(DataValidationError, match=r"record 1: field 'query_image'"):  # the record's first bad field
        us.check_usable(df, "s.json", k_negatives=2, image_root=root)
    escape = record(query_text="q3", pos_image="../outside.jpg")
    df = us.read(dump(tmp_path / "s.json", [good, escape]))
    with pytest.raises(DataValidationError, match=r"record 1: field 'pos_image': image '../outside.jpg'"):
        us.check_usable(df, "s.json", k_negatives=2, image_root=root)
    us.check_usable(df, "s.json", k_negatives=2, image_root=root, check_images="none")


def test_write_checks_records_and_writes_nothing(tmp_path: Path) -> None:
    df = us.read(dump(tmp_path / "in.json", [record(), record()]))
    bad = df.with_columns(
        pl.when(pl.int_range(pl.len()) == 1).then(None).otherwise("query_text").alias("query_text")
    )
    out = tmp_path / "out.json"
    with pytest.raises(DataValidationError) as e:
        us.write(bad, out)
    assert str(out) in str(e.value) and "record 1" in str(e.value) and "'query_text'" in str(e.value)
    with pytest.raises(DataValidationError, match="hard_negatives_scores"):
        us.write(df.drop("hard_negatives_scores"), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.json"]  # no output, no temporary


# ----------------------------------------------------------------------------- official -> pipeline tables


def _mine_table_schema() -> pl.Schema:
    """The schema mining.mine_table really produces (so a change there fails this test)."""
    judge = pl.DataFrame({"pair_id": ["a"], "pos_score": [0.9], "cand_scores": [[0.1, 0.2, 0.95]]})
    pool = pl.DataFrame({"pair_id": ["a"], "cand_ids": [[3, 4, 5]], "pos_cand_id": [0]})
    return mine_table(judge, pool, k=2).schema


def test_to_pipeline_tables_contracts(official: pl.DataFrame, tables: us.PipelineTables) -> None:
    train, cands, mined, judge = tables.train, tables.candidates, tables.mined, tables.judge_scores
    assert train.columns == LOAD_TRAIN_COLUMNS and set(train.dtypes) == {pl.String}
    assert tables.n_duplicates == 0 and train.height == official.height
    assert train["subset"][0] == "A-OKVQA"
    # a text-to-image query (no query image) takes its subset from the positive's image
    t2i = train.filter(pl.col("qry_image_path") == "")
    assert t2i.height > 0
    assert all(p.split("/")[1] == s for s, p in t2i.select("subset", "pos_image_path").iter_rows())
    assert train["pair_id"].to_list() == [
        pair_id(*r) for r in train.select(LOAD_TRAIN_COLUMNS[1:]).iter_rows()
    ]
    assert train["pair_id"].n_unique() == train.height

    assert cands.schema == pl.Schema({"cand_id": pl.Int64, "cand_key": pl.String, "text": pl.String,
                                      "image_path": pl.String})  # fmt: skip
    assert cands["cand_id"].to_list() == list(range(cands.height))
    assert cands["cand_key"].to_list() == [
        candidate_key(t, p) for t, p in cands.select("text", "image_path").rows()
    ]
    assert cands["cand_key"].n_unique() == cands.height
    pool, _ = build_candidate_table(train)  # the positives come first, exactly as stage 1 numbers them
    assert cands.head(pool.height).equals(pool)

    assert mined.schema == _mine_table_schema()
    assert set(mined["strategy"]) == {"official_import"}
    assert mined["pair_id"].equals(train["pair_id"]) and judge["pair_id"].equals(train["pair_id"])
    assert mined["neg_scores"].to_list() == official["hard_negatives_scores"].to_list()
    rebuilt = [
        [[cands["text"][i], cands["image_path"][i]] for i in ids] for ids in mined["neg_cand_ids"].to_list()
    ]
    assert rebuilt == official["hard_negatives"].to_list()
    assert not mined["fallback"].any()
    assert mined["n_survivors"].null_count() == mined["n_filtered"].null_count() == mined.height

    assert judge.schema == pl.Schema(
        {"pair_id": pl.String, "pos_score": pl.Float64, "cand_scores": pl.List(pl.Float64)}
    )
    assert judge["pos_score"].to_list() == official["query_pos_scores"].to_list()
    assert judge["cand_scores"].to_list() == mined["neg_scores"].to_list()


def test_cyclic_repeats_keep_the_same_candidate(official: pl.DataFrame, tables: us.PipelineTables) -> None:
    # the release repeats too-few negatives cyclically (A, B, A, B, ...); ids must repeat the same way
    repeats = [
        i for i, negs in enumerate(official["hard_negatives"].to_list()) if len({tuple(n) for n in negs}) < 10
    ]
    assert repeats, "the fixture has cyclic repeats (paper digest §4)"
    for i in repeats:
        negs = [tuple(n) for n in official["hard_negatives"][i].to_list()]
        ids = tables.mined["neg_cand_ids"][i].to_list()
        assert [ids.index(x) for x in ids] == [negs.index(n) for n in negs]


def test_fallback_and_duplicates(official: pl.DataFrame) -> None:
    df = pl.concat([official.head(3), official.head(1)])
    df = df.with_columns(
        pl.when(pl.int_range(pl.len()) == 1)
        .then(pl.lit([1.0] * 10, dtype=pl.List(pl.Float64)))
        .otherwise(pl.col("hard_negatives_scores"))
        .alias("hard_negatives_scores")
    )
    t = us.to_pipeline_tables(df)
    assert t.n_duplicates == 1 and t.train.height == 3
    assert t.mined["fallback"].to_list() == [False, True, False]


def test_subset_from_column_default_or_error() -> None:
    df = pl.DataFrame([record(query_image="", pos_image=""), record()], schema=us.FIELDS)
    with pytest.raises(DataValidationError) as e:
        us.to_pipeline_tables(df, source="file.json")
    assert "file.json: record 0: field 'query_image'" in str(e.value)
    assert us.to_pipeline_tables(df, default_subset="X").train["subset"].to_list() == ["X", "OK-VQA"]
    named = df.with_columns(pl.Series("subset", ["A", None]))
    assert us.to_pipeline_tables(named).train["subset"].to_list() == ["A", "OK-VQA"]


def test_imported_pair_ids_match_load_train(
    official: pl.DataFrame, tables: us.PipelineTables, tmp_path: Path
) -> None:
    # the same pairs read from MMEB-train parquet files key-match the imported rows
    schema = pa.schema([(c, pa.string()) for c in ["qry", "qry_image_path", "pos_text", "pos_image_path"]])
    train = tables.train
    subsets = train["subset"].unique(maintain_order=True).to_list()
    for s in subsets:
        rows = train.filter(pl.col("subset") == s).select(schema.names).to_dicts()
        (tmp_path / s).mkdir()
        pq.write_table(
            pa.Table.from_pylist(rows, schema=schema), tmp_path / s / "original-00000-of-00001.parquet"
        )
    loaded = load_train(tmp_path, subsets)
    assert sorted(loaded["pair_id"]) == sorted(train["pair_id"])


def test_training_set_builds_from_import(official: pl.DataFrame, tables: us.PipelineTables) -> None:
    # the embedder's and reranker's input table, built by the unchanged training code
    from unime_assets.training.data import build_training_set, embedder_examples

    ts = build_training_set(tables.train, tables.candidates, tables.judge_scores, tables.mined)
    assert ts.height == official.height
    first = ts.filter(pl.col("pair_id") == tables.train["pair_id"][0]).row(0, named=True)
    assert first["neg_texts"] == [n[0] for n in official["hard_negatives"][0].to_list()]
    assert first["pos_score"] == official["query_pos_scores"][0]
    ex = embedder_examples(ts, k=8)
    assert len(ex) == official.height and len(ex[0].candidates) == 9


# ----------------------------------------------------------------------------- pipeline tables -> official


def test_from_pipeline_tables_round_trip(fixture_path: Path, official: pl.DataFrame, tables: us.PipelineTables,
                                         tmp_path: Path) -> None:  # fmt: skip
    back = us.from_pipeline_tables(tables.train, tables.candidates, tables.mined, tables.judge_scores)
    assert back.equals(official)
    out = us.write(back, tmp_path / "export.json")
    assert json.loads(out.read_text()) == json.loads(fixture_path.read_text())


def test_export_our_mined_negatives(tmp_path: Path) -> None:
    # our own stage-3 output (mine_table) exported in the official shape and read back
    train = pl.DataFrame(
        {
            "pair_id": ["p0", "p1"],
            "subset": ["S", "S"],
            "qry": ["q0\n", "q1\n"],
            "qry_image_path": ["images/S/Train/0.png", ""],
            "pos_text": ["a", "<|image_1|>\nRepresent the given image.\n"],
            "pos_image_path": ["", "images/S/Train/1.png"],
        }
    )
    candidates, pos_idx = build_candidate_table(train)
    extra = pl.DataFrame(
        {"cand_id": [2, 3], "cand_key": ["k2", "k3"], "text": ["b", "c"], "image_path": ["", ""]}
    )
    candidates = pl.concat([candidates, extra])
    pool = pl.DataFrame({"pair_id": ["p0", "p1"], "pos_cand_id": pos_idx, "cand_ids": [[1, 2, 3], [0, 2, 3]]})
    judge = pl.DataFrame(
        {"pair_id": ["p0", "p1"], "pos_score": [0.9, 0.8], "cand_scores": [[0.1, 0.2, 0.3], [0.5, 0.6, 0.95]]}
    )
    mined = mine_table(judge, pool, k=3, step=1)
    df = us.from_pipeline_tables(train.reverse(), candidates, mined, judge.reverse())  # joins, not positions
    assert df["query_text"].to_list() == ["q0\n", "q1\n"]
    assert df["hard_negatives"][0].to_list() == [["<|image_1|>\nRepresent the given image.\n", "images/S/Train/1.png"],
                                                 ["b", ""], ["c", ""]]  # fmt: skip
    assert df["hard_negatives"][1].to_list() == [["a", ""], ["b", ""], ["a", ""]]  # cyclic repeat kept
    assert np.allclose(df["hard_negatives_scores"][1].to_list(), [0.5, 0.6, 0.5])
    assert df["query_pos_scores"].to_list() == [0.9, 0.8]
    out = us.write(df, tmp_path / "ours.json")
    assert us.read(out).equals(df)
    with pytest.raises(ValueError, match=r"pair p0: neg_cand_ids \[2\] are not in the candidates table"):
        us.from_pipeline_tables(train, candidates.filter(pl.col("cand_id") != 2), mined, judge)
    with pytest.raises(ValueError, match="absent from judge_scores"):
        us.from_pipeline_tables(train, candidates, mined, judge.head(1))
