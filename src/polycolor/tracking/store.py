"""MLflow at the edge: where the store is, the server probe and its one-line failures, retries on a busy sqlite
store, the project's experiment, how a run's end maps to its status.

The default store is sqlite `mlflow.db` at the repository root, as an absolute path. Runs that `dvc exp run --queue`
executes live in temporary copies of the repo under .dvc/tmp/exps/; DVC sets DVC_ROOT to the parent repository for
them, so their runs land in the same store as everyone else's. MLFLOW_TRACKING_URI overrides all of this.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse
from urllib.request import url2pathname

from polycolor import signals
from polycolor.errors import PolycolorError, one_line
from polycolor.paths import default_tracking_uri, repo_root, sqlite_path

T = TypeVar("T")

# MLflow 3 files an experiment under a kind; the UI opens a `custom_model_development` one on its runs table (the
# model-training view) instead of the GenAI traces view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
# MLflow's HTTP client defaults (120 s timeout, 7 retries with backoff factor 2) make a refused or silent server cost
# minutes per call (254 s measured, issue 19). The project's bounds: a call that never answers gives up after
# 1 + MAX_RETRIES attempts of TIMEOUT s plus backoff (about 15 + 15 + 15 + 1 + 2 = 48 s); a refused port after ~3 s.
# setdefault: an operator's own value wins.
HTTP_BOUNDS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "15", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5"}
PROBE_TIMEOUT_S = 5.0  # check_server: one request, no retries
PROBE_ENDPOINT = "/api/2.0/mlflow/experiments/search"


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else sqlite:///<repo root>/mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def artifact_root() -> str | None:
    """Where new experiments keep artifacts: beside the sqlite store, absolute, so queued runs share it. None for
    a tracking server, which chooses: its proxied destination (mlflow-artifacts:/), so clients need no storage
    credentials and never write to a local folder the server cannot see."""
    uri = tracking_uri()
    if is_server(uri):
        return None
    db = sqlite_path(uri)
    return ((db.parent if db else repo_root()) / "mlartifacts").as_uri()


def configure() -> str:
    """Point MLflow at the project's store, create its schema if needed, and return its URI.

    MLflow's HTTP calls get the project's bounds (HTTP_BOUNDS), and a tracking server is asked one question
    first (check_server), so a dead one fails here in seconds with one line naming it.

    MLflow already gives every sqlite session a busy timeout; what it does not guard is two processes creating the
    schema of a new mlflow.db at once (two queue workers starting together), so that first touch is serialised by a
    file lock beside the store.
    """
    import mlflow
    from filelock import FileLock

    uri = tracking_uri()
    default_store = not os.environ.get("MLFLOW_TRACKING_URI")  # read first: set_tracking_uri sets it
    bound_http_calls()
    mlflow.set_tracking_uri(uri)
    if is_server(uri):
        check_server(uri)  # a dead server fails here in seconds, naming the URI, before any work
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(db) + ".lock", timeout=300):
            with_retry(mlflow.MlflowClient().search_experiments, max_results=1)
        if default_store:
            check_store_belongs_here(db)
    return uri


def bound_http_calls() -> None:
    """Set HTTP_BOUNDS in this process's environment (and so its children's) unless already set."""
    for key, value in HTTP_BOUNDS.items():
        os.environ.setdefault(key, value)


def check_server(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Ask the tracking server at `uri` one authenticated REST question (search one experiment), no retries,
    `timeout` s to connect and to answer. A refusal, silence, a rejected login or a server error is one
    PolycolorError naming `uri` (see describe_failure)."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        r = http_request(get_default_host_creds(uri), PROBE_ENDPOINT, "GET", params={"max_results": 1},
                         max_retries=0, backoff_factor=0, backoff_jitter=0, timeout=timeout, raise_on_status=False)
    except MlflowException as e:
        raise PolycolorError(describe_failure(e, uri, timeout) or f"MLflow tracking server at {uri}: "
                             f"{one_line(e)}") from None
    if r.status_code != 200:
        raise PolycolorError(_status_message(r.status_code, uri))


def _status_message(code: int, uri: str) -> str:
    if code == 401:
        return (f"the MLflow tracking server at {uri} wants a login: set MLFLOW_TRACKING_USERNAME and "
                f"MLFLOW_TRACKING_PASSWORD (`polycolor stack up` prints them for the team stack)")
    if code == 403:
        return f"the MLflow tracking server at {uri} refused this user the permission (HTTP 403)"
    if code >= 500:
        return (f"the MLflow tracking server at {uri} answered HTTP {code}: its store (database) may be down, "
                f"see the server's log (`polycolor stack up` restarts a dead service of the team stack)")
    return f"the MLflow tracking server at {uri} answered HTTP {code} (is that URI an MLflow server?)"


def describe_failure(exc: BaseException, uri: str | None = None, timeout: float | None = None) -> str | None:
    """One line for an MLflow call that failed because the tracking server could not be used: refused, silent,
    dropped, login rejected, or failing with 5xx. None when `exc` is something else (a missing run, a bad
    argument), so the caller keeps its own message:

        raise PolycolorError(describe_failure(e, uri) or f"run {run_id} not found in {uri}") from None
    """
    uri = uri or tracking_uri()
    text = " ".join(str(exc).split())
    low = text.lower()
    wait = timeout if timeout is not None else float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "120"))
    if "connection refused" in low or "failed to establish a new connection" in low:
        return f"the MLflow tracking server at {uri} refused the connection: is it running? (team stack: " \
               f"polycolor stack up)"
    if "timed out" in low or "timeout" in low:
        return f"the MLflow tracking server at {uri} did not answer within {wait:g} s"
    if "remotedisconnected" in low or "connection aborted" in low or "connection reset" in low:
        return f"the MLflow tracking server at {uri} dropped the connection without an answer"
    found = re.search(r"error code (\d{3})|too many (\d{3}) error responses", low)
    code = int(found.group(1) or found.group(2)) if found else 0
    return _status_message(code, uri) if code in (401, 403) or code >= 500 else None


def check_store_belongs_here(db: Path) -> None:
    """Refuse a default store whose experiments keep their artifacts in another checkout's mlartifacts/.

    artifact_root() is absolute, so after `mv` or `cp -a` of a checkout its store still names the old folder:
    runs would write their artifacts into the original checkout (or fail where it is gone). Said in one line
    with what to do, before any run is opened.
    """
    import mlflow
    from mlflow.entities import ViewType

    here = db.parent / "mlartifacts"
    for exp in with_retry(mlflow.MlflowClient().search_experiments, view_type=ViewType.ALL):
        loc = urlparse(exp.artifact_location or "")
        if loc.scheme != "file":
            continue
        where = Path(url2pathname(loc.path))
        if where.name == here.name and where != here:
            raise PolycolorError(
                f"the MLflow store {db} keeps experiment {exp.name!r}'s artifacts in {where}, outside this checkout "
                f"{db.parent} (it was moved or copied): move it back, point at the original store "
                f"(MLFLOW_TRACKING_URI=sqlite:///{where.parent / db.name}), or start a fresh store here "
                f"(mv mlflow.db mlflow.db.old && mv mlartifacts mlartifacts.old)")


def is_locked_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return "database is locked" in text or "database table is locked" in text


def with_retry(fn: Callable[..., T], *args: Any, attempts: int = 8, **kwargs: Any) -> T:
    """Call fn, retrying with jittered backoff while sqlite says the database is locked."""
    for attempt in range(attempts):
        try:
            with signals.stop_signals_deferred():
                return fn(*args, **kwargs)
        except Exception as e:  # MLflow wraps the sqlite error in its own exception types
            if not is_locked_error(e) or attempt == attempts - 1:
                raise
            time.sleep(min(8.0, 0.25 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def ensure_experiment(name: str) -> str:
    """The experiment's id, creating it when it does not exist yet: a model-training experiment (EXPERIMENT_KIND_TAG)
    with artifact_root() (absolute beside a sqlite store, or the tracking server's default). An existing one without
    a kind gets it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    exp = with_retry(client.get_experiment_by_name, name)
    if exp is not None:
        if EXPERIMENT_KIND_TAG not in exp.tags:  # a store made before experiments were created with their kind
            with_retry(client.set_experiment_tag, exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        return exp.experiment_id
    try:
        return with_retry(client.create_experiment, name, artifact_location=artifact_root(),
                          tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
    except MlflowException:  # another queue worker created it between our get and create
        exp = with_retry(client.get_experiment_by_name, name)
        if exp is None:
            raise
        return exp.experiment_id


def run_status_for(exc: BaseException | None) -> str:
    """MLflow run status for how a run ended: FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED."""
    if exc is None:
        return "FINISHED"
    if isinstance(exc, (KeyboardInterrupt, signals.Terminated)):
        return "KILLED"
    return "FAILED"
