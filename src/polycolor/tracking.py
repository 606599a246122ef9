"""MLflow at the edge: where the store is, how runs are opened and closed, retries on a busy sqlite store.

The default store is sqlite `mlflow.db` at the repository root, as an absolute path. Runs that `dvc exp run --queue`
executes live in temporary copies of the repo under .dvc/tmp/exps/; DVC sets DVC_ROOT to the parent repository for
them, so their runs land in the same store as everyone else's. MLFLOW_TRACKING_URI overrides all of this.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse
from urllib.request import url2pathname

from polycolor import signals
from polycolor.errors import PolycolorError
from polycolor.fileio import write_json_atomic
from polycolor.paths import default_tracking_uri, repo_root, sqlite_path

T = TypeVar("T")

# MLflow 3 files an experiment under a kind; the UI opens a `custom_model_development` one on its runs table (the
# model-training view) instead of the GenAI traces view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
# What a run is made from: code and params. The pipeline's own outputs (dvc.lock, metrics/, models/) are left out,
# so the first `dvc repro` of a clean clone is not flagged dirty by the files it writes itself.
SOURCE_PATHS = ("src", "stages", "params.yaml", "dvc.yaml", "pyproject.toml")
CONTEXT_TAG = "mlflow.data.context"  # dataset input tag: training / validation / evaluation
# An evaluation run is a child run of the training run (MLflow's parent tag) that carries the sha256 of the eval.json it
# wrote, so the package stage links exactly the evaluation behind the metrics file it packages.
PARENT_RUN_TAG = "mlflow.parentRunId"
EVAL_DIGEST_TAG = "polycolor.eval_json_sha256"

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
                             f"{' '.join(str(e).split())}") from None
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

        raise PolycolorError(tracking.describe_failure(e, uri) or f"run {run_id} not found in {uri}") from None
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


def git_info(root: Path) -> dict[str, str]:
    """Commit and dirty flag of the repo at `root` (empty strings outside git); dirty means SOURCE_PATHS differ from
    the commit (tracked changes or new files there), not that the pipeline rewrote its outputs."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--", *SOURCE_PATHS) if commit else ""
    return {"git_commit": commit, "git_dirty": "true" if dirty else "false"}


# Environment settings that change which CPU kernels run (docs/reproducibility.md), recorded when set.
CPU_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "NPY_DISABLE_CPU_FEATURES", "OMP_NUM_THREADS")


def platform_info() -> dict[str, str]:
    """What a training run's float results depend on beyond code, params and data (tags): torch and numpy
    versions, the instruction set ATen dispatches to, the thread count, the CPU architecture, and the CPU_ENV
    settings that are set. Same values, same weights bit for bit; other values, figures differ in later digits."""
    import platform

    import numpy as np
    import torch

    info = {"torch_version": torch.__version__, "numpy_version": np.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": str(torch.get_num_threads()),
            "cpu_arch": platform.machine()}
    return info | {f"env.{k}": os.environ[k] for k in CPU_ENV if os.environ.get(k)}


def dvc_experiment_name() -> str:
    return os.environ.get("DVC_EXP_NAME", "")


def run_status_for(exc: BaseException | None) -> str:
    """MLflow run status for how a run ended: FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED."""
    if exc is None:
        return "FINISHED"
    if isinstance(exc, (KeyboardInterrupt, signals.Terminated)):
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


# ---- datasets: what a run read, as MLflow datasets named after their role, digested the way DVC hashes them -----------

def dvc_hash(path: str | Path) -> str:
    """The content hash DVC records for `path` in dvc.lock: the md5 of a file, or for a folder the md5 of its file
    list ('<md5>.dir'), computed with DVC's own tree object so the two always agree."""
    import hashlib

    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    p = Path(path)
    if p.is_file():
        return hashlib.md5(p.read_bytes()).hexdigest()
    if not p.is_dir():
        raise PolycolorError(f"cannot hash {p}: no such file or folder")
    tree = Tree()
    for f in sorted(p.rglob("*")):
        if f.is_file():
            tree.add(f.relative_to(p).parts, Meta(size=f.stat().st_size),
                     HashInfo("md5", hashlib.md5(f.read_bytes()).hexdigest()))
    tree.digest()
    return str(tree.hash_info.value)


@functools.cache
def _dvc_source_class() -> type:
    """mlflow DatasetSource for data DVC tracks: {"path": repo-relative path, "git_commit": the commit it was read
    at}. Built on first use so that importing tracking does not import mlflow."""
    from mlflow.data.dataset_source import DatasetSource

    class DVCDatasetSource(DatasetSource):
        def __init__(self, path: str, git_commit: str):
            self.path, self.git_commit = path, git_commit

        @staticmethod
        def _get_source_type() -> str:
            return "dvc"

        def load(self) -> str:  # the data is where DVC put it: `dvc checkout` at git_commit restores it
            return self.path

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any) -> "DVCDatasetSource":
            raise NotImplementedError

        def to_dict(self) -> dict[str, Any]:
            return {"path": self.path, "git_commit": self.git_commit}

        @classmethod
        def from_dict(cls, source_dict: dict[Any, Any]) -> "DVCDatasetSource":
            return cls(str(source_dict["path"]), str(source_dict.get("git_commit", "")))

    return DVCDatasetSource


def _display_path(path: Path, root: Path) -> str:
    """`path` relative to `root` when inside it (data/dataset/validation), else as an absolute path."""
    p = path.resolve()
    try:
        return str(p.relative_to(root.resolve()))
    except ValueError:
        return str(p)


def dvc_dataset(name: str, path: str | Path, root: Path | None = None) -> Any:
    """An MLflow dataset (MetaDataset: metadata only, nothing loaded) for the folder or file `path`: digest = its DVC
    hash, source = DVCDatasetSource(path relative to the repo, git commit)."""
    from mlflow.data.meta_dataset import MetaDataset

    root = root or Path.cwd()
    source = _dvc_source_class()(_display_path(Path(path), root), git_info(root)["git_commit"])
    return MetaDataset(source, name=name, digest=dvc_hash(path))


def generated_dataset(name: str, digest: str, recipe: dict[str, str]) -> Any:
    """An MLflow dataset for data generated in memory (no file): MLflow's CodeDatasetSource, whose tags say what
    made it (`recipe`, e.g. generator and params); `digest` identifies the content."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    return MetaDataset(CodeDatasetSource(tags={k: str(v) for k, v in recipe.items()}), name=name, digest=digest)


# Params sections that are not the training run's: each evaluation run logs the evaluate.* and paint.* it ran with
# (the package stores paint.* with the model), and promote.* is read at promotion time. Logging them on the training
# run would show settings that go stale on re-evaluation.
NOT_TRAINING_SECTIONS = ("evaluate", "paint", "promote")


def training_params(flat: dict[str, Any]) -> dict[str, str]:
    """The flattened params a training run logs: every key outside NOT_TRAINING_SECTIONS, as strings."""
    return {k: str(v) for k, v in flat.items() if k.split(".", 1)[0] not in NOT_TRAINING_SECTIONS}


def log_datasets(run_id: str, datasets: list[tuple[Any, str]]) -> None:
    """Log (dataset, context) pairs as the run's dataset inputs (mlflow.data.context = training / validation /
    evaluation), where the run page's Datasets panel shows them."""
    import mlflow
    from mlflow.entities import DatasetInput, InputTag

    inputs = [DatasetInput(ds._to_mlflow_entity(), tags=[InputTag(CONTEXT_TAG, context)]) for ds, context in datasets]
    with_retry(mlflow.MlflowClient().log_inputs, run_id, datasets=inputs)


def log_training_data(run_id: str, train_dir: Path, val_dir: Path) -> None:
    """The train stage's inputs as datasets `train` (context training) and `val` (context validation)."""
    log_datasets(run_id, [(dvc_dataset("train", train_dir), "training"), (dvc_dataset("val", val_dir), "validation")])


# ---- evaluation runs ---------------------------------------------------------------------------------------------------

def file_sha256(path: str | Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def find_evaluation_run(train_run: Any, eval_json: Path) -> Any:
    """The evaluation run (a child of `train_run`) that wrote `eval_json`, by the file's sha256; the newest if the
    same file came out twice. A metrics file no evaluation run in this store wrote is a PolycolorError."""
    import mlflow

    digest = file_sha256(eval_json)
    runs = with_retry(mlflow.MlflowClient().search_runs, [train_run.info.experiment_id],
                      filter_string=f"tags.`{PARENT_RUN_TAG}` = '{train_run.info.run_id}' and "
                                    f"tags.`{EVAL_DIGEST_TAG}` = '{digest}'",
                      order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise PolycolorError(f"{eval_json} was not written by an evaluation run of training run "
                             f"{train_run.info.run_id} in {tracking_uri()} (run the evaluate stage)")
    return runs[0]


# ---- a tracking server that blinks during training -------------------------------------------------------------

MAX_OUTAGE_S = 60.0  # how long training goes on without its tracking server before it stops (checkpoint kept)
QUICK_TIMEOUT_S = 5  # one attempt's HTTP timeout while the buffer is sending: a blink costs the loop seconds
RETRY_EVERY_S = 2.0  # between attempts when waiting for the server (TrackingBuffer.call)


class TrackingUnavailable(PolycolorError):
    """The tracking server stayed away longer than the training's bound."""


def is_unreachable(exc: BaseException) -> bool:
    """A failed MLflow call that says the server is away (refused, reset, timed out, 5xx), not that it refused the
    request: worth keeping and sending again."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return isinstance(exc, (ConnectionError, TimeoutError))
    text = str(exc)
    return (text.startswith("API request to") and " failed with " in text) or \
        exc.error_code in ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR")


@contextmanager
def quick_requests() -> Iterator[None]:
    """MLflow's HTTP calls in the block make one attempt with a short timeout (MLflow reads these per request);
    the caller does the waiting. The previous settings come back after."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(QUICK_TIMEOUT_S)}
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class TrackingBuffer:
    """MLflow calls of a training that outlive a blink of its tracking server, in order.

    `submit` queues a call (per-epoch metrics, a sample grid) and sends what is queued, one quick attempt each
    (quick_requests); when the server is away the calls stay queued, the training goes on, and they are sent at a
    later submit once it is back. `call` sends and waits for the server (the calls after training). Either raises
    TrackingUnavailable once the server has been away for `max_outage_s`: the stage stops, its checkpoint kept.
    """

    def __init__(self, uri: str, max_outage_s: float = MAX_OUTAGE_S,
                 say: Callable[[str], None] = functools.partial(print, flush=True)):
        self.uri, self.max_outage_s, self.say = uri, max_outage_s, say
        self.pending: list[Callable[[], Any]] = []
        self.down_since: float | None = None
        self.kept = 0  # calls that waited for the server, said when it is back

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.pending.append(functools.partial(fn, *args, **kwargs))
        self.flush()

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.submit(fn, *args, **kwargs)
        while self.pending:
            time.sleep(RETRY_EVERY_S)
            self.flush()

    def flush(self) -> None:
        while self.pending:
            try:
                with quick_requests():
                    with_retry(self.pending[0])
            except Exception as e:
                if not is_unreachable(e):
                    raise
                self._away(e)
                return
            self.pending.pop(0)
        if self.down_since is not None:
            self.say(f"tracking server {self.uri} is back after {time.monotonic() - self.down_since:.0f} s: "
                     f"{self.kept} kept call(s) sent")
            self.down_since, self.kept = None, 0

    def _away(self, e: Exception) -> None:
        now = time.monotonic()
        self.kept = len(self.pending)
        if self.down_since is None:
            self.down_since = now
            self.say(f"tracking server {self.uri} does not answer: metrics kept and sent when it is back; training "
                     f"stops if it stays away {self.max_outage_s:.0f} s")
        if now - self.down_since >= self.max_outage_s:
            raise TrackingUnavailable(
                f"the tracking server {self.uri} has not answered for {now - self.down_since:.0f} s "
                f"({' '.join(str(e).split())[:160]}): training stopped with its checkpoint kept; rerun when the server "
                "is back and the same MLflow run continues") from None
