"""MMEB readers: real on-disk schema in, validated frames out; errors name file, row and field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unime_assets.data.errors import DataValidationError
from unime_assets.data.mmeb import (
    EVAL_COLUMNS,
    PROVENANCE_COLUMNS,
    TRAIN_COLUMNS,
    load_eval,
    load_train,
    pair_id,
    read_eval_subset,
    read_train_subset,
    strip_provenance,
)
from unime_assets.data.synthetic import generate

# The fixture writer of mmeb.md §6.3 (the real HF schemas).
EVAL = pa.schema(
    [
        ("qry_text", pa.string()),
        ("qry_img_path", pa.string()),
        ("tgt_text", pa.list_(pa.string())),
        ("tgt_img_path", pa.list_(pa.string())),
    ]
)
TRAIN6 = pa.schema(
    [
        (c, pa.string())
        for c in ["qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path"]
    ]
)
TRAIN4 = pa.schema([(c, pa.string()) for c in ["qry", "qry_image_path", "pos_text", "pos_image_path"]])


def _write(root: Path, subset: str, rows: list[dict], schema: pa.Schema, name: str) -> Path:
    d = root / subset
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{name}.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), p)
    return p


def write_eval(root: Path, subset: str, rows: list[dict], schema: pa.Schema = EVAL,
               name: str = "test-00000-of-00001") -> Path:  # fmt: skip
    return _write(root, subset, rows, schema, name)


def write_train(root: Path, subset: str, rows: list[dict], schema: pa.Schema = TRAIN4,
                name: str = "original-00000-of-00001") -> Path:  # fmt: skip
    return _write(root, subset, rows, schema, name)


def erow(q: str = "<|image_1|>\nq\n", qi: str = "S/i.png", tt=("a", "b"), ti=("", "")) -> dict:
    return {
        "qry_text": q,
        "qry_img_path": qi,
        "tgt_text": list(tt) if tt is not None else None,
        "tgt_img_path": list(ti) if ti is not None else None,
    }


def trow(q: str = "q\n", qi: str = "", p: str = "p", pi: str = "", **extra: str) -> dict:
    return {"qry": q, "qry_image_path": qi, "pos_text": p, "pos_image_path": pi, **extra}


@pytest.fixture(scope="module")
def syn(tmp_path_factory: pytest.TempPathFactory):
    return generate(tmp_path_factory.mktemp("syn"), n_train=6, n_eval=4)


# ----------------------------------------------------------------------------- reading the generator's output


def test_reads_generated_train(syn) -> None:
    for s in syn.train_subsets:
        df = read_train_subset(syn.train_root, s)
        expect = TRAIN_COLUMNS + (["neg_text", "neg_image_path"] if s == "SynVQA" else [])
        assert df.columns == expect
        assert all(dt == pl.String for dt in df.dtypes)
        assert df.height == 6
    vqa = read_train_subset(syn.train_root, "SynVQA")
    assert all(q.endswith("?\n") for q in vqa["qry"])  # the trailing \n survives the reader
    ground = read_train_subset(syn.train_root, "SynGround")
    assert set(ground["pos_text"]) == {"<|image_1|>\nRepresent the given cropped image of the object"}


def test_reads_generated_eval(syn) -> None:
    for s in syn.eval_subsets:
        df = read_eval_subset(syn.eval_root, s)
        assert df.columns == EVAL_COLUMNS
        assert df.dtypes == [pl.String, pl.String, pl.List(pl.String), pl.List(pl.String)]
        assert df.height == 4
    color = read_eval_subset(syn.eval_root, "SynColor")
    assert set(color["qry_text"]) == {"<|image_1|>\nRepresent the given image for classification\n"}


def test_load_train_and_eval_on_generated(syn) -> None:
    tr = load_train(syn.train_root, syn.train_subsets)
    assert tr.columns == ["pair_id", "subset", *TRAIN_COLUMNS]
    assert tr.height == 6 * len(syn.train_subsets)
    assert tr["subset"].to_list() == [s for s in syn.train_subsets for _ in range(6)]  # order kept
    assert tr["pair_id"].n_unique() == tr.height
    ev = load_eval(syn.eval_root, syn.eval_subsets)
    assert ev.columns == ["subset", "row", *EVAL_COLUMNS]
    assert ev["row"].to_list() == [0, 1, 2, 3] * len(syn.eval_subsets)
    assert ev["subset"].to_list() == [s for s in syn.eval_subsets for _ in range(4)]
    capped = load_train(syn.train_root, ["SynColor"], max_per_subset=2)
    assert capped.height == 2


# ----------------------------------------------------------------------------- hand-written files


def test_texts_kept_byte_for_byte_and_nulls_become_empty(tmp_path: Path) -> None:
    odd = "  <|image_1|>\nweird  spacing \n\n"
    write_train(
        tmp_path,
        "T",
        [
            trow(q=odd, p=" lead"),
            {"qry": "x\n", "qry_image_path": None, "pos_text": "y", "pos_image_path": None},
        ],
    )
    df = read_train_subset(tmp_path, "T")
    assert df["qry"].to_list() == [odd, "x\n"]
    assert df["pos_text"].to_list() == [" lead", "y"]
    assert df["qry_image_path"].to_list() == ["", ""]
    write_eval(
        tmp_path,
        "E",
        [
            {
                "qry_text": None,
                "qry_img_path": "E/i.png",
                "tgt_text": ["a\n", None],
                "tgt_img_path": ["", None],
            }
        ],
    )
    ev = read_eval_subset(tmp_path, "E")
    assert ev.row(0) == ("", "E/i.png", ["a\n", ""], ["", ""])


def test_train_neg_columns_optional(tmp_path: Path) -> None:
    write_train(tmp_path, "A", [trow(neg_text="n", neg_image_path="")], schema=TRAIN6)
    write_train(tmp_path, "C", [trow()])
    assert read_train_subset(tmp_path, "A").columns == TRAIN_COLUMNS + ["neg_text", "neg_image_path"]
    assert read_train_subset(tmp_path, "C").columns == TRAIN_COLUMNS
    # load_train output is the same for both
    assert load_train(tmp_path, ["A", "C"]).columns == ["pair_id", "subset", *TRAIN_COLUMNS]


def test_train_shards_sorted_concatenated_and_limited(tmp_path: Path) -> None:
    write_train(tmp_path, "T", [trow(q="b1"), trow(q="b2")], name="original-00001-of-00002")
    write_train(tmp_path, "T", [trow(q="a1"), trow(q="a2")], name="original-00000-of-00002")
    write_train(tmp_path, "T", [trow(q="other")], name="diverse_instruction-00000-of-00001")
    assert read_train_subset(tmp_path, "T")["qry"].to_list() == ["a1", "a2", "b1", "b2"]
    assert read_train_subset(tmp_path, "T", limit=3)["qry"].to_list() == ["a1", "a2", "b1"]
    assert read_train_subset(tmp_path, "T", limit=0).height == 0
    assert read_train_subset(tmp_path, "T", split="diverse_instruction")["qry"].to_list() == ["other"]


def test_train_missing_column_names_file_and_column(tmp_path: Path) -> None:
    schema = pa.schema([(c, pa.string()) for c in ["qry", "qry_image_path", "pos_text"]])
    p = write_train(tmp_path, "T", [{"qry": "q", "qry_image_path": "", "pos_text": "p"}], schema=schema)
    with pytest.raises(ValueError) as e:
        read_train_subset(tmp_path, "T")
    assert str(p) in str(e.value) and "pos_image_path" in str(e.value)


def test_no_files_names_the_glob(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"T/original-\*\.parquet"):
        read_train_subset(tmp_path, "T")
    with pytest.raises(FileNotFoundError, match=r"E/test-\*\.parquet"):
        read_eval_subset(tmp_path, "E")


def test_eval_length_mismatch_names_file_row_field(tmp_path: Path) -> None:
    p = write_eval(tmp_path, "E", [erow(), erow(tt=("a", "b", "c"), ti=("", ""))])
    with pytest.raises(ValueError) as e:
        read_eval_subset(tmp_path, "E")
    msg = str(e.value)
    assert str(p) in msg and "row 1" in msg and "tgt_img_path" in msg


def test_eval_missing_column_names_file_and_column(tmp_path: Path) -> None:
    schema = pa.schema([f for f in EVAL if f.name != "tgt_img_path"])
    p = write_eval(tmp_path, "E", [{"qry_text": "q", "qry_img_path": "", "tgt_text": ["a"]}], schema=schema)
    with pytest.raises(ValueError) as e:
        read_eval_subset(tmp_path, "E")
    assert str(p) in str(e.value) and "tgt_img_path" in str(e.value)


def test_eval_empty_query_names_row_and_field(tmp_path: Path) -> None:
    p = write_eval(tmp_path, "E", [erow(), erow(q="", qi="S/x.png"), erow(q="", qi="")])
    with pytest.raises(ValueError) as e:
        read_eval_subset(tmp_path, "E")
    msg = str(e.value)
    assert str(p) in msg and "row 2" in msg and "qry_text" in msg and "qry_img_path" in msg


def test_eval_empty_or_null_candidates(tmp_path: Path) -> None:
    write_eval(tmp_path, "E", [erow(tt=(), ti=())])
    with pytest.raises(ValueError, match=r"row 0.*tgt_text.*empty"):
        read_eval_subset(tmp_path, "E")
    write_eval(tmp_path, "N", [erow(), erow(ti=None)])
    with pytest.raises(ValueError, match=r"row 1.*tgt_img_path.*null"):
        read_eval_subset(tmp_path, "N")


def test_eval_wrong_type_rejected(tmp_path: Path) -> None:
    schema = pa.schema(
        [
            ("qry_text", pa.string()),
            ("qry_img_path", pa.string()),
            ("tgt_text", pa.string()),
            ("tgt_img_path", pa.list_(pa.string())),
        ]
    )
    p = write_eval(
        tmp_path,
        "E",
        [{"qry_text": "q", "qry_img_path": "", "tgt_text": "a", "tgt_img_path": [""]}],
        schema=schema,
    )
    with pytest.raises(ValueError) as e:
        read_eval_subset(tmp_path, "E")
    assert str(p) in str(e.value) and "tgt_text" in str(e.value)


def test_eval_accepts_hf_variants(tmp_path: Path) -> None:
    # HF files: `element` list field name, large types, a `huggingface` schema metadata key.
    schema = pa.schema(
        [
            ("qry_text", pa.large_string()),
            ("qry_img_path", pa.string()),
            ("tgt_text", pa.list_(pa.field("element", pa.string()))),
            ("tgt_img_path", pa.large_list(pa.large_string())),
        ],
        metadata={b"huggingface": b'{"info": {}}'},
    )
    write_eval(tmp_path, "E", [erow(), erow(q="t\n", qi="")], schema=schema)
    df = read_eval_subset(tmp_path, "E")
    assert df.dtypes == [pl.String, pl.String, pl.List(pl.String), pl.List(pl.String)]
    assert df["qry_text"].to_list() == ["<|image_1|>\nq\n", "t\n"]


def test_eval_shards_and_row_index(tmp_path: Path) -> None:
    write_eval(tmp_path, "E", [erow(q="c")], name="test-00001-of-00002")
    write_eval(tmp_path, "E", [erow(q="a"), erow(q="b")], name="test-00000-of-00002")
    write_eval(tmp_path, "F", [erow(q="z")])
    ev = load_eval(tmp_path, ["E", "F"])
    assert ev.select("subset", "row", "qry_text").rows() == [
        ("E", 0, "a"),
        ("E", 1, "b"),
        ("E", 2, "c"),
        ("F", 0, "z"),
    ]
    assert load_eval(tmp_path, []).columns == ["subset", "row", *EVAL_COLUMNS]


# ----------------------------------------------------------------------------- pair ids and load_train


def test_pair_id_stable_across_processes_and_pinned() -> None:
    args = ("SynColor", "<|image_1|>\nq\n", "images/a.png", "red", "")
    pid = pair_id(*args)
    assert len(pid) == 16 and int(pid, 16) >= 0
    code = f"from unime_assets.data.mmeb import pair_id; print(pair_id(*{args!r}))"
    for hashseed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": hashseed},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == pid
    # pinned: a changed hash would silently re-key every downstream artefact
    assert pid == "017f98d8d5255377"


def test_pair_id_distinct() -> None:
    base = ["S", "q", "qi", "p", "pi"]
    ids = {pair_id(*base)}
    for k in range(5):
        changed = list(base)
        changed[k] = changed[k] + "x"
        ids.add(pair_id(*changed))
    assert len(ids) == 6
    # moving text across a field boundary must change the id
    assert pair_id("S", "ab", "c", "", "") != pair_id("S", "a", "bc", "", "")
    assert pair_id("S", "q\n", "", "p", "") != pair_id("S", "q", "", "p", "")


def test_load_train_dedup_keeps_first_and_order(tmp_path: Path) -> None:
    write_train(tmp_path, "A", [trow(q="1"), trow(q="2"), trow(q="1"), trow(q="3")])
    write_train(tmp_path, "B", [trow(q="1")])  # same content, other subset: another pair
    df = load_train(tmp_path, ["A", "B"])
    assert df.select("subset", "qry").rows() == [("A", "1"), ("A", "2"), ("A", "3"), ("B", "1")]
    assert df["pair_id"].to_list()[0] == pair_id("A", "1", "", "p", "")
    assert df["pair_id"].n_unique() == 4
    assert load_train(tmp_path, []).columns == ["pair_id", "subset", *TRAIN_COLUMNS]


# ----------------------------------------------------------------------------- provenance, strict, dedup


def test_provenance_columns_name_file_and_row_per_shard(tmp_path: Path) -> None:
    f0 = write_train(tmp_path, "T", [trow(q="a"), trow(q="b")], name="original-00000-of-00002")
    f1 = write_train(tmp_path, "T", [trow(q="c")], name="original-00001-of-00002")
    df = read_train_subset(tmp_path, "T", provenance=True)
    assert df.columns == [*TRAIN_COLUMNS, *PROVENANCE_COLUMNS]
    assert df.select(PROVENANCE_COLUMNS).rows() == [(str(f0), 0), (str(f0), 1), (str(f1), 0)]
    assert df.schema["source_row"] == pl.Int64
    tr = load_train(tmp_path, ["T"], provenance=True)
    assert tr.columns == ["pair_id", "subset", *TRAIN_COLUMNS, *PROVENANCE_COLUMNS]
    assert strip_provenance(tr).equals(load_train(tmp_path, ["T"]))  # the contract without them
    assert load_train(tmp_path, [], provenance=True).columns == tr.columns
    e0 = write_eval(tmp_path, "E", [erow(q="x"), erow(q="y")])
    ev = load_eval(tmp_path, ["E"], provenance=True)
    assert ev.select("row", *PROVENANCE_COLUMNS).rows() == [(0, str(e0), 0), (1, str(e0), 1)]
    assert strip_provenance(ev).columns == ["subset", "row", *EVAL_COLUMNS]


def test_load_train_dedup_false_keeps_repeats(tmp_path: Path) -> None:
    write_train(tmp_path, "A", [trow(q="1"), trow(q="1"), trow(q="2")])
    assert load_train(tmp_path, ["A"]).height == 2
    df = load_train(tmp_path, ["A"], dedup=False, provenance=True)
    assert df["source_row"].to_list() == [0, 1, 2] and df["pair_id"].n_unique() == 2


def test_eval_non_strict_leaves_row_defects_to_validation(tmp_path: Path) -> None:
    write_eval(
        tmp_path, "E", [erow(), erow(q="", qi=""), erow(tt=None, ti=None), erow(tt=("a",), ti=("", ""))]
    )
    with pytest.raises(ValueError):
        read_eval_subset(tmp_path, "E")
    ev = read_eval_subset(tmp_path, "E", strict=False)
    assert ev.height == 4 and ev["tgt_text"][2].to_list() == [] and ev["tgt_img_path"][3].len() == 2
    # schema defects still fail: they are not row defects
    schema = pa.schema([f for f in EVAL if f.name != "tgt_img_path"])
    write_eval(tmp_path, "M", [{"qry_text": "q", "qry_img_path": "", "tgt_text": ["a"]}], schema=schema)
    with pytest.raises(DataValidationError):
        read_eval_subset(tmp_path, "M", strict=False)


def test_reader_errors_carry_file_row_field(tmp_path: Path) -> None:
    p = write_eval(tmp_path, "E", [erow(), erow(tt=("a", "b", "c"), ti=("", ""))])
    with pytest.raises(DataValidationError) as e:
        read_eval_subset(tmp_path, "E")
    assert (e.value.file, e.value.row, e.value.field) == (str(p), 1, "tgt_img_path")
