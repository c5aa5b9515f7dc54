"""Stage 6: MMEB Precision@1 per subset and aggregates, embedder alone and with the reranker, optional
zero-shot sets, and the `champion` promotion of the evaluated embedder."""

import re

import dagster as dg
import polars as pl

from unime_assets.defs.assets._common import naming_rows, run_metadata, upstream_run_ids
from unime_assets.defs.assets.data import concat_partitions
from unime_assets.defs.descriptions import describe_evaluation
from unime_assets.defs.metadata import figure, readable, rows_table
from unime_assets.defs.resources import MlflowResource, SettingsResource
from unime_assets.evaluation import AGGREGATE_KEYS as AGG_KEYS
from unime_assets.tracking import plots

EMBEDDER_MODEL = "unime-v2-embedder"  # the registry name defs/assets/training.py registers under
CHAMPION_CHECK = "champion_comparison"
TRAINED_CHECK = "embedder_differs_from_base"
EVAL_ITEMS = [("qry_text", "qry_img_path"), ("tgt_text", "tgt_img_path")]
# Run tag naming the registered version to evaluate; the same string as defs/automation.py VERSION_TAG
# (the `evaluate_new_embedder` sensor sets it).
VERSION_TAG = "unime/embedder_version"


PER_DATASET_COLUMNS = {"dataset": "MMEB-eval subset", "meta-task": "classification, vqa, retrieval or grounding",
                       "split": "IND (a train subset of the task exists) or OOD",
                       "*": "Precision@1 (%) on the dataset; '(published)': the number the paper or its leaderboard "
                       "reports"}  # fmt: skip
AGGREGATE_COLUMNS = {"model": "our models, then published numbers (same datasets when the evaluation is partial)",
                     "Cls": "mean P@1 (%) over the classification datasets", "VQA": "mean P@1 (%) over the VQA datasets",
                     "Ret": "mean P@1 (%) over the retrieval datasets", "Grd": "mean P@1 (%) over the grounding datasets",
                     "IND": "mean P@1 (%) over the in-distribution datasets", "OOD": "mean P@1 (%) over the OOD datasets",
                     "overall": "mean P@1 (%) over all evaluated datasets (MMEB convention)",
                     "datasets": "datasets evaluated (of those configured)"}  # fmt: skip


def _slug(label: str) -> str:
    """MLflow metric prefix of a report row: every row its own ("embedder (untrained base)" ->
    "embedder_untrained_base", "embedder + reranker (top-10 pairwise)" -> "embedder_plus_reranker_top_10_pairwise")."""
    return re.sub(r"[^0-9A-Za-z]+", "_", label.replace(" + ", " plus ")).strip("_")


def _embedder_version(context: dg.AssetExecutionContext, tracking_uri: str) -> str | None:
    """The registry version of the on-disk embedder checkpoint: the one the latest embedder_checkpoint
    materialization registered, else the `candidate` alias."""
    from unime_assets.evaluation.promotion import CANDIDATE, alias_version

    event = context.instance.get_latest_materialization_event(dg.AssetKey("embedder_checkpoint"))
    meta = event.asset_materialization.metadata if event is not None and event.asset_materialization else {}
    if "model_version" in meta:
        return str(meta["model_version"].value)
    mv = alias_version(tracking_uri, EMBEDDER_MODEL, CANDIDATE)
    return str(mv.version) if mv is not None else None


def _embedder_under_test(context: dg.AssetExecutionContext, s, tracking_uri: str):
    """(checkpoint path, registry version) of the embedder to evaluate: the version a run was launched
    for (sensor tag), downloaded from the registry unless it is the checkpoint on disk; else the
    checkpoint on disk and its version."""
    from unime_assets.evaluation.promotion import download_checkpoint

    on_disk = s.asset_dir("embedder_checkpoint")
    disk_version = _embedder_version(context, tracking_uri)
    tagged = context.run.tags.get(VERSION_TAG)
    if tagged and tagged != disk_version:
        context.log.info(f"evaluating {EMBEDDER_MODEL} version {tagged} (run tag {VERSION_TAG})")
        return download_checkpoint(
            tracking_uri, EMBEDDER_MODEL, tagged, s.asset_dir("registry_models")
        ), tagged
    return on_disk, disk_version


@dg.asset(group_name="evaluation", kinds={"polars", "mlflow"},
          deps=["pretrained_base", "retriever_model", "embedder_checkpoint", "reranker_checkpoint"],
          check_specs=[dg.AssetCheckSpec(CHAMPION_CHECK, asset="mmeb_report",
                                         description="The evaluated embedder against the registry's `champion` on "
                                         "the same eval subsets; `champion` moves to it when it is strictly better "
                                         "on a complete evaluation (never on a partial one)."),
                       dg.AssetCheckSpec(TRAINED_CHECK, asset="mmeb_report",
                                         description="The evaluated embedder's weights differ from the untrained "
                                         "base's (else the report scores the base twice; never promoted).")],
          description="MMEB V1 protocol: per-row cosine ranking, P@1 (ties to the ground truth), means per "
          "meta-task / IND / OOD / overall (mean over datasets) for the retriever, the untrained base, the "
          "embedder and embedder + top-k reranking (listwise or pairwise); embeddings cached by model and "
          "content; published numbers beside ours on the official subsets; optional zero-shot sets.")  # fmt: skip
def mmeb_report(context: dg.AssetExecutionContext, mmeb_eval: dict[str, pl.DataFrame], settings: SettingsResource,
                mlflow: MlflowResource):  # fmt: skip
    from unime_assets.evaluation import aggregate
    from unime_assets.evaluation.published import published_for
    from unime_assets.evaluation.report import (
        aggregate_rows,
        markdown_table,
        per_dataset_rows,
        protocol_markdown,
        report_table,
        sources_markdown,
        zeroshot_markdown,
        zeroshot_summary,
        zeroshot_table,
    )
    from unime_assets.evaluation.runner import (
        EncodeStats,
        ModelHandle,
        evaluate_model,
        load_rerank,
        rerank_cache_key,
        rerank_subset,
        save_rerank,
        subset_fingerprint,
    )
    from unime_assets.fingerprints import ImageDigests
    from unime_assets.io import write_parquet
    from unime_assets.models.encoding import ImageLoader
    from unime_assets.reranking import MaxPixels

    s = settings.get()
    ev = s.evaluation
    # Fields the lead adds to EvalSettings; defaults until then.
    mode = ev.rerank_mode
    zeroshot_roots = dict(ev.zeroshot_roots)
    max_pixels = ev.rerank_max_pixels
    max_new_tokens = ev.rerank_max_new_tokens
    reranked_cached = 0
    evaluated = list(mmeb_eval)
    eval_df = concat_partitions(mmeb_eval)
    info = s.eval_catalog
    cache_dir = s.asset_dir("embedding_cache")
    digests = ImageDigests(s.eval_image_root, cache_dir / "image-digests.parquet")
    embedder_path, embedder_version = _embedder_under_test(context, s, mlflow.uri())
    from unime_assets.training.export_checks import identical_weights

    same_as_base = identical_weights(embedder_path, s.embedder_base_path)
    if same_as_base:
        context.log.error(f"the evaluated embedder {embedder_path} has the untrained base's weights "
                          f"({s.embedder_base_path}): its row equals the base's and it is never promoted")  # fmt: skip
    models = {
        "retriever": s.retriever_path,
        "embedder (untrained base)": s.embedder_base_path,
        "embedder": embedder_path,
    }
    per_model: dict[str, dict[str, float]] = {}
    ties: dict[str, dict[str, tuple[int, int]]] = {}  # model -> subset -> (tied top, GT among them)
    totals = EncodeStats()
    embedder_rows = {}
    embedder = None
    for label, path in models.items():
        context.log.info(f"evaluating {label} ({path})")
        handle = ModelHandle(path, role=label)
        with naming_rows(f"mmeb_report ({label})", eval_df, EVAL_ITEMS, "row"):
            results = evaluate_model(handle, eval_df, s.eval_image_root, image_size=ev.image_size,
                                     batch_size=ev.batch_size, cache_dir=cache_dir, log=context.log.info)  # fmt: skip
        per_model[label] = {k: v.precision_at_1 for k, v in results.items()}
        ties[label] = {k: (v.tied_top, v.gt_tied) for k, v in results.items()}
        for v in results.values():
            totals.add(EncodeStats(v.encoded, v.cached))
        if label == "embedder":
            embedder_rows = {k: v.row_scores for k, v in results.items()}
            embedder = handle
        else:
            handle.release()
    # Per subset, the content key of its rows: the rerank cache keys and the promotion's comparability.
    fingerprints = {n: subset_fingerprint(rows, ev.image_size, digests) for n, rows in mmeb_eval.items()}
    unparsable = 0
    unparsable_per: dict[str, int] = {}
    if ev.rerank:
        # The reranker loads only if a subset's reranked result is not cached already.
        reranker = ModelHandle(s.asset_dir("reranker_checkpoint"), role="reranker")
        images = MaxPixels(ImageLoader(s.eval_image_root, resize=ev.image_size), max_pixels)
        rerank_dir = s.asset_dir("rerank_cache")
        for m in dict.fromkeys([mode, *ev.rerank_also]):  # the configured mode's row first
            label = f"embedder + reranker (top-{ev.rerank_top_k} {m})"
            per_model[label] = {}
            for (name,), rows in eval_df.group_by("subset", maintain_order=True):
                key = rerank_cache_key(reranker, embedder, fingerprints[name],
                                       image_size=ev.image_size, mode=m, top_k=ev.rerank_top_k,
                                       max_pixels=max_pixels, max_new_tokens=max_new_tokens,
                                       unparsable=ev.rerank_unparsable, hit=ev.rerank_hit)  # fmt: skip
                outcome = load_rerank(rerank_dir, key)
                cached = outcome is not None
                if outcome is None:
                    outcome = rerank_subset(reranker.lm, rows, embedder_rows[name], images, top_k=ev.rerank_top_k,
                                            batch_size=ev.rerank_batch_size, mode=m,
                                            max_new_tokens=max_new_tokens, unparsable=ev.rerank_unparsable,
                                            hit=ev.rerank_hit)  # fmt: skip
                    save_rerank(rerank_dir, key, outcome)
                reranked_cached += cached
                per_model[label][name] = outcome.precision_at_1
                unparsable += outcome.unparsable
                if m == "listwise":
                    unparsable_per[name] = outcome.unparsable
                context.log.info(f"{name}: reranked ({m}) P@1 {outcome.precision_at_1:.3f}"
                                 + (f" ({outcome.unparsable} unparsable)" if m == "listwise" else "")
                                 + (" [cached]" if cached else ""))  # fmt: skip
        reranker.release()
    zeroshot = _zeroshot(context, s, embedder, zeroshot_roots, cache_dir) if zeroshot_roots else {}

    table = report_table(per_model, info)
    aggregates = {m: aggregate(scores, info) for m, scores in per_model.items()}
    published = published_for(evaluated)
    complete = set(s.eval_subset_names) <= set(evaluated)
    per_dataset = per_dataset_rows(per_model, info, published)
    aggregate_table = aggregate_rows(per_model, info, published, n_configured=len(s.eval_subset_names))
    per_dataset_md, agg_md = markdown_table(*per_dataset), markdown_table(*aggregate_table)
    sources_md = sources_markdown(published)
    n_rows = {n: rows.height for n, rows in mmeb_eval.items()}
    protocol_md = protocol_markdown(evaluated, n_rows, ties, unparsable_per
                                    if ev.rerank and "listwise" in (mode, *ev.rerank_also) else None, info)  # fmt: skip
    digests.save()
    with mlflow.run(context) as run:
        run.log_params({"embedder": embedder_path, "embedder_version": embedder_version or "",
                        "image_size": ev.image_size, "rerank": ev.rerank, "rerank_mode": mode,
                        "rerank_top_k": ev.rerank_top_k, "rerank_unparsable": ev.rerank_unparsable,
                        "rerank_hit": ev.rerank_hit, "rerank_max_new_tokens": max_new_tokens,
                        "rerank_max_pixels": max_pixels, "tie_rule": "argmax: ties to the ground truth",
                        "subsets": ",".join(evaluated), "complete": complete,
                        "zeroshot_sets": ",".join(zeroshot_roots),
                        **upstream_run_ids(context, ["embedder_checkpoint", "reranker_checkpoint", "mmeb_eval"])})  # fmt: skip
        for m, agg in aggregates.items():
            run.log_metrics({f"{_slug(m)}.{k}": 100 * v for k, v in agg.items()})
            run.log_metrics({f"{_slug(m)}.p_at_1.{n}": 100 * p for n, p in per_model[m].items()})
        run.log_metrics({"rerank_unparsable": unparsable, "encoded": totals.encoded, "cached": totals.cached,
                         "reranked_subsets_cached": reranked_cached})  # fmt: skip
        run.log_metrics({f"rerank_unparsable.{n}": u for n, u in unparsable_per.items()})
        for m, per in ties.items():
            run.log_metrics({f"{_slug(m)}.tied_top.{n}": t for n, (t, _) in per.items()})
            run.log_metrics({f"{_slug(m)}.gt_tied.{n}": g for n, (_, g) in per.items()})
        run.log_text(protocol_md, "protocol.md")
        run.log_metrics({f"zeroshot.{st}.{k}": 100 * v for st, mt in zeroshot.items() for k, v in mt.items()})
        report_md = "\n\n".join(x for x in (per_dataset_md, agg_md, sources_md) if x)
        run.log_text(report_md, "report.md")
        run.log_text(table.write_csv(), "report.csv")
        bars = figure(run, plots.grouped_bars({m: {k: 100 * a[k] for k in AGG_KEYS} for m, a in aggregates.items()},
                                              "MMEB-format P@1"), "aggregates", "chart")  # fmt: skip
        per_ds = figure(run, plots.grouped_bars({m: {n: 100 * p for n, p in sc.items()} for m, sc in per_model.items()},
                                                "P@1 per dataset"), "per_dataset", "chart_per_dataset")  # fmt: skip
        decision = _promote(context, s, mlflow.uri(), embedder_version, per_model["embedder"], fingerprints,
                            eval_df, cache_dir, run, same_as_base=same_as_base)  # fmt: skip
        if embedder_version is not None:
            describe_evaluation(mlflow.uri(), EMBEDDER_MODEL, embedder_version, 100 * aggregates["embedder"]["overall"],
                                len(evaluated), complete, f"{mlflow.dagster_url()}/runs/{context.run_id}")  # fmt: skip
        zeroshot_md = ""
        if zeroshot:
            zeroshot_md = zeroshot_markdown(zeroshot)
            run.log_text(zeroshot_md, "zeroshot.md")
            run.log_metrics({f"zeroshot.{k}": 100 * v for k, v in zeroshot_summary(zeroshot).items()})
            zs_path = write_parquet(zeroshot_table(zeroshot), s.asset_dir("mmeb_report") / "zeroshot.parquet")
    overall = {m: round(100 * a["overall"], 2) for m, a in aggregates.items()}
    context.log.info(f"overall P@1: {overall}; promotion: {decision['reason']}")
    metadata = {
        "aggregates": rows_table(*aggregate_table, AGGREGATE_COLUMNS), **bars,
        "per_dataset": rows_table(*per_dataset, PER_DATASET_COLUMNS), **per_ds,
        **({"published_sources": dg.MetadataValue.md(sources_md)} if sources_md else {}),
        "overall": dg.MetadataValue.json(overall),
        "protocol": dg.MetadataValue.md(protocol_md),
        "rerank_mode": mode, "rerank_unparsable": unparsable, "rerank_rows": len(eval_df),
        "torch_threads": s.torch_threads, "encoded": totals.encoded, "cached": totals.cached,
        "reranked_subsets_cached": reranked_cached,
        "complete": complete, "subsets": dg.MetadataValue.json(evaluated),
        "promotion": dg.MetadataValue.json(decision), "embedder_identical_to_base": same_as_base,
        **run_metadata(run),
    }  # fmt: skip
    if zeroshot:
        metadata["zeroshot"] = dg.MetadataValue.md(zeroshot_md)
        metadata["zeroshot_table"] = dg.MetadataValue.path(str(zs_path))
    yield dg.Output(table, metadata=readable(metadata))
    yield dg.AssetCheckResult(check_name=CHAMPION_CHECK, passed=bool(decision["passed"]),
                              severity=dg.AssetCheckSeverity.WARN, metadata=readable({
                                  k: dg.MetadataValue.json(v) if isinstance(v, list | dict) else v
                                  for k, v in decision.items() if v is not None}))  # fmt: skip
    yield dg.AssetCheckResult(check_name=TRAINED_CHECK, passed=not same_as_base, severity=dg.AssetCheckSeverity.ERROR,
                              metadata={"embedder": str(embedder_path), "base": str(s.embedder_base_path)})  # fmt: skip


def _zeroshot(context, s, embedder, roots: dict[str, str], cache_dir) -> dict[str, dict[str, float]]:
    """The configured zero-shot sets, evaluated with the trained embedder."""
    from unime_assets.data.zeroshot import COMPOSITION_SETS, read_zeroshot
    from unime_assets.evaluation.runner import evaluate_composition_set, evaluate_retrieval_set

    out = {}
    ev = s.evaluation
    for name, root in roots.items():
        ds = read_zeroshot(name, root, extract_dir=s.asset_dir("zeroshot_images"))
        fn = evaluate_composition_set if name in COMPOSITION_SETS else evaluate_retrieval_set
        out[name] = fn(embedder, ds, image_size=ev.image_size, batch_size=ev.batch_size, cache_dir=cache_dir)
        context.log.info(
            f"zero-shot {name}: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in out[name].items())
        )
    return out


def _promote(context, s, tracking_uri: str, version: str | None, scores: dict[str, float],
             fingerprints: dict[str, str], eval_df, cache_dir, run, *, same_as_base: bool = False) -> dict:  # fmt: skip
    """Compare with `champion`, record the scores on the version, move the alias when it wins."""
    from unime_assets.evaluation import promotion
    from unime_assets.evaluation.runner import ModelHandle, evaluate_model
    from unime_assets.tracking.registry import is_complete

    required = s.eval_subset_names
    if version is None:
        return {
            "passed": False,
            "promote": False,
            "reason": f"no registered {EMBEDDER_MODEL} version to promote",
        }
    blocker = None
    if not is_complete(promotion.version_tags(tracking_uri, EMBEDDER_MODEL, version)):
        blocker = f"version {version} has no lineage tags (an interrupted registration): never promoted"
    elif same_as_base:
        blocker = f"version {version} holds the untrained base's weights: never promoted"
    if blocker is not None:
        context.log.warning(blocker)
        return {"passed": False, "promote": False, "reason": blocker, "candidate_version": version}
    champ = promotion.alias_version(tracking_uri, EMBEDDER_MODEL, promotion.CHAMPION)
    champion = None
    if champ is not None:
        champ_scores = promotion.comparable_scores(champ.tags.get(promotion.SCORES_TAG), fingerprints)
        missing = [n for n in scores if n not in champ_scores]
        complete = set(required) <= set(scores)
        # Re-evaluate the champion only where it lacks scores on these rows, and only when the
        # comparison can lead to a promotion (a partial evaluation never does).
        if missing and complete and str(champ.version) != version:
            context.log.info(f"evaluating champion version {champ.version} on {missing}")
            ckpt = promotion.download_checkpoint(
                tracking_uri, EMBEDDER_MODEL, str(champ.version), s.asset_dir("registry_models")
            )
            res = evaluate_model(ModelHandle(ckpt, role="champion"), eval_df.filter(pl.col("subset").is_in(missing)),
                                 s.eval_image_root, image_size=s.evaluation.image_size,
                                 batch_size=s.evaluation.batch_size, cache_dir=cache_dir)  # fmt: skip
            new = {n: r.precision_at_1 for n, r in res.items()}
            promotion.record_evaluation(tracking_uri, EMBEDDER_MODEL, str(champ.version), new, fingerprints)
            champ_scores.update(new)
        champion = promotion.EvalRecord(str(champ.version), champ_scores)
    min_gain = s.evaluation.promote_min_gain
    decision = promotion.decide_promotion(promotion.EvalRecord(version, scores), champion, required, min_gain=min_gain)
    promotion.record_evaluation(tracking_uri, EMBEDDER_MODEL, version, scores, fingerprints, extra={
        "mmeb.promotion": ("promoted: " if decision.promote else "kept: ") + decision.reason,
        "mmeb.complete": str(decision.candidate_score is not None), "mmeb.report_run_id": run.run_id,
        "mmeb.compared_to": decision.champion_version or ""})  # fmt: skip
    if decision.promote:
        promotion.set_champion(tracking_uri, EMBEDDER_MODEL, version)
        context.log.info(f"{EMBEDDER_MODEL} version {version} is now `{promotion.CHAMPION}`: {decision.reason}")
    run.log_params({"promotion.promote": decision.promote, "promotion.reason": decision.reason,
                    "promotion.candidate_version": version,
                    "promotion.champion_version": decision.champion_version or ""})  # fmt: skip
    for key in ("candidate_score", "champion_score"):
        value = getattr(decision, key)
        if value is not None:
            run.log_metrics({f"promotion.{key}": 100 * value})
    passed = decision.promote or decision.reason.startswith("the candidate already is")
    return {"passed": passed, **decision.as_dict()}
