"""Stages 1-3: global candidate pool (FAISS), judge score matrix, mined hard negatives."""


import dagster as dg
import numpy as np
import polars as pl

from unime_assets import plots
from unime_assets.defs.assets._common import run_metadata, upstream_run_ids
from unime_assets.defs.resources import MlflowResource, SettingsResource
from unime_assets.io import atomic_path, write_parquet


def candidates_path(settings) -> str:
    return str(settings.asset_dir("candidate_pool") / "candidates.parquet")


@dg.asset(group_name="mining", kinds={"faiss", "polars"}, deps=["retriever_model"],
          description="Per query: top-K global candidates by retriever cosine, strictly below the positive (δ rule).")  # fmt: skip
def candidate_pool(context: dg.AssetExecutionContext, mmeb_train: pl.DataFrame, settings: SettingsResource,
                   mlflow: MlflowResource):  # fmt: skip
    import faiss

    from unime_assets.retrieval import build_candidate_pool, make_index

    s = settings.get()
    with mlflow.run(context) as run:
        run.log_params({"retriever": s.retriever_path, "top_k": s.retrieval.top_k, "delta": "positive similarity",
                        **upstream_run_ids(context, ["mmeb_train", "retriever_model"])})  # fmt: skip
        res = build_candidate_pool(mmeb_train, str(s.retriever_path), str(s.train_image_root),
                                   top_k=s.retrieval.top_k, batch_size=s.retrieval.batch_size)  # fmt: skip
        out_dir = s.asset_dir("candidate_pool")
        write_parquet(res.candidates, candidates_path(s))
        for name, arr in (("query_embeddings.npy", res.query_emb), ("candidate_embeddings.npy", res.cand_emb)):
            with atomic_path(out_dir / name) as tmp, open(tmp, "wb") as fh:
                np.save(fh, arr)
        with atomic_path(out_dir / "index.faiss") as tmp:
            faiss.write_index(make_index(res.cand_emb, use_gpu=False), str(tmp))
        n_kept = res.pool["cand_ids"].list.len()
        stats = {"queries": res.pool.height, "pool_size": res.candidates.height,
                 "mean_candidates": float(n_kept.mean()), "min_candidates": int(n_kept.min()),
                 "mean_pos_sim": float(res.pool["pos_sim"].mean())}  # fmt: skip
        run.log_metrics(stats)
        top1 = np.array([s_[0] for s_ in res.pool["cand_sims"].to_list() if len(s_)], dtype=np.float32)
        fig = plots.histograms({"positive": res.pool["pos_sim"].to_numpy(), "top-1 candidate": top1},
                               "retriever cosine", xlabel="cosine")  # fmt: skip
        hist = run.log_figure(fig, "similarities")
    context.log.info(f"pool of {res.candidates.height} candidates; {stats['mean_candidates']:.1f} kept per query")
    return dg.Output(res.pool, metadata={
        **stats, "candidates_table": dg.MetadataValue.path(candidates_path(s)),
        "embeddings_dir": dg.MetadataValue.path(str(out_dir)), "similarities": dg.MetadataValue.md(hist),
        **run_metadata(run),
    })  # fmt: skip


@dg.asset(group_name="mining", kinds={"pytorch", "polars"}, deps=["judge_model"],
          description="Judge score e^yes/(e^yes+e^no) for (query, positive) and every (query, candidate).")  # fmt: skip
def judge_scores(context: dg.AssetExecutionContext, mmeb_train: pl.DataFrame, candidate_pool: pl.DataFrame,
                 settings: SettingsResource, mlflow: MlflowResource):  # fmt: skip
    from unime_assets.judging import PROMPT_VERSION, score_candidate_pool, score_quality

    s = settings.get()
    candidates = pl.read_parquet(candidates_path(s))
    n_pairs = candidate_pool.height + int(candidate_pool["cand_ids"].list.len().sum())
    context.log.info(f"judging {n_pairs} pairs with {s.judge_path}")
    last = {"logged": 0}

    def progress(done: int, total: int) -> None:
        if done - last["logged"] >= max(total // 10, 1) or done == total:
            context.log.info(f"judge batches {done}/{total}")
            last["logged"] = done

    with mlflow.run(context) as run:
        run.log_params({"judge": s.judge_path, "prompt_version": PROMPT_VERSION, "pairs": n_pairs,
                        **upstream_run_ids(context, ["candidate_pool", "judge_model"])})  # fmt: skip
        df = score_candidate_pool(mmeb_train, candidates, candidate_pool, str(s.judge_path), str(s.train_image_root),
                                  batch_size=s.judging.batch_size, on_batch=progress)  # fmt: skip
        pos = df["pos_score"].to_numpy()
        cands = [np.asarray(c) for c in df["cand_scores"].to_list()]
        quality = score_quality(pos, cands)
        run.log_metrics(quality)
        hist = run.log_figure(plots.histograms({"positive": pos, "candidates": np.concatenate(cands)},
                                               "judge scores"), "scores")  # fmt: skip
    return dg.Output(df, metadata={"pairs": n_pairs, **quality, "histogram": dg.MetadataValue.md(hist),
                                   **run_metadata(run)})  # fmt: skip


@dg.asset(group_name="mining", kinds={"polars"},
          description="UniME-V2 sampling: β false-negative filter, 5-step cyclic sampling, fallback 1.0.")  # fmt: skip
def mined_negatives(context: dg.AssetExecutionContext, judge_scores: pl.DataFrame, candidate_pool: pl.DataFrame,
                    settings: SettingsResource, mlflow: MlflowResource):  # fmt: skip
    from unime_assets.mining import mine_table

    s = settings.get()
    m = s.mining
    n_pool = pl.scan_parquet(candidates_path(s)).select(pl.len()).collect().item()
    with mlflow.run(context) as run:
        run.log_params({"strategy": m.strategy, "beta": m.beta, "step": m.step, "k": m.n_negatives, "seed": m.seed,
                        **upstream_run_ids(context, ["judge_scores"])})  # fmt: skip
        df = mine_table(judge_scores, candidate_pool, beta=m.beta, step=m.step, k=m.n_negatives, seed=m.seed,
                        n_pool=n_pool)
        # Kept vs dropped by the false-negative filter, for the plot.
        thr = judge_scores["pos_score"].to_numpy() - m.beta
        flat = [(np.asarray(c), t) for c, t in zip(judge_scores["cand_scores"].to_list(), thr, strict=True)]
        kept = np.concatenate([c[c <= t] for c, t in flat] or [np.empty(0)])
        dropped = np.concatenate([c[c > t] for c, t in flat] or [np.empty(0)])
        stats = {"queries": df.height, "fallback_fraction": float(df["fallback"].mean()),
                 "mean_survivors": float(df["n_survivors"].mean()),
                 "false_negative_filter_rate": float(len(dropped) / max(len(kept) + len(dropped), 1)),
                 "mean_negative_score": float(np.mean(np.concatenate(df["neg_scores"].to_list())))}  # fmt: skip
        run.log_metrics(stats)
        hist = run.log_figure(plots.histograms({"kept": kept, "dropped (false negatives)": dropped},
                                               "judge scores of candidates"), "kept_vs_dropped")  # fmt: skip
    return dg.Output(df, metadata={**stats, "kept_vs_dropped": dg.MetadataValue.md(hist), **run_metadata(run)})
