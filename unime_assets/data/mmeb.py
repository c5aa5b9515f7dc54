"""Framework-free readers for the MMEB on-disk formats (MMEB-train and MMEB-eval parquet files).

Texts are final prompts whose whitespace is significant (the pooled token is often the trailing
"\\n"), so nothing here strips or normalises a string. Nulls become "" because MMEB uses "" for
"absent" (no image / no text). Every error names the file and, where it applies, the row and field.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

TRAIN_COLUMNS = ["qry", "qry_image_path", "pos_text", "pos_image_path"]
TRAIN_NEG_COLUMNS = ["neg_text", "neg_image_path"]
EVAL_COLUMNS = ["qry_text", "qry_img_path", "tgt_text", "tgt_img_path"]
EVAL_LIST_COLUMNS = ["tgt_text", "tgt_img_path"]

LOAD_TRAIN_COLUMNS = ["pair_id", "subset", *TRAIN_COLUMNS]
LOAD_EVAL_COLUMNS = ["subset", "row", *EVAL_COLUMNS]


def _is_str(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_str_list(t: pa.DataType) -> bool:
    is_list = pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t)
    return is_list and (_is_str(t.value_type) or pa.types.is_null(t.value_type))


def _glob(root: str | os.PathLike, subset: str, pattern: str) -> list[Path]:
    d = Path(root) / subset
    files = sorted(p for p in d.glob(pattern) if p.is_file())
    if not files:
        raise FileNotFoundError(f"no parquet files match {str(d / pattern)!r}")
    return files


def _check_columns(file: Path, schema: pa.Schema, required: Sequence[str], what: str) -> None:
    missing = [c for c in required if c not in schema.names]
    if missing:
        raise ValueError(f"{file}: {what} file is missing column(s) {missing}; it has {schema.names}")


def _check_str(file: Path, schema: pa.Schema, col: str) -> None:
    t = schema.field(col).type
    if not (_is_str(t) or pa.types.is_null(t)):
        raise ValueError(f"{file}: column {col!r} must be string, got {t}")


def _read_train_file(file: Path, keep_neg: bool, limit: int | None) -> pl.DataFrame:
    schema = pq.read_schema(file)
    _check_columns(file, schema, TRAIN_COLUMNS, "MMEB-train")
    has_neg = all(c in schema.names for c in TRAIN_NEG_COLUMNS)
    cols = TRAIN_COLUMNS + (TRAIN_NEG_COLUMNS if has_neg else [])
    for c in cols:
        _check_str(file, schema, c)
    table = pq.read_table(file, columns=cols)
    if limit is not None:
        table = table.slice(0, limit)
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    df = df.with_columns(pl.col(c).cast(pl.String).fill_null("") for c in cols)
    if keep_neg and not has_neg:
        # a shard without negatives next to shards with them: "" = absent, as in MMEB
        df = df.with_columns(pl.lit("", dtype=pl.String).alias(c) for c in TRAIN_NEG_COLUMNS)
    return df.select(TRAIN_COLUMNS + (TRAIN_NEG_COLUMNS if keep_neg else []))


def read_train_subset(
    root: str | os.PathLike, subset: str, split: str = "original", limit: int | None = None
) -> pl.DataFrame:
    """Read `<root>/<subset>/<split>-*.parquet` (MMEB-train; shards in sorted order, concatenated).

    Returns the columns `qry, qry_image_path, pos_text, pos_image_path` (all String, nulls -> ""),
    plus `neg_text, neg_image_path` when the subset has them (A-OKVQA, ChartQA). `limit` keeps the
    first rows only, like V1's `num_sample_per_subset`.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    files = _glob(root, subset, f"{split}-*.parquet")
    keep_neg = any(all(c in pq.read_schema(f).names for c in TRAIN_NEG_COLUMNS) for f in files)
    frames: list[pl.DataFrame] = []
    remaining = limit
    for f in files:
        if remaining == 0 and frames:  # the first shard is always read: it gives the schema
            break
        df = _read_train_file(f, keep_neg, remaining)
        frames.append(df)
        if remaining is not None:
            remaining -= df.height
    return pl.concat(frames, how="vertical")


def _first_bad(df: pl.DataFrame, mask: pl.Expr) -> tuple[int, int] | None:
    """(first row index, number of rows) where `mask` holds, or None."""
    bad = df.select(mask.fill_null(True).arg_true())
    if bad.height == 0:
        return None
    return int(bad.item(0, 0)), bad.height


def _read_eval_file(file: Path) -> pl.DataFrame:
    schema = pq.read_schema(file)
    _check_columns(file, schema, EVAL_COLUMNS, "MMEB-eval")
    for c in ("qry_text", "qry_img_path"):
        _check_str(file, schema, c)
    for c in EVAL_LIST_COLUMNS:
        t = schema.field(c).type
        if not _is_str_list(t):
            raise ValueError(f"{file}: column {c!r} must be list<string>, got {t}")
    df = pl.from_arrow(pq.read_table(file, columns=EVAL_COLUMNS))
    assert isinstance(df, pl.DataFrame)
    df = df.with_columns(
        *(pl.col(c).cast(pl.String).fill_null("") for c in ("qry_text", "qry_img_path")),
        *(pl.col(c).cast(pl.List(pl.String)) for c in EVAL_LIST_COLUMNS),
    )

    for c in EVAL_LIST_COLUMNS:
        hit = _first_bad(df, pl.col(c).is_null())
        if hit:
            raise ValueError(f"{file}: row {hit[0]}: field {c!r} is null ({hit[1]} row(s) affected)")
    n_text, n_img = pl.col("tgt_text").list.len(), pl.col("tgt_img_path").list.len()
    hit = _first_bad(df, n_text != n_img)
    if hit:
        i = hit[0]
        a, b = df["tgt_text"][i].len(), df["tgt_img_path"][i].len()
        raise ValueError(
            f"{file}: row {i}: field 'tgt_img_path' has {b} candidates but 'tgt_text' has {a} "
            f"({hit[1]} row(s) affected)"
        )
    hit = _first_bad(df, n_text == 0)
    if hit:
        raise ValueError(
            f"{file}: row {hit[0]}: field 'tgt_text' is an empty candidate list ({hit[1]} row(s))"
        )
    hit = _first_bad(df, (pl.col("qry_text") == "") & (pl.col("qry_img_path") == ""))
    if hit:
        raise ValueError(
            f"{file}: row {hit[0]}: empty query: field 'qry_text' and field 'qry_img_path' are both empty "
            f"({hit[1]} row(s))"
        )
    # null candidate entries mean "absent", like null scalars
    return df.with_columns(pl.col(c).list.eval(pl.element().fill_null("")) for c in EVAL_LIST_COLUMNS)


def read_eval_subset(root: str | os.PathLike, subset: str) -> pl.DataFrame:
    """Read and validate `<root>/<subset>/test-*.parquet` (MMEB-eval; [0] of each candidate list is GT).

    Returns `qry_text, qry_img_path` (String) and `tgt_text, tgt_img_path` (List[String]) with
    nulls -> "". Raises ValueError naming file, row and field for: a missing column, candidate lists
    of different lengths, an empty candidate list, a query with neither text nor image.
    """
    return pl.concat([_read_eval_file(f) for f in _glob(root, subset, "test-*.parquet")], how="vertical")


def pair_id(subset: str, qry: str, qry_image_path: str, pos_text: str, pos_image_path: str) -> str:
    """Stable 16-hex-char id of a (query, positive) pair; the same in every process and run.

    Each part is length-prefixed, so no choice of field contents can collide by shifting a separator.
    """
    h = hashlib.blake2b(digest_size=8, person=b"unime-pair-v1")
    for part in (subset, qry, qry_image_path, pos_text, pos_image_path):
        b = part.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def load_train(
    root: str | os.PathLike,
    subsets: Sequence[str],
    *,
    split: str = "original",
    max_per_subset: int | None = None,
) -> pl.DataFrame:
    """All train subsets concatenated: `pair_id, subset, qry, qry_image_path, pos_text, pos_image_path`.

    `max_per_subset` caps each subset to its first rows (before de-duplication, like V1). Rows with a
    pair_id seen before are dropped, keeping the first; order is otherwise preserved.
    """
    frames: list[pl.DataFrame] = []
    for subset in subsets:
        df = read_train_subset(root, subset, split=split, limit=max_per_subset).select(TRAIN_COLUMNS)
        ids = [pair_id(subset, *r) for r in df.iter_rows()]
        frames.append(
            df.with_columns(
                pl.Series("pair_id", ids, dtype=pl.String), pl.lit(subset, dtype=pl.String).alias("subset")
            ).select(LOAD_TRAIN_COLUMNS)
        )
    if not frames:
        return pl.DataFrame(schema={c: pl.String for c in LOAD_TRAIN_COLUMNS})
    return pl.concat(frames, how="vertical").unique(subset=["pair_id"], keep="first", maintain_order=True)


def load_eval(root: str | os.PathLike, subsets: Sequence[str]) -> pl.DataFrame:
    """All eval subsets concatenated: `subset, row, qry_text, qry_img_path, tgt_text, tgt_img_path`.

    `row` is the 0-based index of the row within its subset (across shards), in file order.
    """
    frames = [
        read_eval_subset(root, s)
        .with_row_index("row")
        .with_columns(pl.col("row").cast(pl.Int64), pl.lit(s, dtype=pl.String).alias("subset"))
        .select(LOAD_EVAL_COLUMNS)
        for s in subsets
    ]
    if not frames:
        schema = {"subset": pl.String, "row": pl.Int64, "qry_text": pl.String, "qry_img_path": pl.String}
        schema |= {c: pl.List(pl.String) for c in EVAL_LIST_COLUMNS}
        return pl.DataFrame(schema=schema)
    return pl.concat(frames, how="vertical")
