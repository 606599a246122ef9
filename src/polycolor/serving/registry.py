"""The Model Registry: registering versions, promotion by aliases, rollback, listing.

Aliases, never the deprecated stages: the package stage points `candidate` at each new version; `promote` moves
`champion` to a candidate that passes the gates and beats the champion on `promote.metric`. Every decision is
recorded on the version it concerns (tags promotion.decision / promotion.reason / promotion.at), and the sequence
of champions is kept in the registered model's tag `champion_history` (a JSON list of versions) so that
`rollback` can restore the previous one.

Promote and rollback read the aliases and the history, decide, and write both: each holds the registered model's
write lock (write_lock) from its first read to its last write, so two of them never interleave, whether they run
on one machine or on several against one tracking server. MLflow has no lock or conditional write of tags and
aliases; the lock is a registered model `<name>.write-lock`, whose creation the store makes atomic (a unique name).

A version carries a short fixed set of tags (lineage: git_commit, data_hash, dvc_exp_name; evaluation_run; the
promotion.* decision) and the model card as its description. Its metrics are those of its logged model (linked by
the package stage from the evaluation run, per dataset); versions registered before that carry `eval.<dotted key>`
tags or source-run `eval.*` metrics, which are still read (see version_metrics).
Every call that writes goes through tracking.store.with_retry: queue workers share one sqlite store.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from polycolor.config.serving import Gate, PromoteConfig
from polycolor.errors import PolycolorError
from polycolor.paths import sqlite_path
from polycolor.tracking.store import configure, tracking_uri, with_retry

CANDIDATE = "candidate"
CHAMPION = "champion"
HISTORY_TAG = "champion_history"  # registered-model tag: JSON list of versions that were champion, oldest first
HISTORY_MAX = 100
METRIC_TAG_PREFIX = "eval."  # version tag `eval.val.net.psnr_mean` = metrics/eval.json["val"]["net"]["psnr_mean"]
LINEAGE_KEYS = ("git_commit", "data_hash", "dvc_exp_name")
CONTENT_TAG = "content_sha256"  # version tag: package_digest (model file + paint); one version per package
PAINT_KEY = "paint"  # the package's model_config key holding the params `paint` section it was evaluated with
EVAL_RUN_TAG = "evaluation_run"  # the evaluation run whose metrics the version's logged model carries
DECISION_TAG, REASON_TAG, AT_TAG = "promotion.decision", "promotion.reason", "promotion.at"
METRIC_TAG = "promotion.metric"  # "<promote.metric> = <value>" of the version when it was decided on
TABLE_METRICS = ("val.net.psnr_mean", "val.painted.psnr_mean", "gappy.net.psnr_mean", "val.net.colour_accuracy")
# The only code a polycolor package carries: the models-from-code file MLflow executes on load (package.py logs it).
PYFUNC_ENTRY = Path(__file__).resolve().with_name("pyfunc_entry.py")
CODE_LOADER = "mlflow.pyfunc.loaders.code_model"
WEIGHTS = "artifacts/model.pt"  # the self-describing model file inside a package
PICKLE_SUFFIXES = (".pkl", ".pickle", ".cloudpickle", ".joblib", ".dill")
LOCK_SUFFIX = ".write-lock"  # registered model `<name>.write-lock`: promote and rollback hold it (write_lock)
LOCK_WAIT_S = 60.0   # how long promote or rollback waits for another one's lock before refusing
LOCK_STALE_S = 600.0  # a lock older than this is a writer that died (SIGKILL, power): taken over, and said so
# Tests only: a file path; promote and rollback announce `<path>.reached` before they write, then wait until
# <path> exists (at most LOCK_STALE_S), so a test can land another writer between their read and their write.
PAUSE_ENV = "POLYCOLOR_TEST_PAUSE_BEFORE_REGISTRY_WRITE"


def missing_store() -> Path | None:
    """The sqlite file of the tracking URI when it does not exist yet (configuring would create an empty store,
    so commands that only read check this first); None when it exists or the store is not sqlite."""
    db = sqlite_path(tracking_uri())
    return db if db is not None and not db.is_file() else None


def connect() -> None:
    """tracking.store.configure() for commands that read the registry; a missing sqlite store is a one-line error."""
    db = missing_store()
    if db is not None:
        raise PolycolorError(f"no MLflow store at {db} (run the pipeline first, or set MLFLOW_TRACKING_URI)")
    configure()


def _client() -> Any:
    import mlflow

    return mlflow.MlflowClient()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------- tags

def lineage_tags(run_info: dict[str, Any]) -> dict[str, str]:
    """git_commit, data_hash and dvc_exp_name from metrics/run.json (empty values left out)."""
    return {k: str(run_info[k]) for k in LINEAGE_KEYS if run_info.get(k)}


# ------------------------------------------------------------------------------------------- versions

def register_version(name: str, model_uri: str, *, tags: dict[str, str], description: str = "") -> Any:
    """Register `model_uri` as a new version of `name` (created if needed) with `tags` and `description`; alias
    `candidate` -> it. Returns the ModelVersion.

    One version per content (tags[CONTENT_TAG]) even when two processes register the same model at once: each
    registers, then looks for the oldest version with that content; the one that is not the oldest deletes its
    own version and takes the oldest (retag_version). Create-then-resolve rather than a lock, because a lock
    would have to be shared by every client of a tracking server, and MLflow offers none (nor a conditional
    create of versions); the version's tags are written with it in one transaction, so the later of two
    registrations always sees the earlier. The returned version's `source` then names the winner's logged model.
    """
    import mlflow

    mv = with_retry(mlflow.register_model, model_uri, name, tags=tags)
    first = find_by_content(name, tags[CONTENT_TAG]) if CONTENT_TAG in tags else None
    if first is not None and str(first.version) != str(mv.version):
        with_retry(_client().delete_model_version, name, mv.version)
        return retag_version(name, str(first.version), tags=tags)
    if description:
        with_retry(_client().update_model_version, name, mv.version, description=description)
    with_retry(_client().set_registered_model_alias, name, CANDIDATE, mv.version)
    return mv


def find_by_content(name: str, digest: str) -> Any | None:
    """The oldest version of `name` tagged with content hash `digest` (see package_digest), else None."""
    found = with_retry(_client().search_model_versions, f"name = '{name}' AND tags.{CONTENT_TAG} = '{digest}'")
    return min(found, key=lambda mv: int(mv.version)) if found else None


UNREGISTERED_ENV = "POLYCOLOR_PACKAGE_UNREGISTERED"  # "1": the package stage loads a package it has not registered yet


class UnregisteredContent(PolycolorError):
    """A package whose content hash no version of its registered model records (vouch_for)."""


def vouch_for(name: str, digest: str) -> str | None:
    """What the pyfunc asks when MLflow loads it: the oldest version of `name` whose CONTENT_TAG is `digest` (the
    package's weights and paint section, package_digest). UnregisteredContent (one line) when `name` has versions
    but none records this content: the package's files changed after registration. None when there is nothing to
    ask: no registered name in the package, no store at the tracking URI, no such model or no version of it yet, or
    the package stage's own loads of a package it has not registered yet (UNREGISTERED_ENV). A registry that cannot
    be reached raises what configure or MLflow raise: the caller decides."""
    if not name or os.environ.get(UNREGISTERED_ENV) == "1" or missing_store() is not None:
        return None
    configure()
    found = find_by_content(name, digest)
    if found is not None:
        return str(found.version)
    if not with_retry(_client().search_model_versions, f"name = '{name}'", max_results=1):
        return None
    raise UnregisteredContent(
        f"refusing to serve: this package's weights and paint section hash to {digest}, which no version of "
        f"{name!r} at {tracking_uri()} records; its files changed after it was registered: re-register the model "
        "(dvc repro package) or serve another version (polycolor promote --rollback)")


def retag_version(name: str, version: str, *, tags: dict[str, str]) -> Any:
    """Set `tags` on an existing version and point `candidate` at it (registration of a model already held)."""
    client = _client()
    for key, value in tags.items():
        with_retry(client.set_model_version_tag, name, version, key, value)
    with_retry(client.set_registered_model_alias, name, CANDIDATE, version)
    return with_retry(client.get_model_version, name, version)


def get_version(name: str, version: str | int | None = None, alias: str = CANDIDATE) -> Any:
    """Version `version` of `name`, or the one `alias` points at; a missing one is a one-line PolycolorError."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        if version is not None:
            return with_retry(client.get_model_version, name, str(version))
        return with_retry(client.get_model_version_by_alias, name, alias)
    except MlflowException as e:
        # a missing version is RESOURCE_DOES_NOT_EXIST, a missing alias INVALID_PARAMETER_VALUE; others propagate
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        what = f"version {version}" if version is not None else f"alias @{alias}"
        raise PolycolorError(f"registered model {name!r} has no {what}") from None


def aliases(name: str) -> dict[str, str]:
    """{alias: version} of registered model `name`; a missing model is a one-line PolycolorError."""
    from mlflow.exceptions import MlflowException

    try:
        rm = with_retry(_client().get_registered_model, name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise PolycolorError(f"registered model {name!r} not found (run the package stage first)") from None
    return {str(k): str(v) for k, v in (rm.aliases or {}).items()}


def logged_model_id(mv: Any) -> str | None:
    """The id of the logged model a version was registered from: MLflow's field where the store fills it, else the
    `models:/<model id>` source the package stage registers (the sqlite registry keeps only the source)."""
    if getattr(mv, "model_id", None):
        return str(mv.model_id)
    m = re.fullmatch(r"models:/(m-[0-9a-f]{32})", mv.source or "")
    return m.group(1) if m else None


def version_metrics(mv: Any, keys: Iterable[str] = ()) -> dict[str, float]:
    """The metrics of a version as {dotted key: value}: its logged model's metrics ("val.net.psnr_mean"), then for older
    versions its `eval.*` tags; any of `keys` still missing are read from the source run's `eval.*` metrics."""
    out: dict[str, float] = {}
    model_id = logged_model_id(mv)
    if model_id:
        metrics = with_retry(_client().get_logged_model, model_id).metrics or []
        for m in sorted(metrics, key=lambda m: m.timestamp):  # the latest value of a key wins
            out[m.key] = float(m.value)
    for k, v in (mv.tags or {}).items():
        if k.startswith(METRIC_TAG_PREFIX):
            try:
                out.setdefault(k[len(METRIC_TAG_PREFIX):], float(v))
            except ValueError:
                pass  # a hand-written non-numeric tag is not a metric
    missing = [k for k in keys if k not in out]
    if missing and mv.run_id:
        run_metrics = with_retry(_client().get_run, mv.run_id).data.metrics
        for k in missing:
            if METRIC_TAG_PREFIX + k in run_metrics:
                out[k] = float(run_metrics[METRIC_TAG_PREFIX + k])
    return out


# ------------------------------------------------------------------------------------------- decisions

def gate_failures(gates: Sequence[Gate], metrics: dict[str, float]) -> list[str]:
    """One message per gate the metrics fail (missing, NaN, below min or above max); empty when all pass."""
    failures = []
    for g in gates:
        v = metrics.get(g.metric)
        if v is None:
            failures.append(f"{g.metric} not recorded")
        elif math.isnan(v):
            failures.append(f"{g.metric} is NaN")
        elif g.min is not None and v < g.min:
            failures.append(f"{g.metric} {v:.4g} < min {g.min:g}")
        elif g.max is not None and v > g.max:
            failures.append(f"{g.metric} {v:.4g} > max {g.max:g}")
    return failures


def decide(cfg: PromoteConfig, candidate: dict[str, float], champion: dict[str, float] | None) -> tuple[bool, str]:
    """Whether a candidate with `candidate` metrics should replace a champion with `champion` metrics (None: there
    is no champion yet), and why. The candidate must pass every gate, then beat the champion on cfg.metric by more
    than cfg.min_delta in the configured direction."""
    failures = gate_failures(cfg.gates, candidate)
    if failures:
        return False, "fails gates: " + "; ".join(failures)
    gates = f"; passes all {len(cfg.gates)} gate(s)" if cfg.gates else ""
    if champion is None:
        return True, f"no champion yet{gates}"
    c, ch = candidate.get(cfg.metric), champion.get(cfg.metric)
    if c is None or math.isnan(c):
        return False, f"candidate has no usable {cfg.metric}"
    if ch is None or math.isnan(ch):
        return True, f"champion has no usable {cfg.metric}; candidate has {c:.4g}{gates}"
    delta = (c - ch) if cfg.higher_is_better else (ch - c)
    direction = "higher" if cfg.higher_is_better else "lower"
    verdict = f"{cfg.metric} {c:.4g} vs champion {ch:.4g} ({direction} is better, improvement {delta:+.4g}, " \
              f"min_delta {cfg.min_delta:g})"
    if delta > cfg.min_delta:
        return True, verdict + gates
    return False, "not better: " + verdict


@dataclass(frozen=True)
class Decision:
    """The outcome of promote or rollback, as printed and as recorded on the version."""

    name: str
    version: str  # the version decided on (the candidate; for a rollback, the restored version)
    champion_before: str | None
    champion_after: str | None
    decision: str  # promoted | forced | refused | unchanged | rolled_back
    reason: str

    @property
    def refused(self) -> bool:
        return self.decision == "refused"

    def line(self) -> str:
        return f"{self.name} version {self.version}: {self.decision} - {self.reason}"


def champion_history(name: str) -> list[str]:
    """Versions that were champion, oldest first (the registered-model tag `champion_history`)."""
    rm = with_retry(_client().get_registered_model, name)
    raw = (rm.tags or {}).get(HISTORY_TAG)
    if not raw:
        return []
    try:
        history = json.loads(raw)
    except json.JSONDecodeError:
        raise PolycolorError(f"registered model {name!r}: tag {HISTORY_TAG} is not a JSON list: {raw[:60]!r}") from None
    return [str(v) for v in history]


def _set_champion(name: str, version: str, history: list[str]) -> None:
    client = _client()
    with_retry(client.set_registered_model_tag, name, HISTORY_TAG, json.dumps(history[-HISTORY_MAX:]))
    with_retry(client.set_registered_model_alias, name, CHAMPION, version)


def _record(name: str, version: str, decision: str, reason: str, metric: str = "") -> None:
    client = _client()
    tags = ((DECISION_TAG, decision), (REASON_TAG, reason), (AT_TAG, _now())) + (((METRIC_TAG, metric),) if metric else ())
    for key, value in tags:
        with_retry(client.set_model_version_tag, name, version, key, value)


def package_digest(payload: dict[str, Any], paint: dict[str, Any]) -> str:
    """sha256 of what a package computes: the model file's content (modelio.content_hash of its payload) and the
    paint section (as a plain dict) it paints with. Two packages of the same weights painting differently are two
    versions."""
    import hashlib

    from polycolor.nn import modelio

    spec = json.dumps({"model": modelio.content_hash(payload), "paint": paint}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()


def verify_package(name: str, mv: Any) -> None:
    """Refuse (one-line PolycolorError) a version whose artifacts are not a polycolor package whose weights match
    its CONTENT_TAG: serving a pyfunc executes its code, so a version anyone else registered (a planted pickle,
    other code) must never become @champion. Checked: no pickle file, the models-from-code loader, no Python file
    but this checkout's pyfunc_entry.py byte for byte, and package_digest of WEIGHTS (read with weights_only) and
    the stored paint section equal to the tag."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory(prefix="polycolor-verify-") as tmp:
        root = Path(with_retry(mlflow.artifacts.download_artifacts, artifact_uri=f"models:/{name}/{mv.version}",
                               dst_path=tmp))
        verify_download(name, mv, root)


def verify_download(name: str, mv: Any, root: Path) -> None:
    """verify_package's checks on `root`, the artifacts of version `mv` as downloaded: what every load by name or
    alias (predict, the demo, promote, --rollback) runs before it uses them. A mismatch is one PolycolorError line
    naming the version and the way back."""
    import yaml

    from polycolor.nn import modelio

    where = f"refusing {name} version {mv.version}"
    back = ("its artifacts changed after it was registered: re-register the model (dvc repro package) or serve "
            "another version (polycolor promote --rollback)")
    digest = (mv.tags or {}).get(CONTENT_TAG)
    if not digest:
        raise PolycolorError(f"{where}: it has no {CONTENT_TAG} tag, so the package stage did not register it")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise PolycolorError(f"{where}: its artifacts hold a pickle ({pickles[0]}), not a polycolor package")
    try:
        flavor = yaml.safe_load((root / "MLmodel").read_text())["flavors"]["python_function"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        raise PolycolorError(f"{where}: its artifacts have no readable MLmodel with a python_function "
                             "flavor") from None
    if flavor.get("loader_module") != CODE_LOADER:
        raise PolycolorError(f"{where}: its pyfunc loads with {flavor.get('loader_module')!r}, not polycolor's "
                             f"{CODE_LOADER}")
    entry = PYFUNC_ENTRY.read_bytes()
    strange = [f for f in files if f.endswith(".py") and (root / f).read_bytes() != entry]
    if strange:
        raise PolycolorError(f"{where}: its artifacts hold code that is not polycolor's pyfunc_entry.py "
                             f"({strange[0]}); {back}")
    if WEIGHTS not in files:
        raise PolycolorError(f"{where}: its artifacts have no {WEIGHTS}")
    config = flavor.get("config") or {}  # MLmodel's key for the pyfunc's model_config
    found = package_digest(modelio.load_payload(root / WEIGHTS), config.get(PAINT_KEY) or {})
    if found != digest:
        raise PolycolorError(f"{where}: its weights and paint section hash to {found[:12]}..., its {CONTENT_TAG} "
                             f"tag says {digest[:12]}...; {back}")


def promote(name: str, cfg: PromoteConfig, *, version: str | int | None = None, force: bool = False) -> Decision:
    """Compare version `version` (default: alias `candidate`) with `champion` and move `champion` when it wins.

    A version that is not a verified polycolor package (verify_package) is a PolycolorError, even with `force`.
    With `force` it moves regardless and the reason records what it overrode. The decision is recorded on the
    candidate version and returned; nothing is recorded when the candidate already is the champion.
    Everything from the first read to the last write happens under the write lock: a promote or rollback that
    holds it first is waited for, and this one then decides against the registry as that one left it.
    """
    with write_lock(name):
        return _promote(name, cfg, version, force)


def _promote(name: str, cfg: PromoteConfig, version: str | int | None, force: bool) -> Decision:
    current = aliases(name)
    mv = get_version(name, version, CANDIDATE)
    cand = str(mv.version)
    champ = current.get(CHAMPION)
    if champ == cand:
        return Decision(name, cand, champ, champ, "unchanged", "already the champion")
    verify_package(name, mv)  # before any decision, and --force does not skip it
    keys = {cfg.metric, *(g.metric for g in cfg.gates)}
    cand_metrics = version_metrics(mv, keys)
    champ_metrics = version_metrics(get_version(name, champ), keys) if champ else None
    ok, reason = decide(cfg, cand_metrics, champ_metrics)
    if ok:
        decision = "promoted"
    elif force:
        decision, reason = "forced", f"forced over: {reason}"
    else:
        decision = "refused"
    _pause_before_write()
    if decision != "refused":
        history = champion_history(name)
        if champ and (not history or history[-1] != champ):  # champion set by hand: keep it restorable
            history.append(champ)
        _set_champion(name, cand, history + [cand])
    value = cand_metrics.get(cfg.metric)
    _record(name, cand, decision, reason, f"{cfg.metric} = {value:.6g}" if value is not None else "")
    return Decision(name, cand, champ, cand if decision != "refused" else champ, decision, reason)


def rollback(name: str) -> Decision:
    """Point `champion` back at the previous champion in the history; the demoted version is tagged rolled_back.

    Under the write lock, like promote. The champion the caller asked to roll back is the one before the wait:
    when another promote or rollback moved it meanwhile, this one is refused (one line) rather than undo a change
    its caller never saw."""
    seen = aliases(name).get(CHAMPION)
    with write_lock(name):
        champ = aliases(name).get(CHAMPION)
        if champ != seen:
            raise PolycolorError(f"registered model {name!r}: @champion moved from version {seen} to {champ} while "
                                 "this rollback waited for another promote or rollback; nothing rolled back: check "
                                 "polycolor models and run it again if you still want to")
        return _rollback(name, champ)


def _rollback(name: str, champ: str | None) -> Decision:
    """With no @champion (its version was deleted, which takes the alias with it) the history still names the
    versions that served: the newest of them that still exists comes back."""
    from mlflow.exceptions import MlflowException

    history = champion_history(name)
    if champ is None and not history:
        raise PolycolorError(f"registered model {name!r} has no @champion to roll back, and no earlier champion "
                             "in its history: promote a version (polycolor promote --version N)")
    while history and history[-1] == champ:
        history.pop()
    client = _client()
    while history:  # skip versions deleted since they were champion
        try:
            target_mv = with_retry(client.get_model_version, name, history[-1])
            break
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            history.pop()
    if not history:
        before = f"before version {champ}" if champ is not None else "that still exists"
        raise PolycolorError(f"registered model {name!r}: no previous champion recorded {before}")
    target = history[-1]
    verify_package(name, target_mv)  # the registry's own hash decides: a swapped version never comes back
    _pause_before_write()
    _set_champion(name, target, history)
    reason = (f"restored version {target}: the @champion was gone (its version deleted)" if champ is None
              else f"rolled back from version {champ} to version {target}")
    _record(name, champ or target, "rolled_back", reason)  # on the demoted version, or the restored one
    return Decision(name, target, champ, target, "rolled_back", reason)


# ------------------------------------------------------------------------------------------- the write lock

def _lock_holder(client: Any, lock: str) -> tuple[str, float] | None:
    """(who, age in s) of the lock model `lock`, or None when there is none (any more)."""
    from mlflow.exceptions import MlflowException

    try:
        rm = with_retry(client.get_registered_model, lock)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return (rm.tags or {}).get("holder", "an unknown writer"), time.time() - rm.creation_timestamp / 1000


@contextmanager
def write_lock(name: str, wait_s: float | None = None) -> Iterator[None]:
    """Hold `name`'s write lock: create the registered model `<name>.write-lock`, which the tracking store
    creates for one caller only (its name is unique), and delete it at the end. Another holder is waited for, up
    to `wait_s` (LOCK_WAIT_S), with one line on stderr saying so; then a one-line PolycolorError. A lock older
    than LOCK_STALE_S is taken over (its writer died without releasing it)."""
    from mlflow.exceptions import MlflowException

    client = _client()
    lock = f"{name}{LOCK_SUFFIX}"
    me = f"pid {os.getpid()} on {socket.gethostname()}"
    deadline = time.monotonic() + (LOCK_WAIT_S if wait_s is None else wait_s)
    said = False
    while True:
        try:
            with_retry(client.create_registered_model, lock, tags={"holder": me},
                       description=f"write lock of {name}: held by a polycolor promote or rollback ({me})")
            break
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        held = _lock_holder(client, lock)
        if held is None:
            continue  # released between our create and our look
        who, age = held
        if age > LOCK_STALE_S:
            print(f"taking over {name}'s write lock: {who} took it {age:.0f} s ago and never released it",
                  file=sys.stderr)
            _delete_lock(client, lock)
            continue
        if time.monotonic() > deadline:
            raise PolycolorError(f"registered model {name!r} is being changed by another promote or rollback "
                                 f"({who}, for {age:.0f} s): run this again when it has finished; if none runs, "
                                 f"its lock is taken over after {LOCK_STALE_S:.0f} s")
        if not said:
            print(f"waiting for {name}'s write lock, held by another promote or rollback ({who})", file=sys.stderr)
            said = True
        time.sleep(0.5)
    try:
        yield
    finally:
        _delete_lock(client, lock)


def _delete_lock(client: Any, lock: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        with_retry(client.delete_registered_model, lock)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def _pause_before_write() -> None:
    """The test hook of PAUSE_ENV (see there); nothing when it is unset."""
    gate = os.environ.get(PAUSE_ENV)
    if not gate:
        return
    Path(f"{gate}.reached").touch()
    deadline = time.monotonic() + LOCK_STALE_S
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------- listing

def list_versions(name: str, metrics: Sequence[str] = TABLE_METRICS) -> list[dict[str, str]]:
    """One row per version of `name`, newest first: version, aliases, created, run, decision and `metrics`."""
    client = _client()
    by_version: dict[str, list[str]] = {}
    # search results carry no aliases (sqlite store), so they come from the registered model; a missing
    # registered model is an error here, not an empty table
    for alias, v in aliases(name).items():
        by_version.setdefault(v, []).append(alias)
    versions = with_retry(client.search_model_versions, f"name = '{name}'")
    rows = []
    for mv in sorted(versions, key=lambda m: int(m.version), reverse=True):
        values = version_metrics(mv, metrics)
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")
        row = {
            "version": str(mv.version),
            "aliases": ",".join(sorted(by_version.get(str(mv.version), []))) or "-",
            "created": created,
            "run": (mv.run_id or "-")[:8],
            "decision": (mv.tags or {}).get(DECISION_TAG, "-"),
        }
        row.update({m: (f"{values[m]:.4g}" if m in values else "-") for m in metrics})
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, str]]) -> str:
    """Rows of equal keys as a left-aligned plain-text table with a header line."""
    if not rows:
        return "(no versions)"
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in cols).rstrip() for r in rows]
    return "\n".join(lines)
