"""MLflow at the edge: where the store is, how runs are opened and closed, retries on a busy sqlite store.

The default store is sqlite `mlflow.db` at the repository root, as an absolute path. Runs that `dvc exp run --queue`
executes live in temporary copies of the repo under .dvc/tmp/exps/; DVC sets DVC_ROOT to the parent repository for
them, so their runs land in the same store as everyone else's. MLFLOW_TRACKING_URI overrides all of this.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from polycolor.errors import PolycolorError
from polycolor.fileio import write_json_atomic
from polycolor.paths import default_tracking_uri, repo_root, sqlite_path

T = TypeVar("T")

def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else sqlite:///<repo root>/mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def artifact_root() -> str:
    """Where new experiments keep artifacts: beside the sqlite store, absolute, so queued runs share it."""
    db = sqlite_path(tracking_uri())
    return ((db.parent if db else repo_root()) / "mlartifacts").as_uri()


def configure() -> str:
    """Point MLflow at the project's store, create its schema if needed, and return its URI.

    MLflow already gives every sqlite session a busy timeout; what it does not guard is two processes creating the
    schema of a new mlflow.db at once (two queue workers starting together), so that first touch is serialised by a
    file lock beside the store.
    """
    import mlflow
    from filelock import FileLock

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(db) + ".lock", timeout=300):
            with_retry(mlflow.MlflowClient().search_experiments, max_results=1)
    return uri


def is_locked_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return "database is locked" in text or "database table is locked" in text


def with_retry(fn: Callable[..., T], *args: Any, attempts: int = 8, **kwargs: Any) -> T:
    """Call fn, retrying with jittered backoff while sqlite says the database is locked."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # MLflow wraps the sqlite error in its own exception types
            if not is_locked_error(e) or attempt == attempts - 1:
                raise
            time.sleep(min(8.0, 0.25 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def ensure_experiment(name: str) -> str:
    """The experiment's id, creating it with an absolute artifact location when it does not exist yet."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    exp = with_retry(client.get_experiment_by_name, name)
    if exp is not None:
        return exp.experiment_id
    try:
        return with_retry(client.create_experiment, name, artifact_location=artifact_root())
    except MlflowException:  # another queue worker created it between our get and create
        exp = with_retry(client.get_experiment_by_name, name)
        if exp is None:
            raise
        return exp.experiment_id


def git_info(root: Path) -> dict[str, str]:
    """Commit and dirty flag of the repo at `root` (empty strings outside git)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": "true" if dirty else "false"}


def dvc_experiment_name() -> str:
    return os.environ.get("DVC_EXP_NAME", "")


def data_hash(root: Path, stage: str = "ingest") -> str:
    """md5 of a stage's first output as recorded in dvc.lock (the content hash DVC tracks), or '' if not locked."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return ""
    import yaml

    data = yaml.safe_load(lock.read_text()) or {}
    outs = (data.get("stages", {}).get(stage) or {}).get("outs") or []
    return str(outs[0].get("md5", "")) if outs else ""


class Terminated(Exception):
    """Raised in the main thread on SIGTERM so training can checkpoint and close its run as KILLED."""


@contextmanager
def sigterm_as_exception() -> Iterator[None]:
    """SIGTERM, and SIGHUP (a closed terminal), raise Terminated in the main thread while the block runs."""
    def handler(signum, frame):  # noqa: ARG001
        raise Terminated(f"terminated by signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def run_status_for(exc: BaseException | None) -> str:
    """MLflow run status for how a run ended: FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED."""
    if exc is None:
        return "FINISHED"
    if isinstance(exc, (KeyboardInterrupt, Terminated)):
        return "KILLED"
    return "FAILED"


def write_run_info(path: str | Path, info: dict[str, Any]) -> None:
    write_json_atomic(path, info, sort_keys=True)


def read_run_info(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        info = json.loads(p.read_text())
    except FileNotFoundError:
        raise PolycolorError(f"run info not found: {p} (run the train stage first)") from None
    except json.JSONDecodeError as e:
        raise PolycolorError(f"run info {p} is not valid JSON: {e}") from None
    if "run_id" not in info:
        raise PolycolorError(f"run info {p} has no run_id")
    return info
