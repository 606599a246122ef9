"""The prediction log: one JSON line per painted image, appended by every face (monitoring.observe) and read back by
`polycolor monitor` (monitoring.report).

Where it lives (`location`): what $POLYCOLOR_PREDICTION_LOG names (`off` turns logging off), by default the folder
~/.polycolor/predictions; or a PostgreSQL URL (postgresql://user@host:port/db, the password from $PGPASSFILE), a
store that the scoring servers of several machines write to: the team stack's (docs/monitoring.md). A folder holds
  predictions.jsonl                  the file being appended to;
  predictions-<utc time>-<pid>.jsonl  rotated files, once the current one passed monitor.rotate_mb;
  samples/                           inputs kept for labelling (monitor.sample_share, up to monitor.sample_cap_mb).
Several processes (the scoring server's workers, a CLI, the demo) append at once: each line is written with one
write() under an exclusive flock of `predictions.lock`, and rotation happens under the same lock, so lines never
interleave and none is lost to a rename.

In PostgreSQL every record is one row of TABLE (its JSON text), inserted by the same background thread; inputs are
kept only in a folder log.

A record is built and written by a background thread, off the request's path: the prediction returns first. A log
that cannot be written (a full disk, no permission) never fails a prediction: the failure is reported once on
stderr, counted, and painting goes on.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import math
import os
import queue
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from polycolor.config.monitoring import MonitorConfig

ENV = "POLYCOLOR_PREDICTION_LOG"
OFF = "off"
CURRENT = "predictions.jsonl"
LOCK = "predictions.lock"
SAMPLES = "samples"
TABLE = "polycolor_predictions"
REQUIRED = ("time", "model_sha256")  # a record without these cannot be placed in a window: skipped as corrupt
MB = 1 << 20


Location = Path | str  # a folder, or a PostgreSQL URL (is_database)


def is_database(root: Location) -> bool:
    return str(root).startswith(("postgresql://", "postgresql+"))


def location() -> Location | None:
    """The log ($POLYCOLOR_PREDICTION_LOG: a folder or a PostgreSQL URL; default the folder
    ~/.polycolor/predictions), None when logging is off."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() == OFF:
        return None
    if is_database(value):
        return value
    return Path(value).expanduser() if value else Path.home() / ".polycolor" / "predictions"


class Database:
    """The log as rows of TABLE in PostgreSQL (SQLAlchemy, psycopg2 from the `stack` extra)."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self.url = url if "+" in url.split("://")[0] else url.replace("postgresql://", "postgresql+psycopg2://", 1)
        self.engine = sa.create_engine(self.url, pool_pre_ping=True)
        try:
            with self.engine.begin() as c:
                c.execute(sa.text(f"CREATE TABLE IF NOT EXISTS {TABLE} (id BIGSERIAL PRIMARY KEY, "
                                  "time TEXT NOT NULL, model_sha256 TEXT NOT NULL, record TEXT NOT NULL)"))
        except sa.exc.DBAPIError:
            # Two writers creating the table at once: PostgreSQL's IF NOT EXISTS is not atomic, and the loser gets
            # a unique violation on the catalog. The table is there; anything else is raised.
            with self.engine.connect() as c:
                if c.execute(sa.text("SELECT to_regclass(:t)"), {"t": TABLE}).scalar() is None:
                    raise

    def insert(self, rec: dict[str, Any], line: str) -> None:
        import sqlalchemy as sa

        with self.engine.begin() as c:
            c.execute(sa.text(f"INSERT INTO {TABLE} (time, model_sha256, record) VALUES (:t, :m, :r)"),
                      {"t": str(rec.get("time", "")), "m": str(rec.get("model_sha256", "")), "r": line})

    def lines(self) -> list[str]:
        import sqlalchemy as sa

        with self.engine.connect() as c:
            return [r[0] for r in c.execute(sa.text(f"SELECT record FROM {TABLE} ORDER BY time, id"))]


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN: a descriptor that does not apply is null
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    return v


class PredictionLog:
    """Appends records to the log folder `root` from a background thread (see the module docstring)."""

    def __init__(self, root: Location, cfg: MonitorConfig = MonitorConfig(), *, seed: int | None = None) -> None:
        self.root: Location = root if is_database(root) else Path(root)
        self._db: Database | None = None
        self.cfg = cfg
        self.failed = 0  # records lost to a log that could not be written
        self.written = 0
        self._reported = False
        self._rng = np.random.default_rng(seed)
        self._queue: queue.Queue[tuple[Callable[[], dict[str, Any]], tuple[np.ndarray, str] | None] | None] = \
            queue.Queue()
        self._thread = threading.Thread(target=self._run, name="polycolor-prediction-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # ------------------------------------------------------------------ the request's side
    def append(self, make_record: Callable[[], dict[str, Any]], image: np.ndarray | None = None,
               colour: str = "") -> None:
        """Queue one record: `make_record()` is called on the log's thread; `image` uint8 (H, W, 3), requested in
        `colour`, may be kept as a sample (monitor.sample_share). Never raises."""
        keep = (image, colour) if (image is not None and self.cfg.sample_share > 0
                                   and self._rng.random() < self.cfg.sample_share) else None
        self._queue.put((make_record, keep))

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued record is written (or lost and counted); False when `timeout` s passed first."""
        done = threading.Event()
        self._queue.put((lambda: {"__flush__": done}, None))
        return done.wait(timeout)

    def close(self) -> None:
        """Write what is queued and stop the thread; says on stderr how many records were lost, if any."""
        if self._thread.is_alive():
            self.flush()
            self._queue.put(None)
            self._thread.join(timeout=30.0)
        if self.failed:
            print(f"polycolor: {self.failed} prediction log record(s) lost ({self.root} unwritable)",
                  file=sys.stderr)
            self.failed = 0

    # ------------------------------------------------------------------ the log's thread
    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            make_record, keep = item
            try:
                rec = make_record()
                if "__flush__" in rec:
                    rec["__flush__"].set()
                    continue
                if keep is not None and not is_database(self.root):
                    rec["sample"] = self._keep(keep[0])
                    rec["sample_colour"] = keep[1]
                line = json.dumps({k: _jsonable(v) for k, v in rec.items()}, allow_nan=False)
                if is_database(self.root):
                    self._db = self._db or Database(str(self.root))
                    self._db.insert(rec, line)
                else:
                    self._write(line + "\n")
                self.written += 1
            except Exception as e:  # noqa: BLE001 - a broken log must never reach a prediction
                self._fail(e)

    def _fail(self, e: BaseException) -> None:
        self.failed += 1
        if not self._reported:
            self._reported = True
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(f"polycolor: prediction log {self.root} not written ({why}); predictions go on, lost records "
                  "are counted", file=sys.stderr)

    def _write(self, line: str) -> None:
        assert isinstance(self.root, Path)
        self.root.mkdir(parents=True, exist_ok=True)
        data = line.encode()
        with open(self.root / LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = self.root / CURRENT
                if current.exists() and current.stat().st_size + len(data) > self.cfg.rotate_mb * MB:
                    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
                    current.rename(self.root / f"predictions-{stamp}-{os.getpid()}.jsonl")
                fd = os.open(current, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    written = os.write(fd, data)
                finally:
                    os.close(fd)
                if written != len(data):
                    raise OSError(f"short write ({written} of {len(data)} bytes)")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _keep(self, image: np.ndarray) -> str | None:
        """Save `image` as a PNG under samples/ unless the cap is reached; its file name, or None."""
        from PIL import Image

        assert isinstance(self.root, Path)
        folder = self.root / SAMPLES
        folder.mkdir(parents=True, exist_ok=True)
        used = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        if used >= self.cfg.sample_cap_mb * MB:
            return None
        name = f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.png"
        tmp = folder / f".{name}.tmp"
        Image.fromarray(np.ascontiguousarray(image), "RGB").save(tmp, format="PNG")
        tmp.replace(folder / name)
        return name


_SHARED: dict[Location, PredictionLog] = {}
_SHARED_LOCK = threading.Lock()


def shared_log(root: Location, cfg: MonitorConfig = MonitorConfig()) -> PredictionLog:
    """The process's one PredictionLog for `root` (one writer thread however many faces log to it)."""
    key = root if is_database(root) else Path(root).expanduser().resolve()
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = PredictionLog(key, cfg)
        return _SHARED[key]


# ---------------------------------------------------------------------------------------- reading


@dataclass
class LogRead:
    records: list[dict[str, Any]]  # in time order
    corrupt: int  # lines skipped: cut off, not JSON, not a record


def log_files(root: Path) -> list[Path]:
    """The log's files, oldest first: rotated ones by their time stamp, then the current one."""
    rotated = sorted(root.glob("predictions-*.jsonl"))
    current = root / CURRENT
    return rotated + ([current] if current.exists() else [])


def _lines(root: Location) -> Iterator[bytes | str]:
    if is_database(root):
        yield from Database(str(root)).lines()
        return
    for path in log_files(Path(root)):
        with open(path, "rb") as f:
            yield from f


def read_log(root: Location) -> LogRead:
    """Every record of the log at `root`; a line that is cut off or corrupt is skipped and counted."""
    records, corrupt = [], 0
    for raw in _lines(root):
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            corrupt += 1
            continue
        if not isinstance(rec, dict) or any(not isinstance(rec.get(k), str) for k in REQUIRED):
            corrupt += 1
            continue
        records.append(rec)
    records.sort(key=lambda r: r["time"])
    return LogRead(records, corrupt)
