"""Framework-free readers for the MMEB on-disk formats (MMEB-train and MMEB-eval parquet files).

Texts are final prompts whose whitespace is significant (the pooled token is often the trailing
"\\n"), so nothing here strips or normalises a string. Nulls become "" because MMEB uses "" for
"absent" (no image / no text). Every error (DataValidationError, a ValueError) names the file and,
where it applies, the row and field.

Provenance: with `provenance=True` every reader adds `source_file` (String, the parquet path) and
`source_row` (Int64, 0-based row inside that file) so `unime_assets.data.validation` can point at the
exact row of a finding. They are off by default, so the asset contracts (mmeb.md, design.md) hold;
`strip_provenance` drops them after validation.

Invalid UTF-8 in a string column (which polars cannot even load: it panics) is found by pyarrow's
full validation. Without provenance it is an error naming file, row and field; with provenance the
bad cells are decoded with U+FFFD replacements and an `invalid_utf8` column (only present when some
row has one: the row's fields, comma-separated, "" elsewhere) marks the rows for validation.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from unime_assets.data.errors import DataValidationError

TRAIN_COLUMNS = ["qry", "qry_image_path", "pos_text", "pos_image_path"]
TRAIN_NEG_COLUMNS = ["neg_text", "neg_image_path"]
EVAL_COLUMNS = ["qry_text", "qry_img_path", "tgt_text", "tgt_img_path"]
EVAL_LIST_COLUMNS = ["tgt_text", "tgt_img_path"]

LOAD_TRAIN_COLUMNS = ["pair_id", "subset", *TRAIN_COLUMNS]
LOAD_EVAL_COLUMNS = ["subset", "row", *EVAL_COLUMNS]
PROVENANCE_COLUMNS = ["source_file", "source_row"]
PROVENANCE_SCHEMA = {"source_file": pl.String, "source_row": pl.Int64}
UTF8_COLUMN = "invalid_utf8"  # with provenance, only when a row of the table has invalid UTF-8


def strip_provenance(df: pl.DataFrame) -> pl.DataFrame:
    """`df` without the provenance columns (a no-op when it has none)."""
    return df.drop([*PROVENANCE_COLUMNS, UTF8_COLUMN], strict=False)


def _with_provenance(df: pl.DataFrame, file: Path, bad_utf8: dict[int, list[str]]) -> pl.DataFrame:
    df = df.with_columns(
        pl.lit(str(file), dtype=pl.String).alias("source_file"),
        pl.int_range(pl.len(), dtype=pl.Int64).alias("source_row"),
    )
    if bad_utf8:
        marks = [",".join(bad_utf8.get(i, [])) for i in range(df.height)]
        df = df.with_columns(pl.Series(UTF8_COLUMN, marks, dtype=pl.String))
    return df


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Vertical concat; the `invalid_utf8` marks of some files are "" for the rows of the others."""
    if not any(UTF8_COLUMN in f.columns for f in frames):
        return pl.concat(frames, how="vertical")
    frames = [f if UTF8_COLUMN in f.columns else f.with_columns(pl.lit("").alias(UTF8_COLUMN)) for f in frames]
    return pl.concat(frames, how="vertical")


def _decoded(value):
    """(valid, value as str): bytes or a list of bytes, invalid sequences replaced by U+FFFD."""
    if value is None:
        return True, None
    if isinstance(value, list):
        parts = [_decoded(v) for v in value]
        return all(ok for ok, _ in parts), [v for _, v in parts]
    try:
        return True, value.decode("utf-8")
    except UnicodeDecodeError:
        return False, value.decode("utf-8", errors="replace")


def _as_binary(t: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(t):
        return pa.large_binary()
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _as_binary(t.value_type)
        return pa.list_(inner) if pa.types.is_list(t) else pa.large_list(inner)
    return pa.binary()


def _check_utf8(file: Path, table: pa.Table, mark: bool) -> tuple[pa.Table, dict[int, list[str]]]:
    """Rows with invalid UTF-8 per field; `mark=False` raises naming the first (file, row, field)."""
    bad: dict[int, list[str]] = {}
    for i, name in enumerate(table.column_names):
        col = table.column(name)
        try:
            col.validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        raw = pa.chunked_array([c.view(_as_binary(c.type)) for c in col.chunks], type=_as_binary(col.type))
        fixed = []
        for row, value in enumerate(raw.to_pylist()):
            ok, text = _decoded(value)
            if not ok:
                bad.setdefault(row, []).append(name)
            fixed.append(text)
        first = min(r for r, f in bad.items() if name in f)
        if not mark:
            n = sum(name in f for f in bad.values())
            raise _row_error(file, first, name, f"field {name!r} is not valid UTF-8 ({n} row(s) affected)")
        as_str = pa.large_string() if pa.types.is_large_string(col.type) else pa.string()
        typ = pa.list_(as_str) if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) else as_str
        table = table.set_column(i, name, pa.array(fixed, type=typ))
    return table, bad


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
        raise DataValidationError(
            f"{file}: {what} file is missing column(s) {missing}; it has {schema.names}",
            file=str(file),
            field=",".join(missing),
        )


def _check_str(file: Path, schema: pa.Schema, col: str) -> None:
    t = schema.field(col).type
    if not (_is_str(t) or pa.types.is_null(t)):
        raise DataValidationError(
            f"{file}: column {col!r} must be string, got {t}", file=str(file), field=col
        )


def _read_train_file(file: Path, keep_neg: bool, limit: int | None, provenance: bool) -> pl.DataFrame:
    schema = pq.read_schema(file)
    _check_columns(file, schema, TRAIN_COLUMNS, "MMEB-train")
    has_neg = all(c in schema.names for c in TRAIN_NEG_COLUMNS)
    cols = TRAIN_COLUMNS + (TRAIN_NEG_COLUMNS if has_neg else [])
    for c in cols:
        _check_str(file, schema, c)
    table = pq.read_table(file, columns=cols)
    if limit is not None:
        table = table.slice(0, limit)
    table, bad_utf8 = _check_utf8(file, table, mark=provenance)
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    df = df.with_columns(pl.col(c).cast(pl.String).fill_null("") for c in cols)
    if keep_neg and not has_neg:
        # a shard without negatives next to shards with them: "" = absent, as in MMEB
        df = df.with_columns(pl.lit("", dtype=pl.String).alias(c) for c in TRAIN_NEG_COLUMNS)
    df = df.select(TRAIN_COLUMNS + (TRAIN_NEG_COLUMNS if keep_neg else []))
    return _with_provenance(df, file, bad_utf8) if provenance else df


def read_train_subset(
    root: str | os.PathLike,
    subset: str,
    split: str = "original",
    limit: int | None = None,
    *,
    provenance: bool = False,
) -> pl.DataFrame:
    """Read `<root>/<subset>/<split>-*.parquet` (MMEB-train; shards in sorted order, concatenated).

    Returns the columns `qry, qry_image_path, pos_text, pos_image_path` (all String, nulls -> ""),
    plus `neg_text, neg_image_path` when the subset has them (A-OKVQA, ChartQA), plus
    `source_file, source_row` with `provenance`. `limit` keeps the first rows only, like V1's
    `num_sample_per_subset`.
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
        df = _read_train_file(f, keep_neg, remaining, provenance)
        frames.append(df)
        if remaining is not None:
            remaining -= df.height
    return _concat(frames)


def _first_bad(df: pl.DataFrame, mask: pl.Expr) -> tuple[int, int] | None:
    """(first row index, number of rows) where `mask` holds, or None."""
    bad = df.select(mask.fill_null(True).arg_true())
    if bad.height == 0:
        return None
    return int(bad.item(0, 0)), bad.height


def _read_eval_file(file: Path, strict: bool, provenance: bool) -> pl.DataFrame:
    schema = pq.read_schema(file)
    _check_columns(file, schema, EVAL_COLUMNS, "MMEB-eval")
    for c in ("qry_text", "qry_img_path"):
        _check_str(file, schema, c)
    for c in EVAL_LIST_COLUMNS:
        t = schema.field(c).type
        if not _is_str_list(t):
            raise DataValidationError(
                f"{file}: column {c!r} must be list<string>, got {t}", file=str(file), field=c
            )
    table, bad_utf8 = _check_utf8(file, pq.read_table(file, columns=EVAL_COLUMNS), mark=provenance)
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    df = df.with_columns(
        *(pl.col(c).cast(pl.String).fill_null("") for c in ("qry_text", "qry_img_path")),
        *(pl.col(c).cast(pl.List(pl.String)) for c in EVAL_LIST_COLUMNS),
    )
    if strict:
        _check_eval_rows(file, df)
    else:  # row defects are left to validation.validate_eval; a null list reads as no candidates
        df = df.with_columns(pl.col(c).fill_null([]) for c in EVAL_LIST_COLUMNS)
    # null candidate entries mean "absent", like null scalars
    df = df.with_columns(pl.col(c).list.eval(pl.element().fill_null("")) for c in EVAL_LIST_COLUMNS)
    return _with_provenance(df, file, bad_utf8) if provenance else df


def _row_error(file: Path, row: int, field: str, message: str) -> DataValidationError:
    return DataValidationError(f"{file}: row {row}: {message}", file=str(file), row=row, field=field)


def _check_eval_rows(file: Path, df: pl.DataFrame) -> None:
    for c in EVAL_LIST_COLUMNS:
        hit = _first_bad(df, pl.col(c).is_null())
        if hit:
            raise _row_error(file, hit[0], c, f"field {c!r} is null ({hit[1]} row(s) affected)")
    n_text, n_img = pl.col("tgt_text").list.len(), pl.col("tgt_img_path").list.len()
    hit = _first_bad(df, n_text != n_img)
    if hit:
        i = hit[0]
        a, b = df["tgt_text"][i].len(), df["tgt_img_path"][i].len()
        raise _row_error(
            file,
            i,
            "tgt_img_path",
            f"field 'tgt_img_path' has {b} candidates but 'tgt_text' has {a} ({hit[1]} row(s) affected)",
        )
    hit = _first_bad(df, n_text == 0)
    if hit:
        raise _row_error(
            file, hit[0], "tgt_text", f"field 'tgt_text' is an empty candidate list ({hit[1]} row(s))"
        )
    hit = _first_bad(df, (pl.col("qry_text") == "") & (pl.col("qry_img_path") == ""))
    if hit:
        raise _row_error(
            file,
            hit[0],
            "qry_text,qry_img_path",
            f"empty query: field 'qry_text' and field 'qry_img_path' are both empty ({hit[1]} row(s))",
        )


def read_eval_subset(
    root: str | os.PathLike, subset: str, *, strict: bool = True, provenance: bool = False
) -> pl.DataFrame:
    """Read and validate `<root>/<subset>/test-*.parquet` (MMEB-eval; [0] of each candidate list is GT).

    Returns `qry_text, qry_img_path` (String) and `tgt_text, tgt_img_path` (List[String]) with
    nulls -> "", plus `source_file, source_row` with `provenance`. Raises DataValidationError
    (a ValueError) naming file and column for a missing or mistyped column; with `strict` also
    naming the row and field for: candidate lists of different lengths, a null or empty candidate
    list, a query with neither text nor image. `strict=False` leaves those row defects to
    `validation.validate_eval` (which can quarantine them) and reads a null list as `[]`.
    """
    files = _glob(root, subset, "test-*.parquet")
    return _concat([_read_eval_file(f, strict, provenance) for f in files])


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
    provenance: bool = False,
    dedup: bool = True,
) -> pl.DataFrame:
    """All train subsets concatenated: `pair_id, subset, qry, qry_image_path, pos_text, pos_image_path`
    (+ `source_file, source_row` with `provenance`).

    `max_per_subset` caps each subset to its first rows (before de-duplication, like V1). With `dedup`,
    rows with a pair_id seen before are dropped, keeping the first; order is otherwise preserved.
    `dedup=False` keeps them so `validation.validate_train` can report each duplicate's file and row.
    """
    cols = LOAD_TRAIN_COLUMNS + (PROVENANCE_COLUMNS if provenance else [])
    frames: list[pl.DataFrame] = []
    for subset in subsets:
        df = read_train_subset(root, subset, split=split, limit=max_per_subset, provenance=provenance)
        ids = [pair_id(subset, *r) for r in df.select(TRAIN_COLUMNS).iter_rows()]
        frames.append(
            df.with_columns(
                pl.Series("pair_id", ids, dtype=pl.String), pl.lit(subset, dtype=pl.String).alias("subset")
            ).select(cols + [UTF8_COLUMN] * (UTF8_COLUMN in df.columns))
        )
    if not frames:
        return pl.DataFrame(schema={c: pl.String for c in LOAD_TRAIN_COLUMNS} | _prov_schema(provenance))
    df = _concat(frames)
    return df.unique(subset=["pair_id"], keep="first", maintain_order=True) if dedup else df


def _prov_schema(provenance: bool) -> dict[str, pl.DataType]:
    return dict(PROVENANCE_SCHEMA) if provenance else {}


def load_eval(
    root: str | os.PathLike, subsets: Sequence[str], *, strict: bool = True, provenance: bool = False
) -> pl.DataFrame:
    """All eval subsets concatenated: `subset, row, qry_text, qry_img_path, tgt_text, tgt_img_path`
    (+ `source_file, source_row` with `provenance`; `strict` as in `read_eval_subset`).

    `row` is the 0-based index of the row within its subset (across shards), in file order;
    `source_row` is the index inside its own parquet file.
    """
    cols = LOAD_EVAL_COLUMNS + (PROVENANCE_COLUMNS if provenance else [])
    frames = []
    for s in subsets:
        df = read_eval_subset(root, s, strict=strict, provenance=provenance)
        frames.append(
            df.with_row_index("row")
            .with_columns(pl.col("row").cast(pl.Int64), pl.lit(s, dtype=pl.String).alias("subset"))
            .select(cols + [UTF8_COLUMN] * (UTF8_COLUMN in df.columns))
        )
    if not frames:
        schema = {"subset": pl.String, "row": pl.Int64, "qry_text": pl.String, "qry_img_path": pl.String}
        schema |= {c: pl.List(pl.String) for c in EVAL_LIST_COLUMNS}
        return pl.DataFrame(schema=schema | _prov_schema(provenance))
    return _concat(frames)
