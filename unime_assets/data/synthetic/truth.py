"""The synthetic train split's ground truth: what every query wants and what every target means.

The generator knows which pool entries are false negatives of a query (a correct answer that is not
its annotated positive: a label synonym, the same label written by another subset, a paraphrased
caption, another image or crop of the same object), which are one-attribute hard negatives and which
are easy ones. It writes that knowledge beside the data, as `truth/train_truth.parquet` (one row per
train pair, keyed by content), so the pipeline can measure its δ rule and false-negative filters
against it. Real MMEB has no such file (`Settings.truth_file` is None there).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TRUTH_DIR, TRUTH_FILE = "truth", "train_truth.parquet"
TRUTH_KEY = ("qry", "qry_image_path", "pos_text", "pos_image_path")
TRUTH_SCHEMA = pa.schema(
    [("subset", pa.string()), ("row", pa.int64())] + [(c, pa.string()) for c in TRUTH_KEY]
    + [("want", pa.string()), ("variant", pa.string())]
)  # fmt: skip
# How a candidate relates to a query (`relation`), most to least confusable.
RELATIONS = ("false_negative", "hard", "same_type", "easy")

QueryKey = tuple[str, str, str, str]  # qry, qry_image_path, pos_text, pos_image_path
TargetKey = tuple[str, str]  # text, image_path


def relation(want: Sequence[str], meaning: Sequence[str]) -> str:
    """How a candidate that means `meaning` relates to a query whose correct targets mean `want`.

    `false_negative`: a correct target (same type, every attribute equal), e.g. "scarlet" for a red
    image's colour, a paraphrased caption of the same object, another image of the same object;
    `hard`: same type, exactly one attribute differs (another colour; the same object in another
    quadrant); `same_type`: same type, two or more attributes differ; `easy`: another type of target
    (a count word for a colour question, a crop for a caption query).
    """
    if want[0] != meaning[0] or len(want) != len(meaning):
        return "easy"
    diff = sum(a != b for a, b in zip(want[1:], meaning[1:], strict=True))
    return "false_negative" if diff == 0 else "hard" if diff == 1 else "same_type"


def truth_rows(subset: str, rows: Sequence[dict]) -> list[dict]:
    """The sidecar rows of one generated train subset; pops each row's `_truth` (not an MMEB column)."""
    out = []
    for i, r in enumerate(rows):
        t = r.pop("_truth")
        out.append({"subset": subset, "row": i, **{c: r[c] for c in TRUTH_KEY}, "want": json.dumps(t["want"]),
                    "variant": t["variant"]})  # fmt: skip
    return out


def write_truth(rows: Sequence[dict], path: Path) -> None:
    from unime_assets.io import atomic_path

    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(list(rows), schema=TRUTH_SCHEMA), tmp)


class TruthIndex:
    """The ground truth of the train split, looked up by content: a query by (qry, qry image, positive
    text, positive image), a target by (text, image path). Any table built from the MMEB-train files
    (`mmeb_train`, the `candidate_index` candidates) is looked up without the generator's ids."""

    def __init__(self, rows: Sequence[dict]):
        self.want: dict[QueryKey, tuple[str, ...]] = {}
        self.subset: dict[QueryKey, str] = {}
        self.meaning: dict[TargetKey, tuple[str, ...]] = {}
        self.target_subsets: dict[TargetKey, set[str]] = {}
        self.variant: dict[TargetKey, str] = {}
        for r in rows:
            key = tuple(r[c] for c in TRUTH_KEY)
            want = tuple(json.loads(r["want"]) if isinstance(r["want"], str) else r["want"])
            self.want[key] = want
            self.subset[key] = r["subset"]
            target = (r["pos_text"], r["pos_image_path"])
            if self.meaning.setdefault(target, want) != want:
                raise ValueError(f"truth: target {target} has two meanings ({self.meaning[target]} and {want})")
            self.target_subsets.setdefault(target, set()).add(r["subset"])
            self.variant.setdefault(target, r["variant"])

    @classmethod
    def read(cls, path: str | Path) -> TruthIndex:
        """From the sidecar file (or the data root that holds `truth/train_truth.parquet`)."""
        p = Path(path)
        p = p / TRUTH_DIR / TRUTH_FILE if p.is_dir() else p
        if not p.is_file():
            raise FileNotFoundError(f"truth file {p} not found (settings `truth_file`; only synthetic data has one)")
        return cls(pq.read_table(p).to_pylist())

    def relation(self, query: QueryKey, target: TargetKey) -> str:
        return relation(self.want[query], self.meaning[target])

    def is_false_negative(self, query: QueryKey, target: TargetKey) -> bool:
        """A pool target other than the query's own positive that nonetheless answers it correctly."""
        return target != (query[2], query[3]) and self.relation(query, target) == "false_negative"

    def relation_matrix(self, queries: Sequence[QueryKey], targets: Sequence[TargetKey]) -> np.ndarray:
        """(n_queries, n_targets) int8 index into RELATIONS; -1 where the target is the query's own
        positive, or where the query or target is not in the truth (other data than the generator's)."""
        wants = {w: i for i, w in enumerate(dict.fromkeys(self.want.get(q) for q in queries))}
        means = {m: i for i, m in enumerate(dict.fromkeys(self.meaning.get(t) for t in targets))}
        table = np.full((len(wants), len(means)), -1, dtype=np.int8)  # per distinct (want, meaning)
        for w, i in wants.items():
            for m, j in means.items():
                if w is not None and m is not None:
                    table[i, j] = RELATIONS.index(relation(w, m))
        qi = np.array([wants[self.want.get(q)] for q in queries], dtype=np.int64)
        ti = np.array([means[self.meaning.get(t)] for t in targets], dtype=np.int64)
        out = table[qi[:, None], ti[None, :]] if len(queries) and len(targets) else np.zeros((len(queries), len(targets)), np.int8)
        index = {t: j for j, t in enumerate(targets)}
        for r, q in enumerate(queries):  # the positive itself is neither a negative nor a false negative
            if (j := index.get((q[2], q[3]))) is not None:
                out[r, j] = -1
        return out


def phenomena_counts(truth: TruthIndex) -> dict[str, dict[str, float]]:
    """Per train subset, per query on average over the global pool (unique targets of all subsets, the
    query's own positive excluded): false negatives (and how many come from another subset only),
    one-attribute hard, other same-type and easy negatives; the share of queries with at least one
    false negative; how many positives are synonyms / paraphrases."""
    targets = list(truth.meaning)
    per_subset: dict[str, list[QueryKey]] = {}
    for q, s in truth.subset.items():
        per_subset.setdefault(s, []).append(q)
    out: dict[str, dict[str, float]] = {}
    fn = RELATIONS.index("false_negative")
    other_subset = np.array([[s not in truth.target_subsets[t] for t in targets] for s in per_subset])
    for si, (subset, queries) in enumerate(per_subset.items()):
        rel = truth.relation_matrix(queries, targets)
        n = len(queries)
        counts = {f"mean_{name}": round(float((rel == i).sum() / n), 3) for i, name in enumerate(RELATIONS)}
        fn_other = int(((rel == fn) & other_subset[si][None, :]).sum())
        variants = Counter(truth.variant.get((q[2], q[3]), "canonical") for q in queries)
        out[subset] = {"queries": n, **counts, "mean_false_negative_other_subset": round(fn_other / n, 3),
                       "share_with_false_negative": round(float((rel == fn).any(axis=1).mean()), 3),
                       "positives_synonym": variants["synonym"], "positives_paraphrase": variants["paraphrase"]}  # fmt: skip
    return out
