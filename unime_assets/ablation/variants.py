"""The ablation's variants: each one factor changed from the profile's UniME-V2 recipe, as settings overrides.

Rows of the paper's tables and of the mining comparison:
- Table 4 (components): `infonce_inbatch` (no mined negatives, no soft scores: in-batch InfoNCE, the
  VLM2Vec-like row), `infonce_mined` (mined negatives, hard labels), `unime_v2` (mined negatives + the
  judge's soft scores: the profile's recipe);
- Table 6 (k negatives) and Table 10 (τ): `k<k>` and `tau<τ>` for every grid value other than the
  profile's (whose row is `unime_v2`);
- mining rules: `mining:<rule>` for every rule other than the profile's;
- Table 5 (judge), when the profile has several judges: `judge:<name>` / `judge:ensemble` for every
  source other than the one `mining.judge` reads (Settings.judge_variants()).

A grid value equal to the profile's is the same run as `unime_v2` and is shown in every table it belongs
to (`Variant.rows`), never trained twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TABLES = {
    "table4": "Table 4: loss components",
    "table6": "Table 6: hard negatives k",
    "table10": "Table 10: temperature τ",
    "mining": "Mining rules",
    "table5": "Table 5: judge",
}
RECIPE = "unime_v2"  # the profile's own recipe (judge-score alignment on mined negatives)


@dataclass
class Variant:
    name: str
    overrides: dict  # deep-merged into the settings profile
    rows: dict[str, str] = field(default_factory=dict)  # table -> the row label it shows under


def _num(v: float) -> str:
    return f"{v:g}"


def ablation_variants(settings) -> dict[str, Variant]:
    """Every variant of the profile's ablation (settings.ablation), in table order; the `unime_v2` entry
    carries the row labels of every table it stands in."""
    a, e, m = settings.ablation, settings.embedder, settings.mining
    recipe = {"embedder": {"loss": "judge_kl"}}
    out: dict[str, Variant] = {
        "infonce_inbatch": Variant("infonce_inbatch", {"embedder": {"loss": "infonce_inbatch"}},
                                   {"table4": "in-batch InfoNCE (no mined negatives, no soft scores)"}),
        "infonce_mined": Variant("infonce_mined", {"embedder": {"loss": "infonce_mined"}},
                                 {"table4": "InfoNCE on mined negatives (no soft scores)"}),
        RECIPE: Variant(RECIPE, recipe, {"table4": "UniME-V2: mined negatives + judge soft scores"}),
    }  # fmt: skip

    def add(table: str, name: str, label: str, overrides: dict, is_recipe: bool) -> None:
        if is_recipe:
            out[RECIPE].rows[table] = label
        elif name not in out:
            out[name] = Variant(name, overrides, {table: label})

    for k in dict.fromkeys(a.k_values):
        add("table6", f"k{k}", f"k = {k}", {"embedder": {"loss": "judge_kl", "k_negatives": k}}, k == e.k_negatives)
    for t in dict.fromkeys(a.temperatures):
        add("table10", f"tau{_num(t)}", f"τ = {_num(t)}", {"embedder": {"loss": "judge_kl", "temperature": t}},
            t == e.temperature)  # fmt: skip
    for rule in dict.fromkeys(a.mining_rules):
        add("mining", f"mining:{rule}", rule, {**recipe, "mining": {"strategy": rule}}, rule == m.strategy)
    if a.judges and len(settings.judge_names) > 1:
        for name, overrides in settings.judge_variants().items():
            source = name.split(":", 1)[1]
            add("table5", name, source, {**recipe, **overrides}, source == settings.mining_judge)
    return out


def variant_names(settings) -> list[str]:
    """The variants to run: `ablation.variants` or every one; each must make a valid profile (e.g. k
    at most mining.n_negatives), checked here so that a bad grid fails when the code loads."""
    every = ablation_variants(settings)
    chosen = settings.ablation.variants or list(every)
    if unknown := [v for v in chosen if v not in every]:
        raise ValueError(f"ablation.variants: unknown {unknown}; this profile's variants are {list(every)}")
    if settings.ablation.baseline not in chosen:
        raise ValueError(f"ablation.baseline {settings.ablation.baseline!r} is not among the variants {chosen}")
    for v in chosen:
        try:
            variant_settings(settings, v, settings.ablation.seeds[0])
        except ValueError as exc:
            raise ValueError(f"ablation variant {v!r} ({every[v].overrides}) is not a valid profile: {exc}") from None
    return chosen


def variant_settings(settings, variant: str, seed: int):
    """The profile with `variant`'s overrides; `seed` seeds the embedder's training (data order, init)
    and the mining draws (fallbacks; the `random` rule). The base, the candidate pools and the judge
    scores are the profile's: shared by every run."""
    from unime_assets.config import deep_merge, with_overrides

    v = ablation_variants(settings)[variant]
    return with_overrides(settings, deep_merge(v.overrides, {"embedder": {"seed": seed}, "mining": {"seed": seed}}))
