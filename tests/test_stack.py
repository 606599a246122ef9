"""The stack's plumbing without starting it (seconds): where experiments put artifacts for each kind of tracking
store, and the one-line errors of `polycolor stack` when there is nothing to stop or no PostgreSQL to start.
The stack itself, started for real, is tested in test_team_stack.py and test_dvc_remote.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from polycolor import stack
from polycolor.cli import main
from polycolor.errors import PolycolorError
from polycolor.tracking.store import artifact_root


def test_artifact_root_is_local_for_sqlite_and_the_servers_own_for_http(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert artifact_root() == (tmp_path / "mlartifacts").as_uri()
    for uri in ("http://127.0.0.1:5000", "https://mlflow.internal"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        assert artifact_root() is None, f"{uri}: the server must choose (mlflow-artifacts:/)"


def test_down_without_a_stack_is_a_one_line_error(tmp_path, capsys):
    assert main(["stack", "down", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no stack recorded") and err.count("\n") == 1, err


def test_up_without_postgresql_fails_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POLYCOLOR_PG_BINDIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no `postgres` on PATH either
    with pytest.raises(PolycolorError, match="apt-get install -y postgresql"):
        stack.postgres_bindir()
    assert main(["stack", "up", "--dir", str(tmp_path / "s")]) == 1
    assert "PostgreSQL server binaries" in capsys.readouterr().err
    assert not (tmp_path / "s" / stack.STATE).exists(), "a stack that did not start must not be recorded"


def test_exports_carry_no_secret():
    s = stack.Stack(Path("/tmp/x"), "http://127.0.0.1:1", "http://127.0.0.1:2", stack.ARTIFACTS,
                    "postgresql+psycopg2://polycolor@127.0.0.1:3/mlflow", ())
    text = s.exports()
    assert text.splitlines()[0] == "export MLFLOW_TRACKING_URI=http://127.0.0.1:1"
    assert text.splitlines()[2] == 'export MLFLOW_TRACKING_PASSWORD="$(cat /tmp/x/mlflow-password)"', \
        "the password is read from its file by the shell, never printed"
    assert "AWS_" not in text, "the S3 keys stay in <dir>/s3-keys"
