"""Where things are: the project root, repo-relative paths and the default sqlite tracking store.

Stdlib only and imports nothing of the package, so config, tracking and the stages can all lean on it.
"""

from __future__ import annotations

import os
from pathlib import Path

SQLITE_PREFIX = "sqlite:///"


def repo_root(start: str | Path | None = None) -> Path:
    """The project root: DVC_ROOT when DVC runs us (the parent repo for queued experiments), else the nearest
    folder above `start` (default: cwd) that holds dvc.yaml."""
    env = os.environ.get("DVC_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(start or Path.cwd()).resolve()
    for p in (here, *here.parents):
        if (p / "dvc.yaml").is_file():
            return p
    return here


def repo_path(path: str | Path) -> Path:
    """`path` as given when absolute, else relative to the project root, so that a queued DVC experiment, which
    runs in a temporary copy of the repo, still finds ../shared beside the real one."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else repo_root() / p


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` tracking URI, None for any other kind of store."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    return Path(uri[len(SQLITE_PREFIX):].split("?")[0])


def default_tracking_uri() -> str:
    """sqlite:///<repo root>/mlflow.db: the embedded default store."""
    return f"{SQLITE_PREFIX}{repo_root() / 'mlflow.db'}"
