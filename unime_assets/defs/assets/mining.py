"""Stages 1 and 3: global candidate index, per-subset candidate pool (FAISS, δ rule), mined hard
negatives (from one judge's scores or the ensemble's: defs/assets/judges.py has stage 2), and the
training set the embedder and reranker read."""

import dagster as dg
import numpy as np
import polars as pl

from unime_assets.defs.assets._common import TRAIN_ITEMS, naming_rows, run_metadata, upstream_run_ids
from unime_assets.defs.assets.data import concat_partitions
from unime_assets.defs.assets.judges import mining_inputs, scores_for_mining
from unime_assets.defs.metadata import figure, readable, table
from unime_assets.defs.partitions import JUDGES, check_partition, train_partitions
from unime_assets.defs.resources import MlflowResource, SettingsResource
from unime_assets.tracking import plots


@dg.asset(group_name="mining", kinds={"faiss", "polars"}, deps=["retriever_model"],
          description="Global pool: every unique (text, image) target of all training subsets, embedded by the "
          "retriever (cached by model and content) and indexed with FAISS.")  # fmt: skip
def candidate_index(context: dg.AssetExecutionContext, mmeb_train: dict[str, pl.DataFrame], settings: SettingsResource,
                    mlflow: MlflowResource):  # fmt: skip
    from unime_assets.retrieval import build_candidate_index

    s = settings.get()
    r = s.retrieval
    train = concat_partitions(mmeb_train)
    with mlflow.run(context) as run:
        run.log_params({"retriever": s.retriever_path, "subsets": ",".join(mmeb_train), **r.model_dump(),
                        **upstream_run_ids(context, ["retriever_model"])})  # fmt: skip
        with naming_rows("candidate_index", train, TRAIN_ITEMS, "pair_id"):
            res = build_candidate_index(train, str(s.retriever_path), str(s.train_image_root),
                                    s.asset_dir("candidate_index"), cache_dir=s.asset_dir("embedding_cache"),
                                    index_kind=r.index_kind, batch_size=r.batch_size, use_gpu=r.use_gpu,
                                        nlist=r.nlist, nprobe=r.nprobe, hnsw_m=r.hnsw_m,
                                        ef_construction=r.ef_construction, ef_search=r.ef_search)  # fmt: skip
        stats = {"pool_size": res.candidates.height, "subsets": len(mmeb_train), **res.stats}
        if s.maintenance.collect_garbage:  # orphan temp files, stale shards, namespaces of retrained models
            from unime_assets.config import unime_home
            from unime_assets.defs.recovery import collect_artifacts

            found, freed = collect_artifacts(s, unime_home() / "assets" / "tables")
            stats.update(garbage_items=len(found), garbage_mib=round(freed / 2**20, 2))
            for g in found:
                context.log.info(f"removed {g.kind} {g.path}: {g.reason}")
        run.log_metrics({k: v for k, v in stats.items() if isinstance(v, int | float)})
    context.log.info(f"candidate index: {stats}")
    return dg.Output(res.candidates, metadata=readable({**stats, "index_dir": dg.MetadataValue.path(str(res.out_dir)),
                                                        **run_metadata(run)}))  # fmt: skip


def truth_matrices(s, train_part: pl.DataFrame, candidates: pl.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """(false negatives, one-attribute hard negatives): (queries of `train_part`, global candidates)
    booleans from the generator's ground truth (`truth_file`); None for data without one."""
    if s.truth_file is None:
        return None
    from unime_assets.data.synthetic import RELATIONS, TruthIndex

    truth = TruthIndex.read(s.truth_file)
    queries = list(train_part.select("qry", "qry_image_path", "pos_text", "pos_image_path").iter_rows())
    rel = truth.relation_matrix(queries, list(candidates.select("text", "image_path").iter_rows()))
    return rel == RELATIONS.index("false_negative"), rel == RELATIONS.index("hard")


def _delta_audit(s, train_part: pl.DataFrame, pool: pl.DataFrame) -> dict:
    """What the δ rule removed against the ground truth: per query, precision, recall (truth_file only)."""
    from unime_assets.retrieval import CandidateIndex, Retriever, delta_rule_audit, encode_cached
    from unime_assets.retrieval.encoder import items_of

    if s.truth_file is None or pool.is_empty():  # real data: no ground truth, nothing to load
        return {}
    ci = CandidateIndex.load(s.asset_dir("candidate_index"))
    matrices = truth_matrices(s, train_part, ci.candidates)
    q_emb, _ = encode_cached(items_of(train_part["qry"], train_part["qry_image_path"]), Retriever(s.retriever_path),
                             s.train_image_root, cache_dir=s.asset_dir("embedding_cache"), progress=False)  # fmt: skip
    audit = delta_rule_audit(q_emb, np.asarray(ci.embeddings), pool["pos_cand_id"].to_numpy(), matrices[0])
    kept = pool["cand_ids"].to_list()
    n_kept = sum(len(x) for x in kept)
    fn_kept = sum(int(matrices[0][i, np.asarray(x, dtype=np.int64)].sum()) for i, x in enumerate(kept) if x)
    hard_kept = sum(int(matrices[1][i, np.asarray(x, dtype=np.int64)].sum()) for i, x in enumerate(kept) if x)
    return {**audit, "pool_false_negative_share": round(fn_kept / n_kept, 4) if n_kept else None,
            "pool_hard_share": round(hard_kept / n_kept, 4) if n_kept else None}  # fmt: skip


@dg.asset(group_name="mining", kinds={"faiss", "polars"}, partitions_def=train_partitions,
          description="Per query of one subset: top-K global candidates by retriever cosine, strictly below the "
          "query's own positive (δ rule), the positive and its exact duplicates excluded. With a ground truth "
          "(synthetic data): how many true false negatives the δ rule removed (precision, recall).")  # fmt: skip
def candidate_pool(context: dg.AssetExecutionContext, mmeb_train: pl.DataFrame, candidate_index: pl.DataFrame,
                   settings: SettingsResource, mlflow: MlflowResource):  # fmt: skip
    from unime_assets.retrieval import search_candidate_pool

    s = settings.get()
    r = s.retrieval
    check_partition(s, context.partition_key, "train")
    with mlflow.run(context) as run:
        run.log_params({"retriever": s.retriever_path, "top_k": s.retrieval.top_k, "delta": "positive similarity",
                        **upstream_run_ids(context, ["candidate_index"])})  # fmt: skip
        with naming_rows(f"candidate_pool[{context.partition_key}]", mmeb_train, TRAIN_ITEMS, "pair_id"):
            pool, stats = search_candidate_pool(mmeb_train, s.asset_dir("candidate_index"), str(s.retriever_path),
                                                str(s.train_image_root), cache_dir=s.asset_dir("embedding_cache"),
                                                top_k=r.top_k, batch_size=r.batch_size, chunk=r.search_chunk,
                                                use_gpu=r.use_gpu, nprobe=r.nprobe, ef_search=r.ef_search)  # fmt: skip
        from unime_assets.retrieval import INDEX_DIGEST, index_digest

        if pool.height and pool[INDEX_DIGEST][0] != index_digest(candidate_index):  # searched != the stored table
            raise ValueError(f"candidate_index: the index folder {s.asset_dir('candidate_index')} and the stored "
                             "candidate table differ (its last materialization did not finish): re-materialize "
                             "candidate_index")  # fmt: skip
        n_kept = pool["cand_ids"].list.len()
        stats = {**stats, "queries": pool.height, "mean_candidates": float(n_kept.mean()),
                 "min_candidates": int(n_kept.min()), "mean_pos_sim": float(pool["pos_sim"].mean())}  # fmt: skip
        audit = _delta_audit(s, mmeb_train, pool)
        stats.update({k: v for k, v in audit.items() if v is not None})
        run.log_metrics({k: v for k, v in stats.items() if isinstance(v, int | float)})
        top1 = np.array([x[0] for x in pool["cand_sims"].to_list() if len(x)], dtype=np.float32)
        fig = plots.histograms({"positive": pool["pos_sim"].to_numpy(), "top-1 candidate": top1},
                               "retriever cosine", xlabel="cosine")  # fmt: skip
        hist = figure(run, fig, "similarities", "similarities")
    return dg.Output(pool, metadata=readable({**stats, **hist, **run_metadata(run)}))


def mined_negatives_asset(judges: list[str]) -> dg.AssetsDefinition:
    @dg.asset(group_name="mining", kinds={"polars"}, partitions_def=train_partitions, ins=mining_inputs(judges),
              description="Hard negatives per query by the configured strategy (UniME-V2: β false-negative filter, "
              "5-step cyclic sampling, fallback 1.0; or NV-Retriever / rank-window / top / random), from the scores "
              "`mining.judge` names: one judge's or the judge ensemble's. With a ground truth (synthetic data): "
              "per rule, the true false negatives its filter removed (precision, recall) and what the trained "
              "negatives are made of.")  # fmt: skip
    def mined_negatives(context: dg.AssetExecutionContext, mmeb_train: pl.DataFrame, candidate_pool: pl.DataFrame,
                        candidate_index: pl.DataFrame, settings: SettingsResource, mlflow: MlflowResource,
                        **scores: pl.DataFrame):  # fmt: skip
        from unime_assets.mining import filter_rates, kept_and_dropped, mine_table
        from unime_assets.retrieval import INDEX_DIGEST, check_same_index, index_digest

        s = settings.get()
        check_partition(s, context.partition_key, "train")
        current = index_digest(candidate_index)
        check_same_index(candidate_pool, current, f"candidate_pool[{context.partition_key}]")
        source, key, judge_scores = scores_for_mining(s, scores, context.partition_key)
        check_same_index(judge_scores, current, f"{key}[{context.partition_key}]")
        m = s.mining
        with mlflow.run(context) as run:
            run.log_params({**m.model_dump(), "judge": source, **upstream_run_ids(context, [key])})
            df = mine_table(judge_scores, candidate_pool, m, n_pool=candidate_index.height)
            # Training reads the positive's score from the same source as the negatives' scores.
            # ... and the index its cand_ids number, which training_set checks against the current one.
            df = df.with_columns(pl.Series("pos_score", judge_scores["pos_score"], pl.Float64),
                                 pl.lit(source, pl.String).alias("judge"),
                                 pl.lit(current, pl.String).alias(INDEX_DIGEST))  # fmt: skip
            kept, dropped = kept_and_dropped(judge_scores, candidate_pool, m)
            stats = {"queries": df.height, "fallback_fraction": float(df["fallback"].mean()),
                     "mean_survivors": float(df["n_survivors"].mean()),
                     "false_negative_filter_rate": float(len(dropped) / max(len(kept) + len(dropped), 1)),
                     "mean_negative_score": float(np.mean(np.concatenate(df["neg_scores"].to_list())))}  # fmt: skip
            # The false-negative filter rate every rule would have on these scores, beside the chosen one's.
            rates = filter_rates(judge_scores, candidate_pool, m)
            run.log_metrics({f"filter_rate.{k}": v for k, v in rates.items()})
            rates_table = table([(k, 100 * v) for k, v in rates.items()],
                                [("strategy", "string", "mining rule (its false-negative filter only)"),
                                 ("filtered (%)", "float", "share of all retrieved candidates the rule's filter drops")],
                                digits=1)  # fmt: skip
            run.log_metrics(stats)
            hist = figure(run, plots.histograms({"kept": kept, "dropped (false negatives)": dropped},
                                                f"{source} scores of candidates ({m.strategy})"), "kept_vs_dropped",
                          "kept_vs_dropped")  # fmt: skip
            truth_meta = _rule_audit(s, run, mmeb_train, candidate_pool, candidate_index, judge_scores)
        return dg.Output(df, metadata=readable({**stats, "strategy": m.strategy, "judge": source, **hist,
                                                "filter_rate_by_strategy": rates_table, **truth_meta,
                                                 **run_metadata(run)}))  # fmt: skip

    return mined_negatives


RULE_AUDIT_COLUMNS = {
    "rule": "mining rule (the first row is the configured one)",
    "removed_per_query": "candidates its false-negative filter removes per query",
    "filter_precision": "share of the removed candidates that are true false negatives (generator's truth)",
    "filter_recall": "share of the true false negatives in the pool that the filter removes",
    "negatives_false_negative_share": "share of the k training negatives that are true false negatives",
    "negatives_hard_share": "share of the k training negatives that differ from the positive in one attribute",
}


def _rule_audit(s, run, train_part, pool, candidates, judge_scores) -> dict:
    """Per rule, against the generator's ground truth (truth_file only): the filter's removed per query,
    precision and recall, and the false-negative / hard shares of the k negatives training reads."""
    from unime_assets.mining import AUDIT_RULES, rule_audit

    if train_part["pair_id"].to_list() != pool["pair_id"].to_list():
        raise ValueError("mined_negatives: mmeb_train and candidate_pool rows differ (re-materialize candidate_pool)")
    matrices = truth_matrices(s, train_part, candidates)
    if matrices is None:
        return {}
    rules = list(dict.fromkeys([s.mining.strategy, *AUDIT_RULES]))
    rows = rule_audit(judge_scores, pool, *matrices, s.mining, rules=rules, k=s.embedder.k_negatives,
                      n_pool=candidates.height)  # fmt: skip
    cols = ["rule", "removed_per_query", "filter_precision", "filter_recall", "negatives_false_negative_share",
            "negatives_hard_share"]  # fmt: skip
    from unime_assets.evaluation.report import markdown_table

    cells = [["–" if r[c] is None else str(r[c]) for c in cols] for r in rows]
    run.log_text(markdown_table(cols, cells), "false_negatives_by_rule.md")
    mine = rows[0]  # the configured rule
    scalars = {f"truth.{k}": v for k, v in mine.items() if isinstance(v, float)}
    run.log_metrics(scalars)
    return {**{k: v for k, v in scalars.items() if v is not None},
            "false_negatives_by_rule": table([[r[c] for c in cols] for r in rows], [(c, "string" if c == "rule" else "float", RULE_AUDIT_COLUMNS[c])
                                                     for c in cols])}  # fmt: skip


mined_negatives = mined_negatives_asset(JUDGES)


# Optional inputs: with an imported official score file the training set needs none of stages 1-3.
_OPTIONAL = {"optional": True}


@dg.asset(group_name="mining", kinds={"polars", "json"},
          ins={n: dg.AssetIn(n, metadata=_OPTIONAL) for n in ("mmeb_train", "mined_negatives", "candidate_index")},
          description="What the embedder and reranker train on: per query the positive and its negatives with "
          "judge scores, from this pipeline's mined_negatives or an imported official UniME-V2 score file; "
          "also exported in the official JSON format.")  # fmt: skip
def training_set(context: dg.AssetExecutionContext, mmeb_train: dict[str, pl.DataFrame],
                 mined_negatives: dict[str, pl.DataFrame], candidate_index: pl.DataFrame,
                 settings: SettingsResource, mlflow: MlflowResource):  # fmt: skip
    from unime_assets.data import unime_scores
    from unime_assets.training.data import build_training_set

    s = settings.get()
    src = s.training_data
    out_dir = s.asset_dir("training_set")
    with mlflow.run(context) as run:
        if src.source == "official":
            records = unime_scores.read(src.official_scores_file)
            # before any training: k negatives per record, every image inside the train image root
            unime_scores.check_usable(records, str(src.official_scores_file), k_negatives=s.embedder.k_negatives,
                                      image_root=s.train_image_root, check_images=s.validation.check_images)  # fmt: skip
            imported = unime_scores.to_pipeline_tables(records,
                                                       default_subset=src.official_default_subset,
                                                       source=str(src.official_scores_file))  # fmt: skip
            df = build_training_set(
                imported.train, imported.candidates, imported.judge_scores, imported.mined
            )
            run.log_params({"source": "official", "file": src.official_scores_file,
                            "duplicates_dropped": imported.n_duplicates})  # fmt: skip
        else:
            if not mined_negatives:
                raise ValueError(
                    "training_data.source is 'mined' but no mined_negatives partition is materialized"
                )
            from unime_assets.retrieval import check_same_index, index_digest

            current = index_digest(candidate_index)
            for part, mined_part in mined_negatives.items():
                check_same_index(mined_part, current, f"mined_negatives[{part}]")
            mined = concat_partitions(mined_negatives)
            if "pos_score" not in mined.columns:
                raise ValueError("mined_negatives partitions predate judge selection (no pos_score column); "
                                 "re-materialize mined_negatives")  # fmt: skip
            judges = sorted(set(mined["judge"]))
            df = build_training_set(concat_partitions(mmeb_train), candidate_index, mined.select("pair_id", "pos_score"),
                                    mined)  # fmt: skip
            run.log_params({"source": "mined", "strategy": s.mining.strategy, "judge": ",".join(judges),
                            **upstream_run_ids(context, ["mined_negatives", "candidate_index"])})  # fmt: skip
            if len(judges) > 1:
                context.log.warning(f"training_set: mined_negatives partitions were mined from different judges {judges}")
        if df.is_empty():
            raise ValueError(
                "training set is empty: no mined_negatives partitions or no records in the score file"
            )
        export = out_dir / "unime_v2_scores.json"
        unime_scores.write(unime_scores.from_training_set(df), export)
        counts = df.group_by("subset", maintain_order=True).agg(pl.len().alias("queries"),
                                                                pl.col("fallback").mean().alias("fallback"))  # fmt: skip
        run.log_metrics({"queries": df.height, "subsets": counts.height})
        run.log_text(counts.write_csv(), "subsets.csv")
    per_subset = table(counts.rows(), [("subset", "string", "MMEB-train subset"),
                                       ("queries", "int", "training queries from the subset"),
                                       ("fallback", "float", "fraction of its queries with random fallback negatives")])  # fmt: skip
    return dg.Output(df, metadata={"queries": df.height, "source": src.source, "per_subset": per_subset,
                                   "official_format_export": dg.MetadataValue.path(str(export)), **run_metadata(run)})  # fmt: skip
