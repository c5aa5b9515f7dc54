"""Stage 2 for every configured judge, and their ensemble.

`judge_scores/<name>[subset]`: one asset per judge of the profile, each separately materialized and
resumable (shards keyed by the judge's fingerprint, family, prompt version and content) and each in
the Dagster pool `judging.pool` names (`gpu` by default; none on the embedded default).
`judge_ensemble[subset]`: the judges' scores combined per (query, entry) by `ensemble.rule`, with how
far the judges agree in its metadata and MLflow run. `mined_negatives` reads
the scores `mining.judge` names (`scores_for_mining`): one judge's, or the ensemble's.
"""

import dagster as dg
import numpy as np
import polars as pl

from unime_assets.config import ENSEMBLE, Settings
from unime_assets.defs.assets._common import TRAIN_ITEMS, naming_rows, run_metadata, upstream_run_ids
from unime_assets.defs.metadata import figure, readable, table
from unime_assets.defs.partitions import JUDGE_POOL, JUDGES, check_partition, judge_key, train_partitions
from unime_assets.defs.resources import MlflowResource, SettingsResource
from unime_assets.tracking import plots

# Inputs that may be absent (the IO manager reads them as empty tables): only the selected one must exist.
OPTIONAL = {"optional": True}


def scores_input(name: str) -> str:
    return f"scores_{name}"


def judge_scores_asset(name: str) -> dg.AssetsDefinition:
    @dg.asset(key=judge_key("judge_scores", name), group_name="mining", kinds={"pytorch", "polars"},
              partitions_def=train_partitions, deps=[judge_key("judge_model", name)], pool=JUDGE_POOL,
              description=f"Judge {name!r}: score e^yes/(e^yes+e^no) for (query, positive) and every (query, "
              "candidate); written in resumable shards keyed by the judge, its family, the prompt version and content.")  # fmt: skip
    def _judge_scores(context: dg.AssetExecutionContext, mmeb_train: pl.DataFrame, candidate_pool: pl.DataFrame,
                      candidate_index: pl.DataFrame, settings: SettingsResource, mlflow: MlflowResource):  # fmt: skip
        from unime_assets.defs.assets.models import check_judge_family
        from unime_assets.judging import PROMPT_VERSION, score_candidate_pool, score_quality
        from unime_assets.judging.shards import shard_folder
        from unime_assets.retrieval import INDEX_DIGEST, check_same_index, index_digest

        s = settings.get()
        subset = context.partition_key
        check_partition(s, subset, "train")
        current = index_digest(candidate_index)
        check_same_index(candidate_pool, current, f"candidate_pool[{subset}]")
        spec, path = s.judge_spec(name), s.judge_checkpoint(name)
        family = check_judge_family(spec, path)
        n_pairs = candidate_pool.height + int(candidate_pool["cand_ids"].list.len().sum())
        context.log.info(f"{subset}: judging {n_pairs} pairs with judge {name} ({family}) at {path}")
        last = {"logged": 0}

        def progress(done: int, total: int) -> None:
            if done - last["logged"] >= max(total // 10, 1) or done == total:
                context.log.info(f"judged pairs {done}/{total}")
                last["logged"] = done

        shards = {"reused": 0, "scored": 0}

        def on_shard(index: int, total: int, computed: bool) -> None:
            shards["scored" if computed else "reused"] += 1
            context.log.info(f"shard {index + 1}/{total} " + ("scored" if computed else "reused (finished earlier)"))

        j = s.judging
        backend = spec.backend or j.backend
        with mlflow.run(context) as run:
            run.log_params({"judge": name, "judge_path": path, "family": family, "dtype": spec.dtype,
                            "prompt_version": PROMPT_VERSION, "pairs": n_pairs,
                            **j.model_dump(exclude_none=True), "backend": backend,
                            **upstream_run_ids(context, ["candidate_pool", f"judge_model/{name}"])})  # fmt: skip
            shard_dir = shard_folder(s.asset_dir("judge_scores"), name, subset)
            with naming_rows(f"judge_scores/{name}[{subset}]", mmeb_train, TRAIN_ITEMS, "pair_id"):
                df = score_candidate_pool(mmeb_train, candidate_index, candidate_pool, str(path),
                                          str(s.train_image_root), batch_size=j.batch_size, on_batch=progress,
                                          shard_dir=shard_dir, shard_queries=j.shard_queries, backend=backend,
                                          share_prefix=j.share_prefix, image_cache_mb=j.image_cache_mb,
                                          vllm_options=j.vllm_options(), dtype=spec.dtype,
                                          on_shard=on_shard)  # fmt: skip
            # aligned with the pool's cand_ids, so they carry the index that numbers them (mined_negatives checks)
            df = df.with_columns(pl.lit(current, pl.String).alias(INDEX_DIGEST))
            pos = df["pos_score"].to_numpy()
            cands = [np.asarray(c) for c in df["cand_scores"].to_list()]
            quality = score_quality(pos, cands)
            run.log_metrics(quality)
            flat = np.concatenate(cands) if cands else np.empty(0)
            hist = figure(run, plots.histograms({"positive": pos, "candidates": flat}, f"judge {name} scores"),
                          "scores", "histogram")  # fmt: skip
            if s.maintenance.collect_garbage:  # shards of other judges / prompts / inputs: never read again
                from unime_assets.judging.shards import stale_shards
                from unime_assets.maintenance import Garbage, collect

                stale = stale_shards(shard_dir)
                collect([Garbage(p, "judge_shard", "stale", 0) for p in stale])
                shards["stale_removed"] = len(stale)
            run.log_metrics({f"shards_{k}": v for k, v in shards.items()})
        return dg.Output(df, metadata=readable({"judge": name, "family": family, "pairs": n_pairs, **quality,
                                                **{f"shards_{k}": v for k, v in shards.items()}, **hist,
                                                **run_metadata(run)}))  # fmt: skip

    return _judge_scores


def _held_out_aucs(context: dg.AssetExecutionContext, names: list[str]) -> dict[str, float]:
    """Each judge's held-out IND AUC from the latest `judge_model/<name>` materialization (NaN if none)."""
    out = {}
    for name in names:
        event = context.instance.get_latest_materialization_event(judge_key("judge_model", name))
        meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
        out[name] = float(meta["held_out_auc"].value) if "held_out_auc" in meta else float("nan")
    return out


def _filter_flags(s: Settings, rows, pool: pl.DataFrame) -> list[np.ndarray]:
    """Per query, which candidates the configured mining rule's false-negative filter drops."""
    from unime_assets.mining import MiningParams, survivor_mask

    params = MiningParams.from_settings(s.mining)
    return [~survivor_mask(params, r[1:], r[0], retriever_sims=np.asarray(sims), retriever_positive=pos_sim)
            for r, sims, pos_sim in zip(rows, pool["cand_sims"].to_list(), pool["pos_sim"].to_list(), strict=True)]  # fmt: skip


def _agreement_metadata(run, agree: dict, ensemble_quality: dict) -> tuple[dict, dict]:
    """(Dagster metadata, MLflow metrics) of the agreement numbers, rounded for reading."""
    per = agree["per_judge"]
    judge_rows = [(n, q["auc_pos_vs_candidates"], q["fn_filter_rate"], q["mean_pos_score"], q["mean_cand_score"])
                  for n, q in per.items()]  # fmt: skip
    pair_rows = [(p["judge_a"], p["judge_b"], p["spearman"], p["kendall"],
                  agree["fn_filter_disagreement"][f"{p['judge_a']}|{p['judge_b']}"]) for p in agree["pairwise"]]  # fmt: skip
    judges_table = table(judge_rows, [
        ("judge", "string", "judge name in the settings profile"),
        ("AUC pos vs candidates", "float", "positives against all retrieved candidates, pooled"),
        ("FN filter rate", "float", "share of candidates the mining rule's false-negative filter drops"),
        ("mean positive", "float", "mean score of the (query, positive) pairs"),
        ("mean candidate", "float", "mean score of the (query, candidate) pairs")], digits=4)  # fmt: skip
    pairs_table = table(pair_rows, [
        ("judge a", "string", "first judge"), ("judge b", "string", "second judge"),
        ("Spearman", "float", "rank correlation of their scores over every (query, entry)"),
        ("Kendall τ-b", "float", "Kendall's τ-b over the same entries"),
        ("FN filter disagreement", "float", "share of candidates one judge's filter drops and the other keeps")],
        digits=4)  # fmt: skip
    metrics = {f"auc.{n}": q["auc_pos_vs_candidates"] for n, q in per.items()}
    metrics |= {f"fn_filter_rate.{n}": q["fn_filter_rate"] for n, q in per.items()}
    for p in agree["pairwise"]:
        a, b = p["judge_a"], p["judge_b"]
        metrics |= {f"spearman.{a}.{b}": p["spearman"], f"kendall.{a}.{b}": p["kendall"],
                    f"fn_filter_disagreement.{a}.{b}": agree["fn_filter_disagreement"][f"{a}|{b}"]}  # fmt: skip
    metrics |= {"fn_filter_disagreement": agree["fn_filter_disagreement"]["any"],
                "auc.ensemble": ensemble_quality["auc_pos_vs_candidates"]}  # fmt: skip
    meta = {"per_judge": judges_table, "fn_filter_disagreement": round(metrics["fn_filter_disagreement"], 4),
            "ensemble_auc_pos_vs_candidates": round(ensemble_quality["auc_pos_vs_candidates"], 4)}  # fmt: skip
    if agree["pairwise"]:
        meta["pairwise"] = pairs_table
        first = agree["pairwise"][0]
        meta |= {"spearman": round(first["spearman"], 4), "kendall": round(first["kendall"], 4)}
    run.log_text(pl.DataFrame(judge_rows, orient="row", schema=["judge", "auc", "fn_filter_rate", "mean_pos", "mean_cand"])
                 .write_csv() + "\n" + pl.DataFrame(pair_rows, orient="row", schema=["judge_a", "judge_b", "spearman",
                                                                               "kendall", "fn_disagreement"]).write_csv(),
                 "agreement.csv")  # fmt: skip
    return meta, metrics


def judge_ensemble_asset(judges: list[str]) -> dg.AssetsDefinition:
    ins = {scores_input(n): dg.AssetIn(key=judge_key("judge_scores", n), metadata=OPTIONAL) for n in judges}

    @dg.asset(group_name="mining", kinds={"polars"}, partitions_def=train_partitions, ins=ins,
              description="The judges' scores of each (query, positive) and (query, candidate) combined by "
              "`ensemble.rule` (mean probability, mean logit, rank average, or weighted by held-out AUC); "
              "agreement in metadata: per-judge AUC, pairwise Spearman / Kendall, false-negative filter "
              "disagreement, a scatter of one judge against another.")  # fmt: skip
    def judge_ensemble(context: dg.AssetExecutionContext, candidate_pool: pl.DataFrame, settings: SettingsResource,
                       mlflow: MlflowResource, **scores: pl.DataFrame):  # fmt: skip
        from unime_assets.judging import agreement, align_tables, combine, score_quality, to_table
        from unime_assets.retrieval import INDEX_DIGEST, check_same_index

        s = settings.get()
        check_partition(s, context.partition_key, "train")
        names = s.ensemble_judges
        if missing := [n for n in names if n not in judges]:
            raise ValueError(f"ensemble.judges {missing} are not judges of the code location ({judges}); reload it "
                             "with the same settings file")  # fmt: skip
        if empty := [n for n in names if scores[scores_input(n)].is_empty()]:
            raise ValueError(f"judge_ensemble[{context.partition_key}]: judge_scores of {empty} not materialized")
        digest = candidate_pool[INDEX_DIGEST][0] if INDEX_DIGEST in candidate_pool.columns and candidate_pool.height \
            else None  # fmt: skip
        if digest is not None:  # scores of an older pool are aligned with other cand_ids
            for n in names:
                check_same_index(scores[scores_input(n)], digest, f"judge_scores/{n}[{context.partition_key}]")
        pair_ids, rows = align_tables({n: scores[scores_input(n)] for n in names})
        if pair_ids != candidate_pool["pair_id"].to_list():
            raise ValueError("judge_ensemble: judge scores do not match candidate_pool rows (re-materialize them)")
        rule = s.ensemble.rule
        aucs = _held_out_aucs(context, names) if rule == "auc_weighted" else {}
        combined = combine(rows, rule, aucs)
        df = to_table(pair_ids, combined)
        if digest is not None:
            df = df.with_columns(pl.lit(digest, pl.String).alias(INDEX_DIGEST))
        flags = {n: _filter_flags(s, r, candidate_pool) for n, r in rows.items()}
        agree = agreement(rows, flags)
        ens_quality = score_quality(df["pos_score"].to_numpy(), [np.asarray(c) for c in df["cand_scores"].to_list()])
        with mlflow.run(context) as run:
            run.log_params({"rule": rule, "judges": ",".join(names), "mining_strategy": s.mining.strategy,
                            **{f"held_out_auc.{n}": round(a, 4) for n, a in aucs.items()},
                            **upstream_run_ids(context, [f"judge_scores/{n}" for n in names])})  # fmt: skip
            meta, metrics = _agreement_metadata(run, agree, ens_quality)
            run.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
            if len(names) >= 2:
                flat = {n: np.concatenate(r) for n, r in rows.items()}
                pairs = [(p["judge_a"], p["judge_b"]) for p in agree["pairwise"]][:4]
                meta |= figure(run, plots.scatter_pairs(flat, pairs, "judge scores, every (query, entry)"), "scatter",
                               "scatter")  # fmt: skip
        return dg.Output(df, metadata=readable({"judges": ",".join(names), "rule": rule, "queries": df.height,
                                                **({"reliability_weights": str({n: round(a, 4) for n, a in aucs.items()})}
                                                   if aucs else {}), **meta, **run_metadata(run)}))  # fmt: skip

    return judge_ensemble


def mining_inputs(judges: list[str]) -> dict[str, dg.AssetIn]:
    """Every judge's scores and the ensemble, all optional: `scores_for_mining` picks one."""
    ins = {scores_input(n): dg.AssetIn(key=judge_key("judge_scores", n), metadata=OPTIONAL) for n in judges}
    return {**ins, "judge_ensemble": dg.AssetIn("judge_ensemble", metadata=OPTIONAL)}


def scores_for_mining(s: Settings, scores: dict[str, pl.DataFrame], partition: str) -> tuple[str, str, pl.DataFrame]:
    """(source name, its asset key, its table) for `mining.judge`: a judge's scores or the ensemble's."""
    source = s.mining_judge
    key, table = ("judge_ensemble", scores.get("judge_ensemble")) if source == ENSEMBLE else (
        f"judge_scores/{source}", scores.get(scores_input(source)))  # fmt: skip
    if table is None:
        raise ValueError(f"mining.judge is {source!r} but the code location has no such judge; reload it with the "
                         "same settings file")  # fmt: skip
    if table.is_empty():
        raise ValueError(f"mining.judge is {source!r} but {key}[{partition}] is not materialized; materialize it first")
    return source, key, table


judge_scores = [judge_scores_asset(name) for name in JUDGES]
judge_ensemble = judge_ensemble_asset(JUDGES)
