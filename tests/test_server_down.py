"""A tracking server that is down costs seconds and one line, never minutes (issue 19, case 2).

Two dead servers, both real sockets on loopback: a port that refuses (nothing listens: bound, then closed) and a
socket that accepts every connection and never answers (a tiny server thread). The check stage, `polycolor models`
and MLflow client calls each fail against both with one line naming the URI; subprocesses run under a timeout, so
a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mlflow
import pytest
from conftest import REPO
from mlflow.exceptions import MlflowException

from polycolor.tracking.store import HTTP_BOUNDS, PROBE_TIMEOUT_S, configure, describe_failure

HANG_LIMIT_S = 90  # a subprocess still running after this is the hang the issue reported (254 s, 600+ s)


def refused_uri() -> str:
    """http://127.0.0.1:PORT where PORT was just free: nothing listens, connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def silent_uri() -> Iterator[str]:
    """A server that accepts every connection, reads nothing and never answers, until the test ends."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:  # the 0.2 s accept timeout, or the socket closed at the end
                continue

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join(5)
        for c in held:
            c.close()
        srv.close()


@contextmanager
def failing_server() -> Iterator[str]:
    """An HTTP server that answers every request with 500, as an MLflow server whose PostgreSQL is down does."""
    class Failing(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_error(500, "database is down")

        do_POST = do_GET

        def log_message(self, *args) -> None:  # quiet
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def one_error_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


@pytest.mark.slow  # starts a process or trains: not in make test-fast
@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_check_stage_fails_on_a_dead_server_before_writing(kind, stage, tmp_path, monkeypatch, capsys,
                                                           request):
    uri = refused_uri() if kind == "refused" else request.getfixturevalue("silent_uri")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    p = tmp_path / "params.yaml"
    p.write_text("ingest:\n  image_size: 32\n")
    out = tmp_path / "check.json"
    assert stage("check").main(["--params", str(p), "--out", str(out)]) == 1
    line = one_error_line(capsys.readouterr().err)
    words = "refused the connection" if kind == "refused" else f"did not answer within {PROBE_TIMEOUT_S:g} s"
    assert uri in line and words in line, line
    assert not out.exists(), "a failed check must write nothing"


def test_check_stage_passes_without_a_server(stage, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the local sqlite store: nothing to ask
    p = tmp_path / "params.yaml"
    p.write_text("ingest:\n  image_size: 32\n")
    assert stage("check").main(["--params", str(p), "--out", str(tmp_path / "check.json")]) == 0


@pytest.mark.slow  # starts a process or trains: not in make test-fast
@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_models_command_fails_in_bounded_time_with_one_line(kind, request):
    uri = refused_uri() if kind == "refused" else request.getfixturevalue("silent_uri")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"MLFLOW_TRACKING_URI": uri}
    p = subprocess.run([sys.executable, "-m", "polycolor.cli", "models"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=HANG_LIMIT_S, check=False)
    assert p.returncode == 1, p.stderr
    line = one_error_line(p.stderr)
    assert uri in line and ("refused" in line if kind == "refused" else "did not answer" in line), line


def test_configure_bounds_mlflow_http_calls(monkeypatch, mlflow_store):
    for key in HTTP_BOUNDS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # an operator's own value wins
    configure()
    from mlflow.environment_variables import (MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_MAX_RETRIES,
                                              MLFLOW_HTTP_REQUEST_TIMEOUT)

    assert MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 7
    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == int(HTTP_BOUNDS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    assert MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get() == int(HTTP_BOUNDS["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_describe_failure_names_the_cause(monkeypatch, mlflow_store, silent_uri):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    for uri, words in ((refused_uri(), "refused the connection"), (silent_uri, "did not answer within 2 s")):
        with pytest.raises(MlflowException) as e:
            mlflow.MlflowClient(uri).get_run("0" * 32)
        said = describe_failure(e.value, uri)
        assert said is not None and uri in said and words in said, said
    with failing_server() as uri:  # the server is up, its database is not: HTTP 500 to every call
        with pytest.raises(MlflowException) as e:
            mlflow.MlflowClient(uri).get_run("0" * 32)
        said = describe_failure(e.value, uri)
        assert said is not None and uri in said and "HTTP 500" in said and "store" in said, said
    with pytest.raises(MlflowException) as e:  # a missing run in a store that works is not a server failure
        mlflow.MlflowClient(mlflow_store).get_run("0" * 32)
    assert describe_failure(e.value, mlflow_store) is None
