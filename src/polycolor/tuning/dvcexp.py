"""DVC at the edge of `polycolor tune`: queue named experiments, run the queue, read experiments back.

Everything goes through DVC's own command line (`python -m dvc`, this interpreter's), so a trial is exactly what
`dvc exp run --queue -n NAME -S key=value` makes, and `dvc exp show` / `dvc exp apply NAME` see it like any other.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polycolor.config.base import flatten
from polycolor.errors import PolycolorError

FINAL_STATES = ("success", "failed")
SHOW_ATTEMPTS = 5  # consecutive `dvc exp show` failures before waiting gives up
DVC_TIMEOUT_S = 600.0
# `dvc exp show` can hang for good while a queue worker is active (seen with DVC 3.67: pygit2's blob reader waits on
# an event nobody sets, reading a running experiment's metrics); a poll that takes this long is killed and retried.
SHOW_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Experiment:
    name: str
    state: str                                            # queued | running | success | failed (DVC's executor)
    metrics: dict[str, Any] = field(default_factory=dict)  # every declared metrics file's keys, dotted
    params: dict[str, Any] = field(default_factory=dict)   # params.yaml, dotted
    log: Path | None = None                               # the queue's log of this experiment's run

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES


def dvc(root: Path, *args: str, timeout: float = DVC_TIMEOUT_S) -> str:
    """Run `dvc ARGS` in `root` and return its stdout; a failure or a timeout is one PolycolorError line."""
    # Files, not pipes: `dvc queue start` leaves workers running that inherit its stdout and stderr, and reading a
    # pipe to its end would wait for the whole queue.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        try:
            rc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, stdout=out, stderr=err,
                                check=False, timeout=timeout).returncode
        except subprocess.TimeoutExpired:  # subprocess.run has killed it
            raise PolycolorError(f"dvc {' '.join(args[:3])} did not answer in {timeout:.0f} s") from None
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if rc != 0:
        lines = [s for s in (stderr + stdout).splitlines() if s.strip()]
        said = next((s for s in lines if s.startswith("ERROR")), lines[-1] if lines else f"exit {rc}")
        raise PolycolorError(f"dvc {' '.join(args[:3])} failed: {said}")
    return stdout


def flag_value(value: Any) -> str:
    """A value as `-S key=VALUE` writes it (DVC parses it back as YAML): true, 8, 0.003, cuda, [1,2]. Text stays as
    it is, anything else is JSON without spaces, so that a shell splits `-S key=VALUE` into words safely."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def queue(root: Path, name: str, values: dict[str, Any]) -> None:
    """Queue one named experiment with `values` (dotted params.yaml keys) set."""
    flags = [a for k, v in values.items() for a in ("-S", f"{k}={flag_value(v)}")]
    dvc(root, "exp", "run", "--queue", "-n", name, *flags)


def start(root: Path, jobs: int) -> None:
    """Start `jobs` queue workers; they run the queued experiments and stop when the queue is empty."""
    dvc(root, "queue", "start", "-j", str(jobs))


def _metrics_of(files: dict[str, Any]) -> dict[str, Any]:
    """{file: {"data": {...}}} as one dotted mapping over every metrics file that loaded (the first file wins a
    key two files hold)."""
    out: dict[str, Any] = {}
    for entry in (files or {}).values():
        for k, v in flatten((entry or {}).get("data") or {}).items():
            out.setdefault(k, v)
    return out


def experiments(root: Path, revs: set[str]) -> dict[str, Experiment]:
    """Every named experiment on the baseline commits `revs` (default: HEAD), as `dvc exp show --json` reports it."""
    found: dict[str, Experiment] = {}
    for rev in sorted(revs) or [""]:
        shown = json.loads(dvc(root, "exp", "show", "--json", *(["--rev", rev] if rev else []),
                               timeout=SHOW_TIMEOUT_S) or "[]")
        for baseline in shown:
            for exp in baseline.get("experiments") or []:
                head = (exp.get("revs") or [{}])[0]
                data = head.get("data") or {}
                executor = exp.get("executor") or {}
                log = (executor.get("local") or {}).get("log")
                name = exp.get("name") or head.get("name")
                if not name:
                    continue
                found[name] = Experiment(
                    name=name, state=executor.get("state") or ("failed" if head.get("error") else "success"),
                    metrics=_metrics_of(data.get("metrics")),
                    params=flatten((data.get("params") or {}).get("params.yaml", {}).get("data") or {}),
                    log=Path(log) if log else None)
    return found


def workspace_metric_names(root: Path) -> set[str] | None:
    """The keys of the declared metrics files in the workspace (the committed ones unless changed), dotted; None
    when none of them exists yet (a fresh clone before its first `dvc repro`)."""
    shown = json.loads(dvc(root, "metrics", "show", "--json") or "{}")
    files = next(iter(shown.values()), {}).get("data") or {}
    names = set(_metrics_of({f: e for f, e in files.items() if "data" in (e or {})}))
    return names or None


def error_line(root: Path, exp: Experiment) -> str:
    """The first line that says why an experiment failed: a stage's `error: ...` line, else DVC's first ERROR."""
    try:
        text = exp.log.read_text(errors="replace") if exp.log else dvc(root, "queue", "logs", exp.name)
    except (OSError, PolycolorError):
        text = ""
    lines = [s.strip() for s in text.splitlines()]
    said = next((s for s in lines if s.startswith("error:")), None) or next(
        (s for s in lines if s.startswith("ERROR")), None)
    return said or f"experiment {exp.name} failed (dvc queue logs {exp.name})"


def finished_at(exp: Experiment) -> float:
    """When the experiment's run ended: its log's last write, else now."""
    try:
        return exp.log.stat().st_mtime if exp.log else time.time()
    except OSError:
        return time.time()


def wait(root: Path, names: set[str], revs: set[str], poll_s: float, on_finish: Any = None) -> dict[str, Experiment]:
    """Poll `dvc exp show` until every experiment in `names` succeeded or failed; `on_finish(exp)` is called once
    for each as it ends. An experiment that leaves DVC's view for good (removed from the queue) counts as failed."""
    seen: dict[str, Experiment] = {}
    missing: dict[str, int] = {}
    refused = 0
    while len(seen) < len(names):
        try:
            shown = experiments(root, revs)
            refused = 0
        except PolycolorError:  # `dvc exp show` fails now and then while a worker collects an experiment
            refused += 1
            if refused >= SHOW_ATTEMPTS:
                raise
            time.sleep(poll_s)
            continue
        for name in sorted(names - set(seen)):
            exp = shown.get(name)
            if exp is None:
                missing[name] = missing.get(name, 0) + 1
                if missing[name] < 3:
                    continue
                exp = Experiment(name, "gone")
            elif not exp.finished:
                continue
            seen[name] = exp
            if on_finish is not None:
                on_finish(exp)
        if len(seen) < len(names):
            time.sleep(poll_s)
    return seen
