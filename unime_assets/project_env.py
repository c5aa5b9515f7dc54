"""The project's own environment: a `.env` file at the project root that says where the Dagster
instance and the artifact root are, so the Dagster CLI and `unime-assets` work from the root
without anything exported.

`make install` writes it (`unime-assets init`). The Dagster CLI (`dagster dev`, `dagster asset
materialize`, `dagster-webserver`, ...) loads `.env` from its working directory before it opens the
instance; `unime-assets` loads the same file. Every value is written as `${NAME:-default}`: a
variable exported in the shell wins (python-dotenv and bash resolve the form alike), so the file
only supplies what is missing. MLFLOW_TRACKING_URI is left to the code's default (sqlite under
$UNIME_HOME/mlflow, defs/resources.py) so that it follows an exported UNIME_HOME.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from unime_assets.io import atomic_path

ENV_FILE = ".env"
DAGSTER_DIR = ".dagster_home"
UNIME_DIR = ".unime"
# Fixed for every process of the project: offline hub (checkpoints are local paths), no telemetry,
# no tokenizers fork warning in the training launcher's child processes.
QUIET = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
         "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip


def env_file_text(root: Path, settings: Path | None = None) -> str:
    root = root.resolve()
    values = {"DAGSTER_HOME": str(root / DAGSTER_DIR), "UNIME_HOME": str(root / UNIME_DIR),
              **({"UNIME_SETTINGS": str(settings.resolve())} if settings else {}), **QUIET}  # fmt: skip
    lines = [
        "# Written by `make install` (unime-assets init) for this checkout; regenerated, not edited.",
        "# Loaded by the Dagster CLI and by unime-assets from the project root; an exported value wins.",
        *(f'{k}="${{{k}:-{v}}}"' for k, v in values.items()),
    ]
    return "\n".join(lines) + "\n"


def recorded_settings(env: Path) -> Path | None:
    """The settings profile an existing .env selects (written by `init --settings`), if any."""
    if env.is_file():
        for line in env.read_text().splitlines():
            if m := re.fullmatch(r'UNIME_SETTINGS="\$\{UNIME_SETTINGS:-(.*)\}"', line.strip()):
                return Path(m.group(1))
    return None


def init_project(root: str | os.PathLike, settings: str | os.PathLike | None = None) -> Path:
    """Write `<root>/.env`, create the Dagster home (its dagster.yaml a link to the project's) and the
    MLflow folder. `settings` selects a settings profile (UNIME_SETTINGS) for every process started from
    the root; without it, the one an earlier init recorded is kept. Safe to repeat; returns the .env path."""
    root = Path(root).resolve()
    if not (root / "dagster.yaml").is_file():
        raise SystemExit(f"unime-assets init: {root} is not the project root (no dagster.yaml there)")
    env = root / ENV_FILE
    profile = Path(settings) if settings else recorded_settings(env)
    if profile is not None and not profile.is_file():
        raise SystemExit(f"unime-assets init: settings file {profile} does not exist")
    with atomic_path(env) as tmp:
        tmp.write_text(env_file_text(root, profile))
    home = root / DAGSTER_DIR
    home.mkdir(exist_ok=True)
    link = home / "dagster.yaml"
    if not link.is_symlink() or link.resolve() != (root / "dagster.yaml"):
        link.unlink(missing_ok=True)
        link.symlink_to(root / "dagster.yaml")
    (root / UNIME_DIR / "mlflow").mkdir(parents=True, exist_ok=True)
    return env


def load_env_file(directory: str | os.PathLike | None = None) -> Path | None:
    """Load `<directory or cwd>/.env` into os.environ without overriding exported variables."""
    from dotenv import load_dotenv

    path = Path(directory or Path.cwd()) / ENV_FILE
    if not path.is_file():
        return None
    load_dotenv(path, override=False)
    return path


def instance_problem() -> str | None:
    """One line saying why the Dagster instance cannot be found, or None when it can."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return (f"DAGSTER_HOME is not set and there is no {ENV_FILE} in {Path.cwd()}: run this from the "
                "project root after `make install` (which writes .env), or export DAGSTER_HOME")  # fmt: skip
    if not Path(home).is_absolute():
        return f"DAGSTER_HOME={home} must be an absolute path"
    if not Path(home).is_dir():
        return (f"DAGSTER_HOME={home} does not exist: run `make install` (or `unime-assets init`) in the "
                "project root, or create it")  # fmt: skip
    return None
