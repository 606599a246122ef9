"""Stop signals (Ctrl-C, SIGTERM, SIGHUP) as exceptions in the main thread, held back while an MLflow call runs.

A stop signal raised into the middle of an MLflow call (a sqlite transaction, an HTTP request) left the store locked
and the run RUNNING; so `tracking.with_retry` runs each call inside `stop_signals_deferred`, and the signal is
raised as soon as the call returns. Plumbing: the standard library only.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(Exception):
    """Raised in the main thread on SIGTERM so training can checkpoint and close its run as KILLED."""


# Inside an MLflow call (with_retry) a stop signal is held back and raised as soon as the call returns: an exception
# thrown into the middle of a sqlite transaction leaves the store locked and the run RUNNING (seen in the suite).
_held = {"depth": 0, "pending": None}


@contextmanager
def stop_signals_deferred() -> Iterator[None]:
    _held["depth"] += 1
    try:
        yield
    finally:
        _held["depth"] -= 1
    if _held["depth"] == 0 and _held["pending"] is not None:
        exc, _held["pending"] = _held["pending"], None
        raise exc


@contextmanager
def stop_signals() -> Iterator[None]:
    """While the block runs, SIGINT raises KeyboardInterrupt and SIGTERM / SIGHUP (a closed terminal) raise
    Terminated in the main thread, never inside an MLflow call (see stop_signals_deferred)."""
    def handler(signum, frame):  # noqa: ARG001
        exc = KeyboardInterrupt() if signum == signal.SIGINT else Terminated(f"terminated by signal {signum}")
        if _held["depth"]:
            _held["pending"] = exc
            return
        raise exc

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
