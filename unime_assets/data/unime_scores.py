"""The UniME-V2 authors' released judge-score JSON (paper digest §5) and the pipeline's tables.

The file (`train_data_*_scores.json`, sample `data/example_data.json`) is a JSON list with one
object per training query and exactly these seven fields:

    query_text, query_image, pos_text, pos_image   str ("" = no image; paths under the MMEB-train root)
    query_pos_scores                               float, judge score of (query, positive)
    hard_negatives                                 list of [text, image_path] pairs (10 in the release)
    hard_negatives_scores                          list of floats aligned with hard_negatives

`read` gives one row per record with those names (lists stay lists) and `write` gives the same
JSON back (4-space indent, UTF-8 unescaped, no trailing newline: byte-identical to the release
when the values are unchanged). Unknown fields are rejected rather than dropped, so a round trip
can never lose data silently.

`to_pipeline_tables` turns an imported file into this pipeline's tables (stages 1-3 skipped):

- `train` (mmeb_train contract): the official file has no subset field. The subset is taken from a
  `subset` column when the frame has one, else from the first image path of the record
  (`images/<Subset>/...`, query image first), else `default_subset`; `pair_id` is then the same
  stable hash `load_train` computes, so imported rows key-match rows read from MMEB-train.
- `candidates` (retrieval contract, cand_id = row number): the unique positives first, built by
  `build_candidate_table` exactly as stage 1 does, then each new unique negative in file order.
- `mined` (`mine_table` columns and dtypes): `neg_cand_ids` in stored order (cyclic repeats kept),
  `neg_scores` = hard_negatives_scores, `strategy` = "official_import", `fallback` = every score
  is 1.0 (the paper's no-survivor fallback), `n_survivors` and `n_filtered` = null (not released).
- `judge_scores`: `pos_score` = query_pos_scores; `cand_scores` = the stored negative scores,
  aligned with `mined.neg_cand_ids` (the full 50-candidate judge matrix is not released, and there
  is no candidate_pool: retrieval similarities, `pos_cand_id` and `pos_sim` have no source).

Every official field has a home; what has none is the record order of exact duplicate queries
(same subset, query and positive = same pair_id): the first is kept, the rest are counted in
`n_duplicates` and dropped, because pair_id is the key of every downstream table.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from unime_assets.data.candidates import build_candidate_table, candidate_key
from unime_assets.data.errors import DataValidationError
from unime_assets.data.mmeb import pair_id
from unime_assets.io import atomic_path

__all__ = ["FIELDS", "PipelineTables", "check_usable", "from_pipeline_tables", "read", "to_pipeline_tables", "write"]

FIELDS: dict[str, pl.DataType] = {
    "query_text": pl.String(),
    "query_image": pl.String(),
    "pos_text": pl.String(),
    "pos_image": pl.String(),
    "query_pos_scores": pl.Float64(),
    "hard_negatives": pl.List(pl.List(pl.String())),
    "hard_negatives_scores": pl.List(pl.Float64()),
}
_STR_FIELDS = ("query_text", "query_image", "pos_text", "pos_image")
STRATEGY = "official_import"
_SUBSET_RE = re.compile(r"^images/([^/]+)/")
# mining.table.mine_table's columns and dtypes (tests/data/test_unime_scores.py compares the two)
MINED_SCHEMA: dict[str, pl.DataType] = {
    "pair_id": pl.String(),
    "neg_cand_ids": pl.List(pl.Int64()),
    "neg_scores": pl.List(pl.Float64()),
    "strategy": pl.String(),
    "fallback": pl.Boolean(),
    "n_survivors": pl.Int64(),
    "n_filtered": pl.Int64(),
}


def _fail(file: str, i: int, field: str | None, message: str) -> DataValidationError:
    where = f"record {i}" + (f": field {field!r}" if field else "")
    return DataValidationError(f"{file}: {where}: {message}", file=file, row=i, field=field)


def _show(v: Any) -> str:
    s = repr(v)
    return f"{type(v).__name__} {s if len(s) <= 60 else s[:57] + '...'}"


def _is_score(v: Any) -> bool:
    # bool is an int subclass in Python but never a score; scores are probabilities e^y/(e^y+e^n)
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and 0.0 <= v <= 1.0


def _check_record(file: str, i: int, rec: Any) -> None:
    """Raise DataValidationError naming file, record and field for any deviation from the format."""
    if not isinstance(rec, dict):
        raise _fail(file, i, None, f"must be a JSON object, got {_show(rec)}")
    missing = [f for f in FIELDS if f not in rec]
    if missing:
        raise _fail(file, i, missing[0], f"missing field(s) {missing}")
    unknown = [k for k in rec if k not in FIELDS]
    if unknown:
        raise _fail(file, i, unknown[0], f"unknown field(s) {unknown}; the format has exactly {list(FIELDS)}")
    for f in _STR_FIELDS:
        if not isinstance(rec[f], str):
            raise _fail(file, i, f, f"must be a string, got {_show(rec[f])}")
    if not _is_score(rec["query_pos_scores"]):
        raise _fail(
            file, i, "query_pos_scores", f"must be a number in [0, 1], got {_show(rec['query_pos_scores'])}"
        )
    negs, scores = rec["hard_negatives"], rec["hard_negatives_scores"]
    if not isinstance(negs, list):
        raise _fail(
            file, i, "hard_negatives", f"must be a list of [text, image_path] pairs, got {_show(negs)}"
        )
    for j, pair in enumerate(negs):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise _fail(
                file, i, f"hard_negatives[{j}]", f"must be a [text, image_path] pair, got {_show(pair)}"
            )
    if not isinstance(scores, list):
        raise _fail(file, i, "hard_negatives_scores", f"must be a list of numbers, got {_show(scores)}")
    for j, s in enumerate(scores):
        if not _is_score(s):
            raise _fail(file, i, f"hard_negatives_scores[{j}]", f"must be a number in [0, 1], got {_show(s)}")
    if len(scores) != len(negs):
        raise _fail(
            file,
            i,
            "hard_negatives_scores",
            f"has {len(scores)} scores but 'hard_negatives' has {len(negs)} candidates",
        )


def _columns(file: str, records: list[Any]) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {f: [] for f in FIELDS}
    for i, rec in enumerate(records):
        _check_record(file, i, rec)
        for f in _STR_FIELDS:
            cols[f].append(rec[f])
        cols["query_pos_scores"].append(float(rec["query_pos_scores"]))
        cols["hard_negatives"].append(rec["hard_negatives"])
        cols["hard_negatives_scores"].append([float(s) for s in rec["hard_negatives_scores"]])
    return cols


def read(path: str | os.PathLike) -> pl.DataFrame:
    """One row per record, columns FIELDS; DataValidationError names file, record index and field."""
    file = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError as e:
        raise DataValidationError(f"{file}: not UTF-8 text: byte {e.start} cannot be decoded ({e.reason})",
                                  file=file) from e  # fmt: skip
    except json.JSONDecodeError as e:
        raise DataValidationError(
            f"{file}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}", file=file
        ) from e
    if not isinstance(data, list):
        raise DataValidationError(
            f"{file}: expected a JSON list of records, got {type(data).__name__}", file=file
        )
    return pl.DataFrame(_columns(file, data), schema=FIELDS)


def check_usable(df: pl.DataFrame, file: str, *, k_negatives: int, image_root: str | os.PathLike,
                 check_images: str = "exists") -> None:  # fmt: skip
    """What `read` cannot know, checked before any training: every record holds at least `k_negatives`
    hard negatives (training takes k of them), and every image it names passes `check_images`
    ("none", "exists", "verify", "open") inside `image_root`. Raises naming file, record and field."""
    from unime_assets.data.image_checks import image_problems
    from unime_assets.data.images import resolve_image_path

    short = df.with_row_index("_i").filter(pl.col("hard_negatives").list.len() < k_negatives)
    if short.height:
        i, n = short["_i"][0], short["hard_negatives"][0].len()
        raise _fail(file, i, "hard_negatives", f"has {n} candidates; training takes embedder.k_negatives = "
                    f"{k_negatives} ({short.height} record(s) have fewer)")  # fmt: skip
    if check_images == "none":
        return
    where: dict[str, tuple[int, int, str]] = {}  # image path -> its first (record, position in it, field)
    for i, (qi, pi, negs) in enumerate(df.select("query_image", "pos_image", "hard_negatives").iter_rows()):
        fields = [(qi, "query_image"), (pi, "pos_image"), *((n[1], f"hard_negatives[{j}]") for j, n in enumerate(negs))]
        for pos, (path, field) in enumerate(fields):
            if path and path not in where:
                where[path] = (i, pos, field)
    bad = image_problems(pl.Series(list(where), dtype=pl.String), image_root, check_images, resolve_image_path)
    if bad.height:
        first = min(bad.iter_rows(named=True), key=lambda r: where[r["path"]][:2])
        i, _, field = where[first["path"]]
        raise _fail(file, i, field, f"image {first['path']!r}: {first['reason']} ({first['detail']}); "
                    f"{bad.height} image(s) fail the {check_images!r} check under {image_root}")  # fmt: skip


def _check_frame(df: pl.DataFrame, what: str) -> None:
    missing = [c for c in FIELDS if c not in df.columns]
    if missing:
        raise DataValidationError(f"{what}: missing column(s) {missing}", file=what, field=missing[0])
    for c, t in FIELDS.items():
        if df.schema[c] != t:
            raise DataValidationError(
                f"{what}: column {c!r} must be {t}, got {df.schema[c]}", file=what, field=c
            )


def write(df: pl.DataFrame, path: str | os.PathLike) -> Path:
    """Write `df` (FIELDS columns, extra columns ignored) as the official JSON, atomically.

    Every record is checked like `read` checks it first, so nothing unreadable is ever written.
    """
    file = str(path)
    _check_frame(df, file)
    records = df.select(list(FIELDS)).to_dicts()
    for i, rec in enumerate(records):
        _check_record(file, i, rec)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(records, indent=4, ensure_ascii=False), encoding="utf-8")
    return Path(path)


# ----------------------------------------------------------------------------- pipeline tables


@dataclass(frozen=True)
class PipelineTables:
    """An official score file as pipeline tables (see the module docstring for each column)."""

    train: pl.DataFrame  # pair_id, subset, qry, qry_image_path, pos_text, pos_image_path
    candidates: pl.DataFrame  # cand_id, cand_key, text, image_path
    mined: pl.DataFrame  # MINED_SCHEMA: mine_table's columns; n_survivors, n_filtered null
    judge_scores: pl.DataFrame  # pair_id, pos_score, cand_scores (aligned with mined.neg_cand_ids)
    n_duplicates: int  # records dropped as repeats of an earlier pair_id


def _subsets(df: pl.DataFrame, default_subset: str | None, source: str) -> list[str]:
    given = df["subset"].to_list() if "subset" in df.columns else [None] * df.height
    out: list[str] = []
    for i, (s, qi, pi) in enumerate(zip(given, df["query_image"], df["pos_image"], strict=True)):
        m = _SUBSET_RE.match(qi) or _SUBSET_RE.match(pi)
        name = s or (m.group(1) if m else default_subset)
        if not name:
            raise _fail(
                source,
                i,
                "query_image",
                "cannot infer the subset: neither 'query_image' nor 'pos_image' is under images/<Subset>/; "
                "pass default_subset or add a 'subset' column",
            )
        out.append(name)
    return out


def to_pipeline_tables(
    df: pl.DataFrame, *, default_subset: str | None = None, source: str = "<scores>"
) -> PipelineTables:
    """Convert `read` output into train / candidates / mined / judge_scores tables.

    `source` (the score file's path) only names the file in error messages.
    """
    _check_frame(df, source)
    subsets = _subsets(df, default_subset, source)
    qry, qimg, pos, pimg = (df[c].to_list() for c in _STR_FIELDS)
    ids = [pair_id(*r) for r in zip(subsets, qry, qimg, pos, pimg, strict=True)]
    first = pl.Series(ids).is_first_distinct()
    kept = df.filter(first)
    train = pl.DataFrame(
        {
            "pair_id": [p for p, k in zip(ids, first, strict=True) if k],
            "subset": [s for s, k in zip(subsets, first, strict=True) if k],
            "qry": kept["query_text"],
            "qry_image_path": kept["query_image"],
            "pos_text": kept["pos_text"],
            "pos_image_path": kept["pos_image"],
        },
        schema={
            c: pl.String for c in ("pair_id", "subset", "qry", "qry_image_path", "pos_text", "pos_image_path")
        },
    )
    pool, _ = build_candidate_table(train)
    key_to_id = {k: i for i, k in zip(pool["cand_id"], pool["cand_key"], strict=True)}
    texts, images = pool["text"].to_list(), pool["image_path"].to_list()
    neg_ids: list[list[int]] = []
    for negs in kept["hard_negatives"].to_list():
        row = []
        for text, image in negs:
            key = candidate_key(text, image)
            if key not in key_to_id:
                key_to_id[key] = len(texts)
                texts.append(text)
                images.append(image)
            row.append(key_to_id[key])
        neg_ids.append(row)
    candidates = pl.DataFrame(
        {"cand_id": range(len(texts)), "cand_key": list(key_to_id), "text": texts, "image_path": images},
        schema={"cand_id": pl.Int64, "cand_key": pl.String, "text": pl.String, "image_path": pl.String},
    )
    scores = kept["hard_negatives_scores"]
    unknown = [None] * train.height
    mined = pl.DataFrame(
        {
            "pair_id": train["pair_id"],
            "neg_cand_ids": neg_ids,
            "neg_scores": scores,
            "strategy": [STRATEGY] * train.height,
            "fallback": [len(s) > 0 and all(x == 1.0 for x in s) for s in scores.to_list()],
            "n_survivors": unknown,
            "n_filtered": unknown,
        },
        schema=MINED_SCHEMA,
    )
    judge = pl.DataFrame(
        {"pair_id": train["pair_id"], "pos_score": kept["query_pos_scores"], "cand_scores": scores},
        schema={"pair_id": pl.String, "pos_score": pl.Float64, "cand_scores": pl.List(pl.Float64)},
    )
    return PipelineTables(train, candidates, mined, judge, n_duplicates=df.height - kept.height)


def _require_ids(mined: pl.DataFrame, other: pl.DataFrame, name: str) -> None:
    missing = mined.join(other, on="pair_id", how="anti")
    if missing.height:
        raise ValueError(
            f"export: {missing.height} pair_id(s) of mined are absent from {name} (first: {missing['pair_id'][0]})"
        )


def from_pipeline_tables(
    train: pl.DataFrame, candidates: pl.DataFrame, mined: pl.DataFrame, judge_scores: pl.DataFrame
) -> pl.DataFrame:
    """The official shape (FIELDS) for every mined query, in `mined` order, ready for `write`.

    hard_negatives_scores are the mined `neg_scores` (1.0 on fallback, as in the release).
    """
    _require_ids(mined, train, "train")
    _require_ids(mined, judge_scores, "judge_scores")
    items = zip(candidates["text"].to_list(), candidates["image_path"].to_list(), strict=True)
    by_id = dict(zip(candidates["cand_id"].to_list(), items, strict=True))
    train = train.unique("pair_id", keep="first", maintain_order=True)
    judge_scores = judge_scores.unique("pair_id", keep="first", maintain_order=True)
    df = mined.select("pair_id", "neg_cand_ids", "neg_scores").join(
        train.select("pair_id", "qry", "qry_image_path", "pos_text", "pos_image_path"),
        on="pair_id",
        how="left",
        maintain_order="left",
    )
    df = df.join(judge_scores.select("pair_id", "pos_score"), on="pair_id", how="left", maintain_order="left")
    negatives: list[list[list[str]]] = []
    for pid, ids in zip(df["pair_id"], df["neg_cand_ids"].to_list(), strict=True):
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise ValueError(f"export: pair {pid}: neg_cand_ids {unknown} are not in the candidates table")
        negatives.append([list(by_id[i]) for i in ids])
    return pl.DataFrame(
        {
            "query_text": df["qry"],
            "query_image": df["qry_image_path"],
            "pos_text": df["pos_text"],
            "pos_image": df["pos_image_path"],
            "query_pos_scores": df["pos_score"],
            "hard_negatives": negatives,
            "hard_negatives_scores": df["neg_scores"],
        },
        schema=FIELDS,
    )


def from_training_set(ts: pl.DataFrame) -> pl.DataFrame:
    """The official shape from the `training_set` asset's table (negatives already carry text and image)."""
    negatives = [
        [[t, p] for t, p in zip(texts, paths, strict=True)]
        for texts, paths in zip(ts["neg_texts"].to_list(), ts["neg_image_paths"].to_list(), strict=True)
    ]
    return pl.DataFrame(
        {
            "query_text": ts["qry"],
            "query_image": ts["qry_image_path"],
            "pos_text": ts["pos_text"],
            "pos_image": ts["pos_image_path"],
            "query_pos_scores": ts["pos_score"],
            "hard_negatives": negatives,
            "hard_negatives_scores": ts["neg_scores"],
        },
        schema=FIELDS,
    )
