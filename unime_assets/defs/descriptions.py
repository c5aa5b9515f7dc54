"""What MLflow shows about this pipeline: the experiment's description and tags, each run's description
(a link back to the Dagster run that made it), the registered models' descriptions and each version's
(what it was trained on, with which judge, its MMEB overall once evaluated). Markdown, as MLflow renders it."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

EMBEDDER_MODEL, RERANKER_MODEL = "unime-v2-embedder", "unime-v2-reranker"

EXPERIMENT_DESCRIPTION = """\
UniME-V2 (arXiv 2510.13515) trained as Dagster software-defined assets (unime-assets).

One run per materialization of an asset (and partition = MMEB subset). Each run is tagged
`dagster.run_id`, `dagster.asset_key`, `dagster.partition` and `dagster.run_url`, the link to the
Dagster run that made it; its description repeats that link. Stages: data (`mmeb_train`, `mmeb_eval`),
models (`retriever_model`, `judge_model`), stage 1 (`candidate_index`, `candidate_pool`), stage 2
(`judge_scores`), stage 3 (`mined_negatives`, `training_set`), stages 4-5 (`embedder_checkpoint`,
`reranker_checkpoint`, registered as `unime-v2-embedder` / `unime-v2-reranker`), stage 6 (`mmeb_report`,
which moves the `champion` alias)."""

EXPERIMENT_TAGS = {"project": "unime-assets", "paper": "arXiv:2510.13515", "orchestrator": "dagster"}

MODEL_DESCRIPTIONS = {
    EMBEDDER_MODEL: (
        "UniME-V2 universal multimodal embedder: a Qwen2-VL backbone, last-token pooling, trained to align "
        "softmax(cos/τ) with the judge's soft scores over the positive and mined hard negatives (`judge_kl`). "
        "Input: a DataFrame with `text` and `image` (path under the `image_root` param); output: L2-normalised "
        "embeddings. Aliases: `candidate` = the latest trained, `champion` = the best complete MMEB evaluation."
    ),
    RERANKER_MODEL: (
        "UniME-V2-Reranker: a Qwen2.5-VL judge model fine-tuned with pairwise (Yes/No) and listwise "
        "(`Ans: (i)`) SFT on the mined training set; reranks the embedder's top-k at evaluation. Input: "
        "`query_text`, `query_image`, `cand_text`, `cand_image`; output: P(Yes). Alias `candidate` = the latest."
    ),
}

MMEB_MARKER = "**MMEB**"  # the line mmeb_report rewrites on every evaluation of a version


def run_description(asset: str, partition: str | None, job: str, run_url: str, dagster_url: str) -> str:
    part = f", partition `{partition}`" if partition else ""
    asset_url = f"{dagster_url}/assets/{quote(asset)}"
    return (f"Materialization of [`{asset}`]({asset_url}){part} by Dagster run [{run_url.rsplit('/', 1)[-1][:8]}]"
            f"({run_url}) (job `{job}`).")  # fmt: skip


def version_description(*, asset: str, run_url: str, source: str, queries: int, subsets: Sequence[str],
                        strategy: str, judge: str, base: str) -> str:  # fmt: skip
    """Markdown for a freshly registered version: the data, the judge behind its scores, the base."""
    data = (f"imported official score file, {queries} queries" if source == "official" else
            f"{queries} queries from {len(subsets)} MMEB-train subset(s) ({', '.join(subsets)}), "
            f"negatives mined with `{strategy}`")  # fmt: skip
    return (f"Trained by `{asset}` in Dagster run [{run_url.rsplit('/', 1)[-1][:8]}]({run_url}).\n\n"
            f"- data: {data}\n- judge scores from: `{judge}`\n- base checkpoint: `{base}`\n\n"
            f"{MMEB_MARKER}: not evaluated yet")  # fmt: skip


def with_mmeb_overall(description: str, overall_pct: float, n_subsets: int, complete: bool, run_url: str) -> str:
    """The version's description with its MMEB line replaced by this evaluation's overall P@1."""
    line = (f"{MMEB_MARKER}: overall Precision@1 {overall_pct:.1f} % over {n_subsets} eval subset(s)"
            f"{'' if complete else ' (partial evaluation)'}, [report run]({run_url})")  # fmt: skip
    kept = [x for x in description.splitlines() if not x.startswith(MMEB_MARKER)]
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join([*kept, "", line]) if kept else line


def describe_registered(tracking_uri: str, name: str, version: str, *, asset: str, run_url: str, training_set,
                        settings, base: str) -> None:  # fmt: skip
    """Descriptions of the registered model and of the version just registered (markdown on its page)."""
    from unime_assets.tracking import describe_model, describe_version

    subsets = training_set["subset"].unique(maintain_order=True).to_list() if training_set.height else []
    src = settings.training_data
    judge = str(src.official_scores_file) if src.source == "official" else str(settings.judge_path)
    describe_model(tracking_uri, name, MODEL_DESCRIPTIONS[name])
    describe_version(tracking_uri, name, version, version_description(
        asset=asset, run_url=run_url, source=src.source, queries=training_set.height, subsets=subsets,
        strategy=settings.mining.strategy, judge=judge, base=str(base)))  # fmt: skip


def describe_evaluation(tracking_uri: str, name: str, version: str, overall_pct: float, n_subsets: int,
                        complete: bool, run_url: str) -> None:  # fmt: skip
    """Put this evaluation's MMEB overall into the version's description (replacing an earlier one)."""
    from unime_assets.tracking import describe_version, version_description

    old = version_description(tracking_uri, name, version)
    describe_version(tracking_uri, name, version, with_mmeb_overall(old, overall_pct, n_subsets, complete, run_url))
