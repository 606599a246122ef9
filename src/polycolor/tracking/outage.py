"""A tracking server that blinks during training: the buffer that keeps a training's MLflow calls through an outage,
and the bound after which the training stops with its checkpoint kept."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from polycolor.errors import PolycolorError, one_line
from polycolor.tracking.store import with_retry

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
                f"({one_line(e)[:160]}): training stopped with its checkpoint kept; rerun when the server "
                "is back and the same MLflow run continues") from None
