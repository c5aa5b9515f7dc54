"""Champion promotion: move the registry alias `champion` to an evaluated embedder that beats it.

`decide_promotion` is the whole rule, framework-free:
- never on a partial evaluation (a configured eval subset was not evaluated);
- no champion yet -> promote;
- the candidate already is the champion -> nothing to do;
- otherwise compare the MMEB overall (mean over datasets) on exactly the required subsets and
  promote only when the candidate is strictly better (by more than `min_gain`); a tie keeps the
  champion, so re-evaluating the same model never flips the alias.

The registry helpers below keep each version's evaluation on the version itself (tags), with a
per-subset fingerprint of the evaluated rows and eval settings, so a later report can compare
against the champion's stored scores when they were computed on the same data, and knows when
they were not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

CHAMPION, CANDIDATE = "champion", "candidate"
SCORES_TAG = "mmeb.scores"  # JSON {subset: [precision_at_1, fingerprint]}


@dataclass(frozen=True)
class EvalRecord:
    """A registered model version and its Precision@1 (fraction) per evaluated subset."""

    version: str
    scores: Mapping[str, float]


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    subsets: tuple[str, ...]  # the subsets the comparison is on (the configured eval subsets)
    candidate_version: str
    candidate_score: float | None  # mean P@1 over `subsets`; None on a partial evaluation
    champion_version: str | None = None
    champion_score: float | None = None

    def as_dict(self) -> dict:
        return {**asdict(self), "subsets": list(self.subsets)}


def overall(scores: Mapping[str, float], subsets: Sequence[str]) -> float:
    """MMEB overall: the unweighted mean over datasets (not over meta-tasks)."""
    return float(sum(scores[s] for s in subsets) / len(subsets))


def decide_promotion(
    candidate: EvalRecord,
    champion: EvalRecord | None,
    required: Sequence[str],
    *,
    min_gain: float = 0.0,
) -> PromotionDecision:
    """Whether `candidate` should become the champion; see the module docstring for the rule."""
    subsets = tuple(dict.fromkeys(required))
    if not subsets:
        raise ValueError("decide_promotion: no required eval subsets")
    missing = [s for s in subsets if s not in candidate.scores or math.isnan(candidate.scores[s])]
    if missing:
        return PromotionDecision(False, f"partial evaluation: {len(missing)} of {len(subsets)} configured eval "
                                 f"subsets not evaluated {missing}; never promoted", subsets, candidate.version,
                                 None, champion.version if champion else None)  # fmt: skip
    cand = overall(candidate.scores, subsets)
    if champion is None:
        return PromotionDecision(True, "no champion yet", subsets, candidate.version, cand)
    if str(champion.version) == str(candidate.version):
        return PromotionDecision(False, "the candidate already is the champion", subsets, candidate.version, cand,
                                 champion.version, overall(champion.scores, subsets)
                                 if all(s in champion.scores for s in subsets) else None)  # fmt: skip
    champ_missing = [s for s in subsets if s not in champion.scores]
    if champ_missing:
        return PromotionDecision(False, f"champion has no comparable score on {champ_missing}; kept",
                                 subsets, candidate.version, cand, champion.version)  # fmt: skip
    champ = overall(champion.scores, subsets)
    if cand > champ + min_gain:
        reason = f"overall {100 * cand:.2f} beats the champion's {100 * champ:.2f}"
        return PromotionDecision(True, reason, subsets, candidate.version, cand, champion.version, champ)
    reason = f"overall {100 * cand:.2f} does not beat the champion's {100 * champ:.2f}"
    return PromotionDecision(False, reason, subsets, candidate.version, cand, champion.version, champ)


# --- registry (MLflow) ---------------------------------------------------------------------------


def encode_scores(scores: Mapping[str, float], fingerprints: Mapping[str, str]) -> str:
    return json.dumps({s: [round(float(p), 6), fingerprints[s]] for s, p in sorted(scores.items())},
                      separators=(",", ":"))  # fmt: skip


def comparable_scores(tag_value: str | None, fingerprints: Mapping[str, str]) -> dict[str, float]:
    """Scores from a version's `mmeb.scores` tag whose fingerprint equals the current one per subset."""
    if not tag_value:
        return {}
    try:
        stored = json.loads(tag_value)
    except json.JSONDecodeError:
        return {}
    return {s: float(v[0]) for s, v in stored.items() if s in fingerprints and v[1] == fingerprints[s]}


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def version_tags(tracking_uri: str, name: str, version: str) -> dict[str, str]:
    """The tags of a registered version ({} when it does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        return dict(_client(tracking_uri).get_model_version(name, str(version)).tags or {})
    except MlflowException:
        return {}


def alias_version(tracking_uri: str, name: str, alias: str):
    """The ModelVersion under `alias`, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return _client(tracking_uri).get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def record_evaluation(tracking_uri: str, name: str, version: str, scores: Mapping[str, float],
                      fingerprints: Mapping[str, str], extra: Mapping[str, str] | None = None) -> None:  # fmt: skip
    """Tags on the version: the per-subset scores (merged with earlier ones on other subsets) and
    human-readable summaries (`mmeb.overall` is over the subsets of this evaluation)."""
    client = _client(tracking_uri)
    mv = client.get_model_version(name, str(version))
    merged = {}
    old = mv.tags.get(SCORES_TAG)
    if old:
        try:
            merged = {s: tuple(v) for s, v in json.loads(old).items()}
        except json.JSONDecodeError:
            merged = {}
    merged.update({s: (round(float(p), 6), fingerprints[s]) for s, p in scores.items()})
    tags = {SCORES_TAG: json.dumps(dict(sorted(merged.items())), separators=(",", ":")),
            "mmeb.overall": f"{100 * overall(scores, list(scores)):.2f}", "mmeb.subsets": ",".join(scores),
            **(extra or {})}  # fmt: skip
    for k, v in tags.items():
        client.set_model_version_tag(name, str(version), k, str(v)[:5000])


def set_champion(tracking_uri: str, name: str, version: str) -> None:
    _client(tracking_uri).set_registered_model_alias(name, CHAMPION, str(version))


def download_checkpoint(tracking_uri: str, name: str, version: str, dest: str | Path) -> Path:
    """The checkpoint directory of a registered pyfunc version (artifact `checkpoint`), downloaded
    once to `dest/<name>/<version>-<source hash>` and reused (stable files keep the embedding cache
    warm). The folder is keyed by where the version's files are, not by its number alone: a registry
    recreated next to old downloads reuses version numbers, and "version 1" must not be served the
    files of another model."""
    import hashlib

    import mlflow.artifacts

    from unime_assets.io import atomic_dir

    # Resolve through this registry explicitly: `models:/` URIs would use the global registry URI.
    source = _client(tracking_uri).get_model_version_download_uri(name, str(version))
    out = Path(dest) / name / f"{version}-{hashlib.sha256(source.encode()).hexdigest()[:12]}"
    if not out.is_dir():
        with atomic_dir(out) as tmp:
            mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(tmp), tracking_uri=tracking_uri
            )
    for cand in [out / "artifacts" / "checkpoint", *sorted(p.parent for p in out.rglob("config.json"))]:
        if (cand / "config.json").is_file():
            return cand
    raise FileNotFoundError(
        f"no checkpoint (config.json) in the artifacts of {name} version {version} at {out}"
    )
