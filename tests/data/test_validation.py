"""Validation of MMEB tables read from real-format parquet files: one test per defect, quarantine, writing."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import unime_assets.data.validation as v
from unime_assets.data.errors import DataValidationError
from unime_assets.data.mmeb import LOAD_EVAL_COLUMNS, LOAD_TRAIN_COLUMNS, load_eval, load_train

TRAIN = pa.schema([(c, pa.string()) for c in ["qry", "qry_image_path", "pos_text", "pos_image_path"]])
EVAL = pa.schema(
    [
        ("qry_text", pa.string()),
        ("qry_img_path", pa.string()),
        ("tgt_text", pa.list_(pa.string())),
        ("tgt_img_path", pa.list_(pa.string())),
    ]
)
IMG = "images/S/Train/ok.png"  # created by the `root` fixture
EIMG = "E/ok.png"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for rel in (IMG, EIMG):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (200, 10, 10)).save(tmp_path / rel)
    return tmp_path


def write(root: Path, subset: str, rows: list[dict], schema: pa.Schema, name: str) -> Path:
    (root / subset).mkdir(parents=True, exist_ok=True)
    p = root / subset / f"{name}.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), p)
    return p


def slot(text: str, image: str) -> str:
    """The text as MMEB writes it: with the `<|image_1|>` slot its image needs (blank text: image only)."""
    return text if not image or not text.strip() or v.PLACEHOLDER in text else f"{v.PLACEHOLDER}\n{text}"


def trow(q: str = "<|image_1|>\nq\n", qi: str = IMG, p: str = "a", pi: str = "") -> dict:
    return {"qry": slot(q, qi), "qry_image_path": qi, "pos_text": slot(p, pi), "pos_image_path": pi}


def erow(q: str = "<|image_1|>\nq\n", qi: str = EIMG, tt=("a", "b", "c"), ti=("", "", "")) -> dict:
    if tt is not None and ti is not None and len(tt) == len(ti):
        tt = [slot(t, i) for t, i in zip(tt, ti, strict=True)]
    return {"qry_text": slot(q, qi), "qry_img_path": qi, "tgt_text": tt if tt is None else list(tt),
            "tgt_img_path": ti if ti is None else list(ti)}  # fmt: skip


def train_with(root: Path, bad: dict, *, at: int = 2) -> tuple[Path, pl.DataFrame]:
    """Subset S: a first shard of 2 good rows, a second shard with `bad` at row `at` (others good)."""
    write(root, "S", [trow(q="g0\n"), trow(q="g1\n")], TRAIN, "original-00000-of-00002")
    rows = [trow(q=f"h{i}\n") for i in range(4)]
    rows[at] = bad
    p = write(root, "S", rows, TRAIN, "original-00001-of-00002")
    return p, load_train(root, ["S"], provenance=True, dedup=False)


def eval_with(root: Path, bad: dict, *, at: int = 1) -> tuple[Path, pl.DataFrame]:
    rows = [erow(q=f"e{i}\n") for i in range(3)]
    rows[at] = bad
    p = write(root, "E", rows, EVAL, "test-00000-of-00001")
    return p, load_eval(root, ["E"], strict=False, provenance=True)


def assert_fails(run, file: Path, row: int, field: str, reason: str) -> DataValidationError:
    """policy='fail' raises naming file, row and field; the same call with 'quarantine' sets aside that row."""
    with pytest.raises(DataValidationError) as e:
        run("fail")
    msg = str(e.value)
    assert str(file) in msg and f"row {row}:" in msg and f"field {field!r}" in msg and f"[{reason}]" in msg
    assert (e.value.file, e.value.row, e.value.field) == (str(file), row, field)
    assert "1 row(s) in total" in msg
    res = run("quarantine")
    assert res.quarantine.select("file", "row", "field", "reason").row(0) == (str(file), row, field, reason)
    assert res.counts[reason] >= 1 and res.counts["quarantined"] == 1
    assert res.counts["clean"] == res.clean.height == res.counts["rows"] - 1
    return e.value


# ----------------------------------------------------------------------------- train, one defect each


@pytest.mark.parametrize(
    "bad, field, reason",
    [
        (trow(q="", qi=""), "qry,qry_image_path", "empty_query"),
        (trow(q=" \n", qi=""), "qry,qry_image_path", "empty_query"),  # whitespace-only text is no text
        (trow(p="", pi=""), "pos_text,pos_image_path", "empty_positive"),
        (trow(qi="images/S/Train/gone.png"), "qry_image_path", "missing_image"),
        (trow(pi="images/S/Train/gone.png"), "pos_image_path", "missing_image"),
        (trow(qi="../outside.png"), "qry_image_path", "image_outside_root"),
        (trow(qi="/etc/hostname"), "qry_image_path", "image_outside_root"),
    ],
    ids=[
        "empty_query",
        "blank_query",
        "empty_positive",
        "missing_qry_image",
        "missing_pos_image",
        "dotdot",
        "abs",
    ],
)
def test_train_defect(root: Path, bad: dict, field: str, reason: str) -> None:
    file, df = train_with(root, bad)
    assert_fails(lambda policy: v.validate_train(df, root, policy=policy), file, 2, field, reason)


def test_train_image_only_or_text_only_items_are_fine(root: Path) -> None:
    rows = [trow(q="", qi=IMG), trow(q="t2i\n", qi="", p="", pi=IMG), trow(q="t\n", qi="", p="a", pi="")]
    write(root, "S", rows, TRAIN, "original-00000-of-00001")
    res = v.validate_train(load_train(root, ["S"], provenance=True), root, check_images="open")
    assert res.counts["findings"] == 0 and res.clean.height == 3


def test_train_duplicate_across_shards_names_both(root: Path) -> None:
    file, df = train_with(root, trow(q="g1\n"), at=3)  # repeats row 1 of the first shard
    err = assert_fails(
        lambda policy: v.validate_train(df, root, policy=policy),
        file,
        3,
        "qry,qry_image_path,pos_text,pos_image_path",
        "duplicate",
    )
    first = str(root / "S" / "original-00000-of-00002.parquet")
    assert f"as row 1 of {first}" in str(err)
    # the same pair in another subset is another pair, not a duplicate
    write(root, "T", [trow(q="g1\n")], TRAIN, "original-00000-of-00001")
    both = load_train(root, ["S", "T"], provenance=True, dedup=False)
    assert v.validate_train(both, root, policy="quarantine").counts["duplicate"] == 1


def test_train_unreadable_image_only_with_open(root: Path) -> None:
    (root / "images/S/Train/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    file, df = train_with(root, trow(pi="images/S/Train/broken.png"))
    assert v.validate_train(df, root, check_images="exists").counts["findings"] == 0  # cheap check: it exists
    err = assert_fails(
        lambda policy: v.validate_train(df, root, policy=policy, check_images="open"),
        file,
        2,
        "pos_image_path",
        "unreadable_image",
    )
    assert "broken.png" in str(err)


def test_truncated_jpeg_is_unreadable(root: Path) -> None:
    full = root / "images/S/Train/full.jpg"
    Image.effect_noise((512, 512), 60).convert("RGB").save(full, quality=95)
    data = full.read_bytes()
    (root / "images/S/Train/cut.jpg").write_bytes(data[: len(data) // 2])  # the header survives: it opens
    write(
        root,
        "S",
        [trow(qi="images/S/Train/full.jpg"), trow(qi="images/S/Train/cut.jpg")],
        TRAIN,
        "original-0",
    )
    res = v.validate_train(
        load_train(root, ["S"], provenance=True), root, policy="quarantine", check_images="open"
    )
    assert res.quarantine["row"].to_list() == [1] and res.quarantine["reason"].to_list() == [
        "unreadable_image"
    ]


def test_train_missing_column_and_wrong_type(root: Path) -> None:
    file, df = train_with(root, trow())
    for policy in ("fail", "quarantine"):  # a table without a column cannot be split row by row
        with pytest.raises(DataValidationError) as e:
            v.validate_train(df.drop("pos_image_path"), root, policy=policy)
        assert (
            str(file) in str(e.value)
            and "pos_image_path" in str(e.value)
            and e.value.field == "pos_image_path"
        )
    with pytest.raises(DataValidationError, match="field 'qry' must be String"):
        v.validate_train(df.with_columns(pl.lit(1).alias("qry")), root)
    # the reader already names the file and column of a file that lacks one
    write(root, "M", [{"qry": "q", "qry_image_path": ""}], pa.schema([("qry", pa.string()), ("qry_image_path",
                                                                      pa.string())]), "original-0")  # fmt: skip
    with pytest.raises(DataValidationError) as e:
        load_train(root, ["M"], provenance=True)
    assert (
        str(root / "M" / "original-0.parquet") in str(e.value) and e.value.field == "pos_text,pos_image_path"
    )


def test_train_quarantine_returns_clean_rows_and_counts(root: Path) -> None:
    write(
        root, "S", [trow(q="a\n"), trow(q="", qi=""), trow(q="c\n", qi="x/../../up.png")], TRAIN, "original-0"
    )
    rows = [
        trow(q="d\n", pi="images/S/Train/gone.png"),
        trow(q="a\n"),
        trow(q="f\n"),
        trow(q="", qi="", p="", pi=""),
    ]
    f1 = write(root, "S", rows, TRAIN, "original-1")
    df = load_train(root, ["S"], provenance=True, dedup=False)
    res = v.validate_train(df, root, policy="quarantine")
    assert res.clean.columns == LOAD_TRAIN_COLUMNS  # provenance stripped: the mmeb_train contract
    assert res.clean["qry"].to_list() == [slot("a\n", IMG), slot("f\n", IMG)]
    assert res.counts == {
        "rows": 7, "clean": 2, "quarantined": 5, "findings": 6, "empty_query": 2, "empty_positive": 1,
        "duplicate": 1, "invalid_utf8": 0, "text_too_long": 0, "placeholder_mismatch": 0, "missing_image": 1,
        "image_outside_root": 1, "unreadable_image": 0,
    }  # fmt: skip
    q = res.quarantine
    assert q.columns == list(v.FINDINGS_SCHEMA) and q.schema == pl.Schema(v.FINDINGS_SCHEMA)
    in_f1 = q.filter(pl.col("file") == str(f1)).sort("row", "field")
    assert in_f1.select("row", "reason").rows() == [
        (0, "missing_image"), (1, "duplicate"), (3, "empty_positive"), (3, "empty_query")
    ]  # fmt: skip
    assert set(q["subset"]) == {"S"}
    kept = v.validate_train(df, root, policy="quarantine", keep_provenance=True).clean
    assert kept["source_row"].to_list() == [0, 2] and kept["source_file"][1] == str(f1)


def test_without_provenance_rows_are_table_positions(root: Path) -> None:
    _, df = train_with(root, trow(q="", qi=""))
    plain = df.drop("source_file", "source_row")
    with pytest.raises(DataValidationError, match=r"<table>: row 4: field 'qry,qry_image_path'"):
        v.validate_train(plain, root)


def test_each_image_is_checked_once(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = v.resolve_image_path

    def counting(r, rel, **kw):
        calls.append(rel)
        return real(r, rel, **kw)

    monkeypatch.setattr(v, "resolve_image_path", counting)
    gone = "images/S/Train/gone.png"  # a missing file always takes the full resolution
    write(root, "S", [trow(q=f"{i}\n", pi=gone if i % 2 else IMG) for i in range(200)], TRAIN, "original-0")
    res = v.validate_train(load_train(root, ["S"], provenance=True), root, policy="quarantine")
    assert calls == [gone] and res.counts["missing_image"] == 100
    calls.clear()
    v.validate_train(load_train(root, ["S"], provenance=True), root, policy="quarantine", check_images="none")
    assert calls == []


def test_image_check_agrees_with_resolve_image_path(tmp_path: Path) -> None:
    # the cheap common case of the image check must give resolve_image_path's answer in every case
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "images/S/Train").mkdir(parents=True)
    (root / "S/Train").mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (2, 2)).save(root / "images/S/Train/a.png")
    Image.new("RGB", (2, 2)).save(root / "S/Train/only_without_prefix.png")
    Image.new("RGB", (2, 2)).save(outside / "x.png")
    (root / "images/S/Train/link_in.png").symlink_to(root / "images/S/Train/a.png")
    (root / "images/S/Train/link_out.png").symlink_to(outside / "x.png")
    (root / "images/Out").symlink_to(outside, target_is_directory=True)
    rels = {
        "images/S/Train/a.png": "",
        "images/S/Train/../Train/a.png": "",
        "S/Train/a.png": "",  # found through the images/ fallback
        "images/S/Train/only_without_prefix.png": "",  # found without the images/ prefix
        "images/S/Train/link_in.png": "",
        "images/S/Train/link_out.png": "image_outside_root",
        "images/Out/x.png": "image_outside_root",
        "images/S/Train/": "missing_image",
        "images/S/Train/nope.png": "missing_image",
        "../outside/x.png": "image_outside_root",
        str(root / "images/S/Train/a.png"): "image_outside_root",  # absolute
    }
    df = pl.DataFrame([trow(q=f"{i}\n", qi=rel) for i, rel in enumerate(rels)])
    res = v.validate_train(df, root, policy="quarantine")
    bad = dict(res.quarantine.select("index", "reason").iter_rows())
    assert {rel: bad.get(i, "") for i, rel in enumerate(rels)} == rels


# ----------------------------------------------------------------------------- eval, one defect each


@pytest.mark.parametrize(
    "bad, field, reason",
    [
        (erow(q="", qi=""), "qry_text,qry_img_path", "empty_query"),
        (erow(tt=(), ti=()), "tgt_text", "no_candidates"),
        (erow(tt=None, ti=None), "tgt_text", "no_candidates"),
        (erow(tt=("a", "b", "c"), ti=("", "")), "tgt_img_path", "length_mismatch"),
        (erow(tt=("", "b", "c")), "tgt_text[0],tgt_img_path[0]", "empty_ground_truth"),
        (erow(tt=("a", "b", "a")), "tgt_text[2],tgt_img_path[2]", "duplicate_ground_truth"),
        (erow(tt=("a", " ", "c")), "tgt_text[1],tgt_img_path[1]", "empty_candidate"),
        (erow(qi="E/gone.png"), "qry_img_path", "missing_image"),
        (
            erow(tt=("<|image_1|>\n", "x", "y"), ti=(EIMG, "", "E/gone.png")),
            "tgt_img_path[2]",
            "missing_image",
        ),
        (erow(ti=("", "../../x.png", "")), "tgt_img_path[1]", "image_outside_root"),
    ],
    ids=[
        "empty_query",
        "empty_list",
        "null_list",
        "mismatch",
        "empty_gt",
        "dup_gt",
        "empty_cand",
        "qry_img",
        "cand_img",
        "escape",
    ],  # fmt: skip
)
def test_eval_defect(root: Path, bad: dict, field: str, reason: str) -> None:
    file, df = eval_with(root, bad)
    assert_fails(lambda policy: v.validate_eval(df, root, policy=policy), file, 1, field, reason)


def test_eval_duplicate_row_and_same_gt_other_query(root: Path) -> None:
    file, df = eval_with(root, erow(q="e0\n"), at=2)
    assert_fails(
        lambda policy: v.validate_eval(df, root, policy=policy),
        file,
        2,
        "qry_text,qry_img_path,tgt_text[0],tgt_img_path[0]",
        "duplicate",
    )
    # classification rows share the whole label list: not duplicates while the queries differ
    _, df = eval_with(root, erow(q="e2\n"), at=2)
    assert v.validate_eval(df, root).counts["findings"] == 0


def test_eval_quarantine_keeps_contract_and_counts(root: Path) -> None:
    rows = [erow(q="ok\n"), erow(tt=("a", "a"), ti=("", "")), erow(q="", qi=""), erow(q="ok2\n", qi="")]
    write(root, "E", rows, EVAL, "test-00000-of-00001")
    res = v.validate_eval(load_eval(root, ["E"], strict=False, provenance=True), root, policy="quarantine")
    assert res.clean.columns == LOAD_EVAL_COLUMNS
    assert res.clean["row"].to_list() == [0, 3]  # the subset row index is kept for the report
    assert (res.counts["duplicate_ground_truth"], res.counts["empty_query"], res.counts["quarantined"]) == (
        1,
        1,
        2,
    )


def test_eval_missing_column(root: Path) -> None:
    file, df = eval_with(root, erow())
    with pytest.raises(DataValidationError) as e:
        v.validate_eval(df.drop("tgt_img_path"), root, policy="quarantine")
    assert str(file) in str(e.value) and e.value.field == "tgt_img_path"


# ----------------------------------------------------------------------------- writing: nothing half-written


def test_write_validated_writes_both_or_neither(root: Path, tmp_path: Path) -> None:
    file, df = train_with(root, trow(q="", qi=""))
    res = v.validate_train(df, root, policy="quarantine")
    out, quar = tmp_path / "out" / "train.parquet", tmp_path / "out" / "quarantine.parquet"
    v.write_validated(res, out, quar)
    assert pl.read_parquet(out).equals(res.clean) and pl.read_parquet(quar).equals(res.quarantine)

    # a failure while writing the second file leaves neither new file; the previous ones stay intact
    before = out.read_bytes()
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder is needed")
    fresh = v.validate_train(df.head(2), root, policy="quarantine")
    with pytest.raises(OSError):
        v.write_validated(fresh, out, blocker / "quarantine.parquet")
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "quarantine.parquet",
        "train.parquet",
    ]  # no temporaries

    # quarantined rows without a quarantine file would vanish unrecorded: refused, nothing written
    other = tmp_path / "other" / "train.parquet"
    with pytest.raises(ValueError, match="no quarantine_path"):
        v.write_validated(res, other)
    assert not other.exists()


def test_failed_validation_writes_nothing(root: Path, tmp_path: Path) -> None:
    _, df = train_with(root, trow(qi="images/S/Train/gone.png"))
    out = tmp_path / "out" / "train.parquet"

    def materialize() -> None:  # how a caller chains them: validation first, then the write
        v.write_validated(v.validate_train(df, root, policy="fail"), out, out.with_name("q.parquet"))

    with pytest.raises(DataValidationError):
        materialize()
    assert not out.parent.exists()
