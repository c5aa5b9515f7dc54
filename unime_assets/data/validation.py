"""Validation of MMEB train and eval tables after reading; every finding names file, row and field.

Rules (a row breaking any of them is a finding; `reason` is the code in brackets):

- both tables: the required columns exist with their types (else DataValidationError, whatever the
  policy: a table without a column cannot be split row by row); a query has text or an image
  [empty_query]; an exact repeat of an earlier row's query, query image and positive within the
  same subset [duplicate] (the first occurrence stays clean; train tables compare `pair_id`, the
  hash of exactly those fields that the pipeline keys on); image paths (`check_images`) that do
  not exist [missing_image], are absolute or resolve outside the image root [image_outside_root],
  or that PIL cannot decode [unreadable_image].
- train: the positive has text or an image [empty_positive].
- eval (candidate 0 is the ground truth): the row has candidates [no_candidates]; `tgt_text` and
  `tgt_img_path` have equal lengths [length_mismatch]; "ground truth not at index 0" is detectable
  in two ways: candidate 0 is empty, so the ground truth cannot be there [empty_ground_truth], or
  candidate 0 is repeated later in the list, so the ground truth has a second position
  [duplicate_ground_truth]; any other empty candidate [empty_candidate]. A GT stored at another
  index among distinct candidates is not detectable from the data alone.

"Text" is blank when it is empty or whitespace only; MMEB marks "no image" with "". Texts are never
modified. An item with an image and blank text is fine: MMEB needs text or an image on each side.

Provenance: `file` and `row` come from the readers' `source_file` / `source_row` columns (row =
0-based row inside that parquet file; an eval table's own `row` column is the index within the
subset); without them `file` is "<table>" and `row` the position in the table. `clean` drops them
unless `keep_provenance`, so it matches the asset contracts. Typical use:

    train = load_train(root, subsets, provenance=True, dedup=False)  # dedup here reports duplicates
    res = validate_train(train, root, policy="quarantine")
    write_validated(res, out_path, quarantine_path)  # or: return res.clean, log res.counts

    ev = load_eval(eval_root, subsets, provenance=True, strict=False)  # strict readers raise first
    res = validate_eval(ev, eval_image_root, policy="fail")

Text rules, both tables, per (text, image) item: a field whose bytes are not valid UTF-8
[invalid_utf8] (marked by the readers); an item with an image whose (non-blank) text does not hold
exactly one `<|image_1|>` placeholder [placeholder_mismatch] (the processor pairs each placeholder
with an image; a blank text with an image is an image-only item);
a text longer than `max_text_chars` characters [text_too_long] (one huge text makes a huge batch).

Images are checked once per unique path (`image_checks`): "exists" resolves the path like
`images.resolve_image_path`; "verify" (default) also reads its header and structure (PNG chunks and
CRCs, a JPEG's end marker) without decoding pixels, so truncated and garbage files show; "open" also
decodes it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Literal

import polars as pl

from unime_assets.data.errors import DataValidationError
from unime_assets.data.image_checks import ImageCheck, image_problems
from unime_assets.data.images import resolve_image_path
from unime_assets.data.mmeb import PROVENANCE_COLUMNS, UTF8_COLUMN
from unime_assets.io import atomic_path

__all__ = [
    "EVAL_REASONS",
    "FINDINGS_SCHEMA",
    "TRAIN_REASONS",
    "DataValidationError",
    "ValidationResult",
    "validate_eval",
    "validate_train",
    "write_validated",
]

Policy = Literal["fail", "quarantine"]

TABLE_FILE = "<table>"
PLACEHOLDER = "<|image_1|>"  # models.encoding.MMEB_IMAGE_PLACEHOLDER: the image's slot in the text
MAX_TEXT_CHARS = 16_384
IMAGE_REASONS = ("missing_image", "image_outside_root", "unreadable_image")
TEXT_REASONS = ("invalid_utf8", "text_too_long", "placeholder_mismatch")
TRAIN_REASONS = ("empty_query", "empty_positive", "duplicate", *TEXT_REASONS, *IMAGE_REASONS)
EVAL_REASONS = (
    "empty_query",
    "no_candidates",
    "length_mismatch",
    "empty_ground_truth",
    "duplicate_ground_truth",
    "empty_candidate",
    "duplicate",
    *TEXT_REASONS,
    *IMAGE_REASONS,
)
# one row per finding; `index` is the row's position in the validated table
FINDINGS_SCHEMA: dict[str, pl.DataType] = {
    "file": pl.String(),
    "row": pl.Int64(),
    "field": pl.String(),
    "reason": pl.String(),
    "detail": pl.String(),
    "subset": pl.String(),
    "index": pl.Int64(),
}
_TRAIN_TYPES = {c: pl.String() for c in ("qry", "qry_image_path", "pos_text", "pos_image_path")}
_EVAL_TYPES = {
    "qry_text": pl.String(),
    "qry_img_path": pl.String(),
    "tgt_text": pl.List(pl.String()),
    "tgt_img_path": pl.List(pl.String()),
}


@dataclass(frozen=True)
class ValidationResult:
    """clean: the rows without findings; quarantine: one row per finding (FINDINGS_SCHEMA);
    counts: rows, clean, quarantined, findings and one entry per reason code (0 included)."""

    clean: pl.DataFrame
    quarantine: pl.DataFrame
    counts: dict[str, int]


# ----------------------------------------------------------------------------- helpers


def _blank(col: str) -> pl.Expr:
    return pl.col(col).fill_null("").str.strip_chars() == ""


def _no_image(col: str) -> pl.Expr:
    return pl.col(col).fill_null("") == ""


def _as_expr(x: str | pl.Expr) -> pl.Expr:
    return pl.lit(x, dtype=pl.String) if isinstance(x, str) else x


def _findings(
    t: pl.DataFrame, mask: pl.Expr, field: str | pl.Expr, reason: str, detail: str | pl.Expr
) -> pl.DataFrame:
    return t.filter(mask).select(
        pl.col("_file").alias("file"),
        pl.col("_row").alias("row"),
        _as_expr(field).alias("field"),
        pl.lit(reason, dtype=pl.String).alias("reason"),
        _as_expr(detail).alias("detail"),
        pl.col("_subset").alias("subset"),
        pl.col("_index").alias("index"),
    )


def _check_columns(df: pl.DataFrame, types: dict[str, pl.DataType], what: str) -> None:
    files = sorted(df["source_file"].unique().drop_nulls()) if "source_file" in df.columns else []
    where = ", ".join(files[:3]) + (f" (+{len(files) - 3} more)" if len(files) > 3 else "") or TABLE_FILE
    missing = [c for c in types if c not in df.columns]
    if missing:
        raise DataValidationError(
            f"{what} validation: {where}: missing column(s) {missing}; the table has {df.columns}",
            file=where,
            field=",".join(missing),
        )
    for c, t in types.items():
        if df.schema[c] != t:
            raise DataValidationError(
                f"{what} validation: {where}: field {c!r} must be {t}, got {df.schema[c]}",
                file=where,
                field=c,
            )


def _locate(df: pl.DataFrame) -> pl.DataFrame:
    """`df` plus _index (position), _file, _row (provenance or position) and _subset."""
    t = df.with_row_index("_index").with_columns(pl.col("_index").cast(pl.Int64))
    has = set(df.columns)
    return t.with_columns(
        (pl.col("source_file") if "source_file" in has else pl.lit(TABLE_FILE))
        .cast(pl.String)
        .alias("_file"),
        (pl.col("source_row") if "source_row" in has else pl.col("_index")).cast(pl.Int64).alias("_row"),
        (pl.col("subset") if "subset" in has else pl.lit(None)).cast(pl.String).alias("_subset"),
    )


def _duplicates(
    t: pl.DataFrame, keys: list[str | pl.Expr], what: str, key: str | None = None
) -> pl.DataFrame:
    """Rows repeating an earlier row's `keys`; `key` (one column that hashes them) makes it cheaper."""
    cols = [key] if key else [f"_k{i}" for i in range(len(keys))]
    if not key:
        t = t.with_columns(
            *((pl.col(e) if isinstance(e, str) else e).alias(c) for c, e in zip(cols, keys, strict=True))
        )
    k = t.with_columns(  # the first occurrence is looked up before _findings filters the rows
        pl.format(
            "same {} as row {} of {}",
            pl.lit(what),
            pl.col("_row").first().over(cols),
            pl.col("_file").first().over(cols),
        ).alias("_dup_detail")
    )
    first = pl.col(key).is_first_distinct() if key else pl.struct(cols).is_first_distinct()
    return _findings(k, ~first, ",".join(_key_names(keys)), "duplicate", pl.col("_dup_detail"))


def _key_names(keys: list[str | pl.Expr]) -> list[str]:
    names = [k if isinstance(k, str) else k.meta.output_name() for k in keys]
    return [n for n in names if n != "_subset"]  # the subset is where, not what, is duplicated


def _image_findings(t: pl.DataFrame, col: str, bad: pl.DataFrame, field: str | pl.Expr) -> pl.DataFrame:
    hit = t.join(bad.rename({"reason": "_reason", "detail": "_detail"}), left_on=col, right_on="path")
    frames = [
        _findings(hit, pl.col("_reason") == r, field, r, pl.col("_detail"))
        for r in hit["_reason"].unique().sort().to_list()
    ]
    return pl.concat(frames) if frames else _empty_findings()


def _empty_findings() -> pl.DataFrame:
    return pl.DataFrame(schema=FINDINGS_SCHEMA)


def _finish(
    df: pl.DataFrame,
    frames: list[pl.DataFrame],
    reasons: tuple[str, ...],
    what: str,
    policy: Policy,
    keep_provenance: bool,
) -> ValidationResult:
    if policy not in ("fail", "quarantine"):
        raise ValueError(f"policy must be 'fail' or 'quarantine', got {policy!r}")
    findings = pl.concat([_empty_findings(), *frames]).sort("index", maintain_order=True)
    bad = findings["index"].unique()
    by_reason = dict(findings.group_by("reason").len().iter_rows())
    counts = {
        "rows": df.height,
        "clean": df.height - bad.len(),
        "quarantined": bad.len(),
        "findings": findings.height,
        **{r: int(by_reason.get(r, 0)) for r in reasons},
    }
    if findings.height and policy == "fail":
        f = findings.row(0, named=True)
        raise DataValidationError(
            f"{what} validation: {f['file']}: row {f['row']}: field {f['field']!r}: [{f['reason']}] {f['detail']} "
            f"({findings.height} finding(s) in {bad.len()} row(s) in total; policy 'quarantine' sets them aside)",
            file=f["file"],
            row=f["row"],
            field=f["field"],
            count=findings.height,
            findings=findings,
        )
    clean = df.with_row_index("_index").filter(~pl.col("_index").is_in(bad.implode())).drop("_index")
    clean = clean.drop(UTF8_COLUMN, strict=False)  # every marked row is a finding: the marks are spent
    if not keep_provenance:
        clean = clean.drop(PROVENANCE_COLUMNS, strict=False)
    return ValidationResult(clean, findings, counts)


def _utf8_findings(t: pl.DataFrame) -> list[pl.DataFrame]:
    """Rows the reader marked (mmeb.UTF8_COLUMN): a string field whose bytes are not valid UTF-8."""
    if UTF8_COLUMN not in t.columns:
        return []
    detail = "bytes that are not valid UTF-8 (read with U+FFFD replacements)"
    return [_findings(t, pl.col(UTF8_COLUMN) != "", pl.col(UTF8_COLUMN), "invalid_utf8", detail)]


def _item_findings(t: pl.DataFrame, text: str, image: str, at: str | pl.Expr, max_chars: int | None) -> list[pl.DataFrame]:
    """One (text, image) item: a text beside an image holds exactly one placeholder (the processor
    pairs placeholders with images; a blank text is an image-only item, encoded as the image's slot
    alone), and the text stays under `max_chars` characters."""
    n = pl.col(text).fill_null("").str.count_matches(PLACEHOLDER, literal=True)
    frames = [_findings(t, ~_no_image(image) & ~_blank(text) & (n != 1), at, "placeholder_mismatch",
                        pl.format("the item has an image but its text has {} '{}' placeholder(s), not one", n,
                                  pl.lit(PLACEHOLDER)))]  # fmt: skip
    if max_chars is not None:
        length = pl.col(text).fill_null("").str.len_chars()
        frames.append(_findings(t, length > max_chars, at, "text_too_long",
                                pl.format("{} characters, over the {} of validation.max_text_chars", length,
                                          pl.lit(max_chars))))  # fmt: skip
    return frames


# ----------------------------------------------------------------------------- train


def validate_train(df: pl.DataFrame, image_root: str | os.PathLike | None, *, policy: Policy = "fail",
                   check_images: ImageCheck = "verify", keep_provenance: bool = False,
                   max_text_chars: int | None = MAX_TEXT_CHARS) -> ValidationResult:  # fmt: skip
    """Validate an MMEB-train table (`read_train_subset` / `load_train` output; see the module docstring).

    policy "fail" raises DataValidationError naming file, row and field of the first finding and the
    total count; "quarantine" returns the clean rows and the findings. `image_root` is the MMEB-train
    root (may be None only with check_images="none").
    """
    _check_columns(df, _TRAIN_TYPES, "MMEB-train")
    t = _locate(df)
    frames = [
        _findings(
            t,
            _blank("qry") & _no_image("qry_image_path"),
            "qry,qry_image_path",
            "empty_query",
            "the query has neither text ('qry' is blank) nor an image ('qry_image_path' is empty)",
        ),
        _findings(
            t,
            _blank("pos_text") & _no_image("pos_image_path"),
            "pos_text,pos_image_path",
            "empty_positive",
            "the positive has neither text ('pos_text' is blank) nor an image ('pos_image_path' is empty)",
        ),
        # pair_id is the stable hash of exactly these fields, and the key the pipeline dedups on
        _duplicates(
            t,
            ["_subset", *_TRAIN_TYPES],
            "query, query image and positive",
            key="pair_id" if df.schema.get("pair_id") == pl.String else None,
        ),
        *_utf8_findings(t),
        *_item_findings(t, "qry", "qry_image_path", "qry", max_text_chars),
        *_item_findings(t, "pos_text", "pos_image_path", "pos_text", max_text_chars),
    ]
    if check_images != "none":
        bad = image_problems(
            pl.concat([t["qry_image_path"], t["pos_image_path"]]), _root(image_root), check_images,
            resolve_image_path,
        )
        frames += [_image_findings(t, c, bad, c) for c in ("qry_image_path", "pos_image_path")]
    return _finish(df, frames, TRAIN_REASONS, "MMEB-train", policy, keep_provenance)


def _root(image_root: str | os.PathLike | None) -> str | os.PathLike:
    if image_root is None:
        raise ValueError("image_root is required unless check_images='none'")
    return image_root


# ----------------------------------------------------------------------------- eval


def validate_eval(df: pl.DataFrame, image_root: str | os.PathLike | None, *, policy: Policy = "fail",
                  check_images: ImageCheck = "verify", keep_provenance: bool = False,
                  max_text_chars: int | None = MAX_TEXT_CHARS) -> ValidationResult:  # fmt: skip
    """Validate an MMEB-eval table (`load_eval(..., strict=False)` output; see the module docstring).

    Quarantining eval rows changes a subset's denominator, so published numbers stop being
    comparable; "fail" is the safer policy for eval. `image_root` is the eval image root.
    """
    _check_columns(df, _EVAL_TYPES, "MMEB-eval")
    t = _locate(df)
    n_text = pl.col("tgt_text").list.len().fill_null(0)
    n_img = pl.col("tgt_img_path").list.len().fill_null(0)
    frames = [
        _findings(
            t,
            _blank("qry_text") & _no_image("qry_img_path"),
            "qry_text,qry_img_path",
            "empty_query",
            "the query has neither text ('qry_text' is blank) nor an image ('qry_img_path' is empty)",
        ),
        _findings(t, n_text == 0, "tgt_text", "no_candidates", "the candidate list is null or empty"),
        _findings(
            t,
            (n_text != n_img) & (n_text > 0),
            "tgt_img_path",
            "length_mismatch",
            pl.format("'tgt_img_path' has {} candidates but 'tgt_text' has {}", n_img, n_text),
        ),
        _duplicates(
            t,
            [
                "_subset",
                "qry_text",
                "qry_img_path",
                pl.col("tgt_text").list.first().alias("tgt_text[0]"),
                pl.col("tgt_img_path").list.first().alias("tgt_img_path[0]"),
            ],
            "query, query image and ground truth",
        ),
        *_utf8_findings(t),
        *_item_findings(t, "qry_text", "qry_img_path", "qry_text", max_text_chars),
    ]
    ex = (
        t.filter((n_text == n_img) & (n_text > 0))
        .select("_index", "_file", "_row", "_subset", "tgt_text", "tgt_img_path")
        .explode(["tgt_text", "tgt_img_path"])
        .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over("_index").alias("_pos"))
    )
    empty = _blank("tgt_text") & _no_image("tgt_img_path")
    at = pl.format("tgt_text[{}],tgt_img_path[{}]", pl.col("_pos"), pl.col("_pos"))
    is_gt = (pl.col("tgt_text") == pl.col("tgt_text").first().over("_index")) & (
        pl.col("tgt_img_path") == pl.col("tgt_img_path").first().over("_index")
    )
    frames += [
        _findings(
            ex,
            empty & (pl.col("_pos") == 0),
            at,
            "empty_ground_truth",
            "candidate 0 (the ground truth) has neither text nor an image",
        ),
        _findings(
            ex,
            (pl.col("_pos") > 0) & is_gt,
            at,
            "duplicate_ground_truth",
            pl.format("candidate {} repeats candidate 0 (the ground truth) exactly", pl.col("_pos")),
        ),
        _findings(
            ex,
            empty & (pl.col("_pos") > 0) & ~is_gt,
            at,
            "empty_candidate",
            pl.format("candidate {} has neither text nor an image", pl.col("_pos")),
        ),
        *_item_findings(ex, "tgt_text", "tgt_img_path", pl.format("tgt_text[{}]", pl.col("_pos")), max_text_chars),
    ]
    if check_images != "none":
        bad = image_problems(
            pl.concat([t["qry_img_path"], ex["tgt_img_path"]]), _root(image_root), check_images,
            resolve_image_path,
        )
        frames += [
            _image_findings(t, "qry_img_path", bad, "qry_img_path"),
            _image_findings(ex, "tgt_img_path", bad, pl.format("tgt_img_path[{}]", pl.col("_pos"))),
        ]
    return _finish(df, frames, EVAL_REASONS, "MMEB-eval", policy, keep_provenance)


# ----------------------------------------------------------------------------- writing


def write_validated(
    result: ValidationResult, out_path: str | os.PathLike, quarantine_path: str | os.PathLike | None = None
) -> None:
    """Write `result.clean` to `out_path` and `result.quarantine` to `quarantine_path` (parquet).

    Both go to temporary files first and are renamed into place only when both are complete, so a
    failure leaves neither new file (and any previous ones intact). The quarantine is renamed first: a
    kill between the two renames leaves the new quarantine beside the previous table (never a table
    whose dropped rows are recorded nowhere), and the materialization, unfinished, runs again and
    rewrites both. Quarantined rows without a
    `quarantine_path` are refused: rows would vanish without a record.
    """
    if quarantine_path is None and result.quarantine.height:
        raise ValueError(
            f"{result.counts['quarantined']} quarantined row(s) but no quarantine_path: refusing to drop "
            f"rows from {out_path} without recording them"
        )
    with contextlib.ExitStack() as stack:
        tmp_out = stack.enter_context(atomic_path(out_path))
        tmp_q = stack.enter_context(atomic_path(quarantine_path)) if quarantine_path is not None else None
        result.clean.write_parquet(tmp_out)
        if tmp_q is not None:
            result.quarantine.write_parquet(tmp_q)
