"""The package layout as a contract: one package per paper stage, layers that only import downwards, no cycle.

Read statically from every module's imports (module level and inside functions), so a lazy import
that would close a cycle or reach upwards is caught as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "unime_assets"

# Lowest first. A module may import its own component, or any component of a lower layer.
LAYERS: list[set[str]] = [
    {"openblas", "io", "quiet"},
    {"data"},
    {"fingerprints", "config", "tracking", "project_env"},
    {"models"},
    {"retrieval", "judging", "mining", "losses"},  # stages 1-4: independent of each other
    {"reranking"},  # stage 5 (its prompts reuse the judge's layout)
    {"training"},  # stages 4-5
    {"evaluation"},  # stage 6
    {"ablation", "maintenance"},
    {"embedded"},
    {"defs"},  # the Dagster layer
    {"definitions"},  # the code location
    {"cli"},  # the command line drives Dagster
]
LAYER = {name: i for i, layer in enumerate(LAYERS) for name in layer}
STAGE_PACKAGES = ("data", "models", "retrieval", "judging", "mining", "training", "reranking", "evaluation",
                  "tracking", "defs")  # fmt: skip
DAGSTER_FREE = set(LAYER) - {"defs", "definitions", "cli"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(name: str) -> str:
    """The module file an imported dotted name lands in (a package name: its __init__)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package upwards
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for a in node.names:  # `from pkg import submodule` lands in the submodule
                full = f"{base}.{a.name}"
                out.add(full if full in MODULES else base)
    return out


GRAPH = {m: {_resolve(i) for i in _imports(m) if i.startswith("unime_assets")} - {m} for m in MODULES}


def _component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_component_has_a_layer():
    assert {_component(m) for m in MODULES} - {""} <= set(LAYER), "add new top-level modules to LAYERS"


def test_lower_layers_never_import_higher_ones():
    bad = [f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
           if _component(m) and _component(t) and _component(m) != _component(t)
           and LAYER[_component(t)] >= LAYER[_component(m)]]  # fmt: skip
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_no_import_cycle():
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_method_packages_do_not_import_dagster():
    bad = sorted(m for m in MODULES if _component(m) in DAGSTER_FREE
                 and any(i == "dagster" or i.startswith("dagster.") for i in _imports(m)))  # fmt: skip
    assert not bad, f"method code importing Dagster: {bad}"


@pytest.mark.parametrize("package", STAGE_PACKAGES)
def test_each_stage_package_says_what_it_holds(package):
    init = PKG / package / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text()))
    assert doc and len(doc.split()) >= 15, f"{init} needs a docstring saying what the stage does"


def test_no_module_is_oversized():
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 500}
    assert not big, f"split these modules where they mix concerns: {big}"


def test_stable_public_paths():
    from unime_assets.data import mmeb, unime_scores
    from unime_assets.evaluation import aggregate_mmeb
    from unime_assets.judging import judge_score_from_logits
    from unime_assets.losses import judge_alignment_loss
    from unime_assets.mining import sample_unime_v2

    assert all(callable(f) for f in (aggregate_mmeb, judge_score_from_logits, judge_alignment_loss,
                                     sample_unime_v2, mmeb.read_train_subset, mmeb.read_eval_subset,
                                     unime_scores.read, unime_scores.write))  # fmt: skip
