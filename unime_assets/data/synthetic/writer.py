"""Writing the synthetic dataset in MMEB's on-disk formats, with a manifest that makes reruns free."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from unime_assets.data.catalog import SYNTHETIC_EVAL, SYNTHETIC_TRAIN
from unime_assets.data.mmeb import read_eval_subset, read_train_subset
from unime_assets.data.synthetic.subsets import ALL_CAPTIONS, GENERATORS, NEG_SUBSETS, Ctx, Row
from unime_assets.data.synthetic.truth import (
    TRUTH_DIR,
    TRUTH_FILE,
    TruthIndex,
    phenomena_counts,
    truth_rows,
    write_truth,
)
from unime_assets.data.synthetic.world import subset_rng
from unime_assets.io import atomic_path

# Bump when the generated content changes, so an existing manifest no longer matches.
# 2: train labels carry synonyms / caption paraphrases, and the ground-truth sidecar (truth/) is written.
GENERATOR_VERSION = 2

TRAIN_SCHEMA = pa.schema([(c, pa.string()) for c in ["qry", "qry_image_path", "pos_text", "pos_image_path"]])
TRAIN_NEG_SCHEMA = pa.schema(
    [
        (c, pa.string())
        for c in ["qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path"]
    ]
)
EVAL_SCHEMA = pa.schema(
    [
        ("qry_text", pa.string()),
        ("qry_img_path", pa.string()),
        ("tgt_text", pa.list_(pa.string())),
        ("tgt_img_path", pa.list_(pa.string())),
    ]
)
TRAIN_FILE = "original-00000-of-00001.parquet"
EVAL_FILE = "test-00000-of-00001.parquet"


@dataclass(frozen=True)
class SyntheticLayout:
    train_root: Path  # MMEB-train root: <Subset>/original-*.parquet and images/<Subset>/Train/*
    eval_root: Path  # MMEB-eval root: <Subset>/test-*.parquet
    eval_image_root: Path  # eval image paths are relative to this
    train_subsets: list[str] = field(default_factory=list)
    eval_subsets: list[str] = field(default_factory=list)

    @property
    def truth_file(self) -> Path:
        """The ground-truth sidecar of the train split (data/synthetic/truth.py)."""
        return self.train_root.parent / TRUTH_DIR / TRUTH_FILE


def _write_table(rows: list[Row], schema: pa.Schema, dest: Path) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp)


def _write_text(text: str, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _readme(subsets: Sequence[str], split: str, what: str) -> str:
    # Same YAML as the HF cards, so `datasets.load_dataset(root, subset)` also works on this data.
    lines = ["---", "configs:"]
    for s in subsets:
        lines += [f"- config_name: {s}", "  data_files:", f"  - split: {split}", f"    path: {s}/{split}-*"]
    lines += [
        "---",
        "",
        f"Synthetic {what} written by `unime_assets.data.synthetic` (MMEB on-disk format).",
        "",
    ]
    return "\n".join(lines)


def _count_files(layout: SyntheticLayout) -> dict[str, int]:
    return {
        "train_parquet": sum(
            1 for s in layout.train_subsets for _ in (layout.train_root / s).glob("*.parquet")
        ),
        "eval_parquet": sum(1 for s in layout.eval_subsets for _ in (layout.eval_root / s).glob("*.parquet")),
        "train_images": sum(1 for _ in (layout.train_root / "images").rglob("*.png")),
        "eval_images": sum(1 for _ in layout.eval_image_root.rglob("*.png")),
    }


def _manifest_matches(path: Path, params: dict, layout: SyntheticLayout) -> bool:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # params alone are not enough: files may have been deleted since
    return manifest.get("params") == params and manifest.get("files") == _count_files(layout)


def generate(
    out_root: str | Path,
    *,
    n_train: int = 120,
    n_eval: int = 40,
    n_candidates: int = 8,
    image_size: int = 56,
    seed: int = 0,
    synonym_rate: float = 0.25,
    paraphrase_rate: float = 0.25,
) -> SyntheticLayout:
    """Write the synthetic MMEB-format dataset under `out_root` (idempotent) and return its layout.

    `n_train` train rows per IND subset, `n_eval` eval rows per subset, `n_candidates` candidates per
    retrieval/grounding eval row (classification/VQA rows list their whole closed label set).
    `manifest.json` is written last; an existing manifest with the same params (and file counts)
    means the data is complete and nothing is rewritten. Otherwise the three data directories are
    deleted and regenerated, so no stale file from other params survives.

    Train-only phenomena, in counted amounts (`manifest.json` "phenomena", per train subset): a
    `synonym_rate` share of label positives written as a synonym (SynColor and SynVQA with different
    colour words, so some false negatives exist only in another subset), a `paraphrase_rate` share of
    SynCaps_i2t captions paraphrased; `truth/train_truth.parquet` says what every query wants and
    every target means (data/synthetic/truth.py). The eval split does not depend on either rate.
    """
    if n_train < 1 or n_eval < 1:
        raise ValueError(f"n_train and n_eval must be >= 1, got {n_train}, {n_eval}")
    if not 2 <= n_candidates <= len(ALL_CAPTIONS):
        raise ValueError(f"n_candidates must be in [2, {len(ALL_CAPTIONS)}], got {n_candidates}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not (0 <= synonym_rate <= 1 and 0 <= paraphrase_rate <= 1):
        raise ValueError(f"synonym_rate and paraphrase_rate must be in [0, 1], got {synonym_rate}, {paraphrase_rate}")
    missing = sorted(set(SYNTHETIC_EVAL) - set(GENERATORS))
    if missing:
        raise RuntimeError(f"no synthetic generator for catalog subset(s) {missing}")

    out_root = Path(out_root)
    layout = SyntheticLayout(
        train_root=out_root / "MMEB-train",
        eval_root=out_root / "MMEB-eval",
        eval_image_root=out_root / "eval_images",
        train_subsets=list(SYNTHETIC_TRAIN),
        eval_subsets=list(SYNTHETIC_EVAL),
    )
    params = {
        "generator_version": GENERATOR_VERSION,
        "n_train": n_train,
        "n_eval": n_eval,
        "n_candidates": n_candidates,
        "image_size": image_size,
        "seed": seed,
        "synonym_rate": synonym_rate,
        "paraphrase_rate": paraphrase_rate,
    }
    manifest_path = out_root / "manifest.json"
    if _manifest_matches(manifest_path, params, layout) and layout.truth_file.is_file():
        return layout

    manifest_path.unlink(missing_ok=True)  # from here on the directory is "incomplete"
    for d in (layout.train_root, layout.eval_root, layout.eval_image_root, out_root / TRUTH_DIR):
        shutil.rmtree(d, ignore_errors=True)

    ctx = Ctx(layout.train_root, layout.eval_image_root, image_size, n_candidates, synonym_rate, paraphrase_rate)
    rows_written: dict[str, dict[str, int]] = {"train": {}, "eval": {}}
    truth: list[dict] = []
    for subset in layout.train_subsets:
        rows = GENERATORS[subset](ctx, subset, subset_rng(seed, subset, "train"), n_train, "train")
        truth += truth_rows(subset, rows)
        keys = [(r["qry"], r["qry_image_path"], r["pos_text"], r["pos_image_path"]) for r in rows]
        if len(set(keys)) != len(keys):
            raise RuntimeError(f"synthetic train subset {subset} has duplicate pairs")
        schema = TRAIN_NEG_SCHEMA if subset in NEG_SUBSETS else TRAIN_SCHEMA
        _write_table(rows, schema, layout.train_root / subset / TRAIN_FILE)
        rows_written["train"][subset] = len(rows)
    for subset in layout.eval_subsets:
        rows = GENERATORS[subset](ctx, subset, subset_rng(seed, subset, "eval"), n_eval, "eval")
        _write_table(rows, EVAL_SCHEMA, layout.eval_root / subset / EVAL_FILE)
        rows_written["eval"][subset] = len(rows)
    write_truth(truth, out_root / TRUTH_DIR / TRUTH_FILE)
    _write_text(_readme(layout.train_subsets, "original", "MMEB-train"), layout.train_root / "README.md")
    _write_text(_readme(layout.eval_subsets, "test", "MMEB-eval"), layout.eval_root / "README.md")

    manifest = {
        "params": params,
        "train_subsets": layout.train_subsets,
        "eval_subsets": layout.eval_subsets,
        "rows": rows_written,
        "files": _count_files(layout),
        # per train subset: what the global candidate pool holds for its queries (truth.phenomena_counts)
        "phenomena": phenomena_counts(TruthIndex(truth)),
    }
    _write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", manifest_path)
    return layout


def corpus_texts(layout: SyntheticLayout) -> list[str]:
    """Every distinct non-empty text in the train and eval parquet files, in first-seen order.

    Read back through the MMEB readers, so it is exactly what training and eval will tokenize.
    """
    seen: dict[str, None] = {}
    for subset in layout.train_subsets:
        df = read_train_subset(layout.train_root, subset)
        for col in ("qry", "pos_text", "neg_text"):
            if col in df.columns:
                seen.update(dict.fromkeys(df[col].to_list()))
    for subset in layout.eval_subsets:
        df = read_eval_subset(layout.eval_root, subset)
        seen.update(dict.fromkeys(df["qry_text"].to_list()))
        seen.update(dict.fromkeys(df["tgt_text"].explode().to_list()))
    return [t for t in seen if t]
