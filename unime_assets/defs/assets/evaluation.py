"""Stage 6: MMEB Precision@1 per subset and aggregates, embedder alone and with the reranker."""

import dagster as dg
import polars as pl

from unime_assets import plots
from unime_assets.defs.assets._common import markdown_table, run_metadata, upstream_run_ids
from unime_assets.defs.assets.data import concat_partitions
from unime_assets.defs.resources import MlflowResource, SettingsResource
from unime_assets.evaluation import AGGREGATE_KEYS as AGG_KEYS


@dg.asset(group_name="evaluation", kinds={"polars", "mlflow"},
          deps=["retriever_model", "embedder_checkpoint", "reranker_checkpoint"],
          description="MMEB V1 protocol: per-row cosine ranking, P@1 (ties to the ground truth), means per "
          "meta-task / IND / OOD / overall (mean over datasets); retriever and untrained base as baselines.")  # fmt: skip
def mmeb_report(context: dg.AssetExecutionContext, mmeb_eval: dict[str, pl.DataFrame], settings: SettingsResource,
                mlflow: MlflowResource):  # fmt: skip
    from unime_assets.evaluation import aggregate
    from unime_assets.mmeb_runner import evaluate_model, rerank_subset
    from unime_assets.models.encoding import ImageLoader
    from unime_assets.models.loading import load_model

    s = settings.get()
    ev = s.evaluation
    evaluated = list(mmeb_eval)
    mmeb_eval = concat_partitions(mmeb_eval)
    info = s.eval_catalog
    models = {
        "retriever": s.retriever_path,
        "embedder (untrained base)": s.embedder_base.path,
        "embedder": s.asset_dir("embedder_checkpoint"),
    }
    per_model: dict[str, dict[str, float]] = {}
    embedder_rows = {}
    for label, path in models.items():
        context.log.info(f"evaluating {label} ({path})")
        lm = load_model(path, role=label)
        results = evaluate_model(lm, mmeb_eval, str(s.eval_image_root), image_size=ev.image_size,
                                 batch_size=ev.batch_size, log=context.log.info)  # fmt: skip
        per_model[label] = {k: v.precision_at_1 for k, v in results.items()}
        if label == "embedder":
            embedder_rows = {k: v.row_scores for k, v in results.items()}
        del lm
    unparsable = 0
    if ev.rerank:
        label = f"embedder + reranker (top-{ev.rerank_top_k} listwise)"
        reranker = load_model(s.asset_dir("reranker_checkpoint"), role="reranker")
        images = ImageLoader(str(s.eval_image_root), resize=ev.image_size)
        per_model[label] = {}
        for subset, rows in mmeb_eval.group_by("subset", maintain_order=True):
            name = str(subset[0])
            outcome = rerank_subset(reranker, rows, embedder_rows[name], images, top_k=ev.rerank_top_k,
                                    batch_size=ev.rerank_batch_size)  # fmt: skip
            per_model[label][name] = outcome.precision_at_1
            unparsable += outcome.unparsable
            context.log.info(
                f"{name}: reranked P@1 {outcome.precision_at_1:.3f} ({outcome.unparsable} unparsable)"
            )
    table = pl.DataFrame(
        [
            {
                "subset": n,
                "meta_task": info[n].meta_task,
                "split": info[n].split,
                "model": m,
                "precision_at_1": p,
            }
            for m, scores in per_model.items()
            for n, p in scores.items()
        ]
    )
    aggregates = {m: aggregate(scores, info) for m, scores in per_model.items()}
    names = list(next(iter(per_model.values())))
    per_dataset_md = markdown_table(
        ["subset", "meta-task", "split", *per_model],
        [
            (n, info[n].meta_task, info[n].split, *(round(100 * per_model[m][n], 1) for m in per_model))
            for n in names
        ],
    )
    agg_md = markdown_table(["model", *AGG_KEYS], [(m, *(round(100 * a[k], 1) for k in AGG_KEYS))
                                                   for m, a in aggregates.items()])  # fmt: skip
    with mlflow.run(context) as run:
        run.log_params({"image_size": ev.image_size, "rerank_top_k": ev.rerank_top_k, "subsets": ",".join(evaluated),
                        "complete": set(evaluated) == set(s.eval_subset_names),
                        **upstream_run_ids(context, ["embedder_checkpoint", "reranker_checkpoint", "mmeb_eval"])})  # fmt: skip
        for m, agg in aggregates.items():
            slug = m.split(" (")[0].replace(" + ", "_plus_").replace(" ", "_")
            run.log_metrics({f"{slug}.{k}": 100 * v for k, v in agg.items()})
            run.log_metrics({f"{slug}.p_at_1.{n}": 100 * p for n, p in per_model[m].items()})
        run.log_metrics({"rerank_unparsable": unparsable})
        run.log_text(per_dataset_md + "\n\n" + agg_md, "report.md")
        bars = run.log_figure(plots.grouped_bars({m: {k: 100 * a[k] for k in AGG_KEYS} for m, a in aggregates.items()},
                                                 "MMEB-format P@1"), "aggregates")  # fmt: skip
    overall = {m: round(100 * a["overall"], 2) for m, a in aggregates.items()}
    context.log.info(f"overall P@1: {overall}")
    return dg.Output(table, metadata={
        "per_dataset": dg.MetadataValue.md(per_dataset_md), "aggregates": dg.MetadataValue.md(agg_md),
        "chart": dg.MetadataValue.md(bars), "overall": dg.MetadataValue.json(overall),
        "rerank_unparsable": unparsable, **run_metadata(run),
    })  # fmt: skip
