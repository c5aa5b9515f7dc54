"""Asset checks: the data contracts between stages, verified on every materialization."""

import dagster as dg
import numpy as np
import polars as pl

from unime_assets.defs.assets.data import mmeb_eval, mmeb_train
from unime_assets.defs.assets.evaluation import mmeb_report
from unime_assets.defs.assets.judges import judge_ensemble
from unime_assets.defs.assets.mining import candidate_pool, mined_negatives
from unime_assets.defs.metadata import readable
from unime_assets.defs.partitions import JUDGES, judge_key
from unime_assets.defs.resources import SettingsResource


def _result(bad: int, total: int, what: str, **meta) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=bad == 0, metadata=readable({"violations": bad, "rows": total, "rule": what, **meta})
    )


@dg.asset_check(
    asset=mmeb_eval, blocking=True, description="Every row has candidates and aligned text/image lists."
)
def eval_rows_well_formed(mmeb_eval: pl.DataFrame) -> dg.AssetCheckResult:
    n_text, n_img = mmeb_eval["tgt_text"].list.len(), mmeb_eval["tgt_img_path"].list.len()
    bad = int(((n_text != n_img) | (n_text == 0)).sum())
    return _result(bad, mmeb_eval.height, "len(tgt_text) == len(tgt_img_path) > 0")


@dg.asset_check(asset=mmeb_train, blocking=True,
                description="Stored rows are clean: unique pair_id, every query and positive has text or an image.")  # fmt: skip
def train_rows_well_formed(mmeb_train: pl.DataFrame) -> dg.AssetCheckResult:
    def empty(text: str, image: str) -> pl.Expr:
        return (pl.col(text).str.strip_chars() == "") & (pl.col(image) == "")

    dup = mmeb_train.height - mmeb_train["pair_id"].n_unique()
    empty_rows = int(mmeb_train.select((empty("qry", "qry_image_path") | empty("pos_text", "pos_image_path")).sum()).item())
    return _result(dup + empty_rows, mmeb_train.height, "unique pair_id; text or image on both sides",
                   duplicates=dup, empty_sides=empty_rows)  # fmt: skip


@dg.asset_check(asset=candidate_pool, blocking=True,
                description="δ rule: every kept candidate is strictly less similar than the positive, "
                "and the positive itself is never a candidate.")  # fmt: skip
def delta_rule_holds(candidate_pool: pl.DataFrame, settings: SettingsResource) -> dg.AssetCheckResult:
    bad = 0
    for pos_id, ids, sims, pos_sim in candidate_pool.select(
        "pos_cand_id", "cand_ids", "cand_sims", "pos_sim"
    ).iter_rows():
        bad += int(
            pos_id in ids or any(x >= pos_sim for x in sims) or len(ids) > settings.get().retrieval.top_k
        )
    return _result(bad, candidate_pool.height, "cand_sims < pos_sim, positive excluded, at most top_k")


def _scores_valid(judge_scores: pl.DataFrame, candidate_pool: pl.DataFrame) -> dg.AssetCheckResult:
    aligned = judge_scores["cand_scores"].list.len() == candidate_pool["cand_ids"].list.len()
    flat = np.concatenate(
        [judge_scores["pos_score"].to_numpy(), *map(np.asarray, judge_scores["cand_scores"].to_list())]
    )
    out_of_range = int(((flat < 0) | (flat > 1) | ~np.isfinite(flat)).sum())
    return _result(int((~aligned).sum()) + out_of_range, judge_scores.height, "0 <= score <= 1 and aligned",
                   out_of_range=out_of_range)  # fmt: skip


def judge_scores_check(name: str) -> dg.AssetChecksDefinition:
    """`judge_scores_valid` on `judge_scores/<name>`."""

    @dg.asset_check(asset=judge_key("judge_scores", name), name="judge_scores_valid", blocking=True,
                    additional_ins={"candidate_pool": dg.AssetIn("candidate_pool")},
                    description="Scores are probabilities and align one-to-one with the retrieved candidates.")  # fmt: skip
    def _check(judge_scores: pl.DataFrame, candidate_pool: pl.DataFrame) -> dg.AssetCheckResult:
        return _scores_valid(judge_scores, candidate_pool)

    return _check


judge_scores_valid = [judge_scores_check(name) for name in JUDGES]


@dg.asset_check(asset=judge_ensemble, blocking=True, additional_ins={"candidate_pool": dg.AssetIn("candidate_pool")},
                description="Combined scores are in [0, 1] and align one-to-one with the retrieved candidates.")  # fmt: skip
def judge_ensemble_valid(judge_ensemble: pl.DataFrame, candidate_pool: pl.DataFrame) -> dg.AssetCheckResult:
    return _scores_valid(judge_ensemble, candidate_pool)


@dg.asset_check(asset=mined_negatives, blocking=True, additional_ins={"candidate_pool": dg.AssetIn("candidate_pool")},
                description="Exactly k negatives per query, scores in [0, 1], no negative is the query's positive.")  # fmt: skip
def mined_negatives_valid(mined_negatives: pl.DataFrame, candidate_pool: pl.DataFrame,
                          settings: SettingsResource) -> dg.AssetCheckResult:  # fmt: skip
    k = settings.get().mining.n_negatives
    wrong_k = int((mined_negatives["neg_cand_ids"].list.len() != k).sum())
    scores = np.concatenate([np.asarray(s) for s in mined_negatives["neg_scores"].to_list()])
    bad_scores = int(((scores < 0) | (scores > 1)).sum())
    is_pos = sum(int(p in ids) for p, ids in zip(candidate_pool["pos_cand_id"], mined_negatives["neg_cand_ids"],
                                                  strict=True))  # fmt: skip
    return _result(wrong_k + bad_scores + is_pos, mined_negatives.height, f"k == {k}, 0 <= score <= 1, neg != pos",
                   wrong_k=wrong_k, scores_out_of_range=bad_scores, negative_is_positive=is_pos,
                   fallback_fraction=float(mined_negatives["fallback"].mean()))  # fmt: skip


@dg.asset_check(asset=mmeb_report, description="Every model has exactly one Precision@1 in [0, 1] per evaluated "
                "subset, and all models cover the same subsets with their catalog meta-task and split.")  # fmt: skip
def mmeb_report_well_formed(mmeb_report: pl.DataFrame, settings: SettingsResource) -> dg.AssetCheckResult:
    info = settings.get().eval_catalog
    dup = mmeb_report.height - mmeb_report.select("subset", "model").n_unique()
    bad_p = int((~mmeb_report["precision_at_1"].is_between(0.0, 1.0)).sum())
    subsets_by_model = {m: set(g["subset"]) for (m,), g in mmeb_report.group_by("model")}
    all_subsets = set(mmeb_report["subset"])
    uneven = sum(int(v != all_subsets) for v in subsets_by_model.values())
    wrong_info = sum(int(n not in info or (info[n].meta_task, info[n].split) != (t, sp))
                     for n, t, sp in mmeb_report.select("subset", "meta_task", "split").unique().iter_rows())  # fmt: skip
    return _result(dup + bad_p + uneven + wrong_info, mmeb_report.height,
                   "one P@1 in [0, 1] per (subset, model); same subsets for every model; catalog meta-task/split",
                   duplicates=dup, out_of_range=bad_p, models_missing_subsets=uneven, wrong_meta=wrong_info,
                   models=len(subsets_by_model), subsets=len(all_subsets))  # fmt: skip
