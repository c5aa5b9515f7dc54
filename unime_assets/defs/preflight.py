"""The check every run passes before its first step: the settings profile can run at all.

Ranges and cross-section rules are checked when the profile loads (config/). Here, what needs the
file system: every data root and configured subset folder, every configured model checkpoint
(config.json readable with a supported model type, each safetensors header read and its tensors
within the file), the official score file and the zero-shot roots. All problems are reported at
once, one line each naming the setting and the path, so a typo does not surface as a raw
FileNotFoundError after other assets already ran. `SettingsResource.setup_for_execution` calls it.
"""

from __future__ import annotations

from pathlib import Path

from unime_assets.config import Settings, SettingsError


def _model_problem(setting: str, path: str | Path | None) -> str | None:
    from unime_assets.models.loading import check_checkpoint_dir, check_weights

    if not path:
        return f"{setting}: no path configured"
    try:
        check_checkpoint_dir(path, setting.removesuffix(".path"))
        check_weights(path)
    except (OSError, ValueError) as e:
        return f"{setting} ({path}): {e}"
    return None


def _subset_problems(setting: str, root: Path, subsets: list[str], pattern: str) -> list[str]:
    if not root.is_dir():
        return []  # reported once for the root
    return [f"{setting}: {name}: no {pattern} under {root / name}" for name in subsets
            if not any(p.is_file() for p in (root / name).glob(pattern))]  # fmt: skip


def problems(s: Settings) -> list[str]:
    """Everything about `s` that would make a step fail for lack of a file; [] when it can run."""
    out: list[str] = []
    for name in ("train_root", "train_image_root", "eval_root", "eval_image_root"):
        path = getattr(s, name)
        if not Path(path).is_dir():
            out.append(f"{name}: folder {path} does not exist")
    out += _subset_problems("train_subsets", Path(s.train_root), s.train_subset_names, f"{s.train_split}-*.parquet")
    out += _subset_problems("eval_subsets", Path(s.eval_root), s.eval_subset_names, "test-*.parquet")
    models = [("retriever.path", s.retriever.path), ("judge.path", s.judge.path),
              ("embedder_base.path", s.embedder_base.path)]  # fmt: skip
    if s.reranker_base.path:
        models.append(("reranker_base.path", s.reranker_base.path))
    out += [p for setting, path in models if (p := _model_problem(setting, path))]
    td = s.training_data
    if td.source == "official" and td.official_scores_file and not Path(td.official_scores_file).is_file():
        out.append(f"training_data.official_scores_file: file {td.official_scores_file} does not exist")
    out += [f"evaluation.zeroshot_roots.{name}: folder {root} does not exist"
            for name, root in s.evaluation.zeroshot_roots.items() if not Path(root).exists()]  # fmt: skip
    try:
        Path(s.artifacts_root).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        out.append(f"artifacts_root: cannot create {s.artifacts_root}: {e}")
    return out


def preflight(s: Settings) -> None:
    """Raises SettingsError listing every problem (one line each) when the profile cannot run."""
    found = problems(s)
    if found:
        lines = "\n".join(f"  {p}" for p in found)
        raise SettingsError(f"settings profile {s.profile!r} cannot run ({len(found)} problem(s)):\n{lines}")
