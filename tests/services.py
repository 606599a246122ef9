"""Real services in the tests: start a process (on a port from polycolor.stack.free_port), wait until it answers,
stop it by PID.

One way for every server a test starts (`mlflow server`, `mlflow models serve`): its output goes to a log file, and
a service that exits or stays silent fails the test (never skips it, CI or not) with the log's tail and path.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from polycolor.errors import PolycolorError
from polycolor.stack import answers, wait_ready

STARTUP_TIMEOUT_S = 180.0  # importing mlflow (+ torch, a model) on a busy 2-core machine


def mlflow_server_cmd(db: Path, port: int, *extra: str) -> list[str]:
    """`mlflow server` on the sqlite store `db` at 127.0.0.1:`port`, one worker; `extra` flags appended."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1", *extra]


def launch(cmd: list[str], log: Path, *, cwd: Path | None = None,
           env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `cmd` in its own process group (so stop() reaches its workers), its output appended to `log`."""
    with log.open("a") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_until_answers(proc: subprocess.Popen, url: str, log: Path, timeout: float = STARTUP_TIMEOUT_S) -> None:
    """Poll `url` until it answers 200 (polycolor.stack.wait_ready, the stack's own wait); fail the test with the
    log's tail when `proc` exits or `timeout` s pass."""
    try:
        wait_ready(" ".join(str(a) for a in proc.args[:4]), proc, log, lambda: answers(url), timeout)
    except PolycolorError as e:
        pytest.fail(f"{e}:\n{log.read_text(errors='replace')[-3000:]}")


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL after `grace_s`; workers that outlive their leader are killed too."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace_s)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def running(cmd: list[str], url: str, log: Path, *, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = STARTUP_TIMEOUT_S) -> Iterator[subprocess.Popen]:
    """The service `cmd`, started and answering at `url` (see wait_until_answers); stopped by PID at the end."""
    proc = launch(cmd, log, cwd=cwd, env=env)
    try:
        wait_until_answers(proc, url, log, timeout)
        yield proc
    finally:
        stop(proc)
