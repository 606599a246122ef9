"""Issue 28, registry writes that cannot lose an update: `promote` and `promote --rollback` hold the registered
model's write lock from their first read to their last write, so of two racing writers one waits for the other.

The race of the issue, made certain with two real processes and the test hook registry.PAUSE_ENV (the first writer
stops between its read and its write until the test lets it go):
- a rollback landing while promote is verifying is refused in one line (the champion it was asked to roll back
  moved), where it used to set champion 1, history [1], which promote then overwrote with [1, 2, 3];
- a promote landing while a rollback is writing waits and decides against the rolled-back champion.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_registry import CFG, PACKAGE, add_version, champion, store  # noqa: F401 (store is a fixture)

from polycolor.errors import PolycolorError
from polycolor.serving import registry
from polycolor.tracking.store import configure

WAIT_S = 180.0  # a CLI process importing MLflow and torch on the shared 2-core machine


def cli_process(folder: Path, *args: str, pause: Path | None = None) -> tuple[subprocess.Popen, Path]:
    """`polycolor promote ...` as its own process in `folder` (its params.yaml, this test's store); its stderr goes
    to a file, returned too. With `pause`, it stops before its write until `pause` exists (registry.PAUSE_ENV)."""
    env = {**os.environ, **({registry.PAUSE_ENV: str(pause)} if pause else {})}
    err = folder / f"stderr-{len(list(folder.glob('stderr-*')))}.txt"
    with err.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "polycolor.cli", "promote", *args], cwd=folder, env=env,
                                stdout=subprocess.PIPE, stderr=f, text=True)
    return proc, err


def wait_for(what: str, done, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not done():
        if time.monotonic() > deadline:
            for p in procs:
                p.kill()
            pytest.fail(f"{what}: not within {WAIT_S:.0f} s")
        time.sleep(0.2)


def finish(proc: subprocess.Popen, err: Path) -> tuple[int, str, str]:
    out, _ = proc.communicate(timeout=WAIT_S)
    return proc.returncode, out, err.read_text()


def champion_then_candidate() -> tuple[str, str, str]:
    """v1 then v2 promoted (champion v2, history [v1, v2]) and a better v3 as @candidate."""
    v1 = add_version(31.0)
    assert registry.promote("polycolor", CFG).decision == "promoted"
    v2 = add_version(32.0)
    assert registry.promote("polycolor", CFG).decision == "promoted"
    v3 = add_version(33.0)
    assert champion() == v2 and registry.champion_history("polycolor") == [v1, v2]
    return v1, v2, v3


def no_lock_left() -> bool:
    import mlflow

    return not mlflow.MlflowClient().search_registered_models(f"name = 'polycolor{registry.LOCK_SUFFIX}'")


@pytest.mark.slow  # two CLI processes
def test_a_rollback_landing_while_promote_verifies_is_refused_not_lost(store):  # noqa: F811
    v1, v2, v3 = champion_then_candidate()
    gate = store / "gate"
    promote, promote_err = cli_process(store, pause=gate)
    wait_for("promote reaching its write", Path(f"{gate}.reached").exists, [promote])
    rollback, rollback_err = cli_process(store, "--rollback")
    wait_for("the rollback waiting for the lock",
             lambda: "waiting for polycolor's write lock" in rollback_err.read_text() or rollback.poll() is not None,
             [promote, rollback])
    gate.touch()
    released = time.monotonic()
    rc, out, err = finish(promote, promote_err)
    assert rc == 0 and "promoted" in out, (out, err)
    rc, out, err = finish(rollback, rollback_err)
    print(f"the rollback ended {time.monotonic() - released:.1f} s after promote was let go")
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 1 and len(lines) == 1 and f"moved from version {v2} to {v3}" in lines[0], (out, err)
    assert "Traceback" not in err
    assert champion() == v3 and registry.champion_history("polycolor") == [v1, v2, v3], \
        "the promotion stands, and the history still says how to roll it back"
    assert no_lock_left()


@pytest.mark.slow  # two CLI processes
def test_a_promote_landing_while_a_rollback_writes_decides_against_the_rolled_back_champion(store):  # noqa: F811
    v1, v2, v3 = champion_then_candidate()
    gate = store / "gate"
    rollback, rollback_err = cli_process(store, "--rollback", pause=gate)
    wait_for("the rollback reaching its write", Path(f"{gate}.reached").exists, [rollback])
    promote, promote_err = cli_process(store)
    wait_for("promote waiting for the lock",
             lambda: "waiting for polycolor's write lock" in promote_err.read_text() or promote.poll() is not None,
             [promote, rollback])
    gate.touch()
    rc, out, err = finish(rollback, rollback_err)
    assert rc == 0 and f"rolled back from version {v2} to version {v1}" in out, (out, err)
    rc, out, err = finish(promote, promote_err)
    assert rc == 0 and "promoted" in out, (out, err)
    assert champion() == v3 and registry.champion_history("polycolor") == [v1, v3], \
        f"version {v2}, rolled back, must not come back into the history"
    assert registry.rollback("polycolor").champion_after == v1, "the next rollback restores v1, not v2"
    assert no_lock_left()


def test_a_held_lock_refuses_in_one_line_and_a_stale_one_is_taken_over(store, monkeypatch, capsys):  # noqa: F811
    import mlflow

    add_version(31.0)
    client = mlflow.MlflowClient()
    client.create_registered_model(f"polycolor{registry.LOCK_SUFFIX}", tags={"holder": "pid 7 on elsewhere"})
    monkeypatch.setattr(registry, "LOCK_WAIT_S", 1.0)
    with pytest.raises(PolycolorError, match=r"being changed by another promote or rollback \(pid 7 on elsewhere"):
        registry.promote("polycolor", CFG)
    assert champion() is None and not no_lock_left(), "the other writer's lock is left alone"
    monkeypatch.setattr(registry, "LOCK_STALE_S", 0.0)
    assert registry.promote("polycolor", CFG).decision == "promoted"
    assert "taking over polycolor's write lock: pid 7 on elsewhere" in capsys.readouterr().err
    assert no_lock_left()


def test_the_lock_is_released_when_promote_fails(store):  # noqa: F811
    import mlflow

    client = mlflow.MlflowClient()
    client.create_registered_model("polycolor")
    mv = client.create_model_version("polycolor", PACKAGE["uri"], tags={})  # no content_sha256: refused
    with pytest.raises(PolycolorError, match="has no content_sha256 tag"):
        registry.promote("polycolor", CFG, version=mv.version)
    assert no_lock_left()
    with pytest.raises(PolycolorError, match="no @champion to roll back"):
        registry.rollback("polycolor")
    assert no_lock_left()


@pytest.mark.slow
def test_the_lock_on_the_team_stack_is_taken_released_and_taken_again(team_stack, monkeypatch):
    """On the stack's server (PostgreSQL, basic auth as the pipeline's user) the lock model is created, refused to a
    second holder, deleted, and created again: the auth app's permission rows follow it."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_stack.tracking_uri)
    configure()  # as promote does: an earlier test in this process may have pointed MLflow at another store
    client = mlflow.MlflowClient(team_stack.tracking_uri)
    name = "lock-check"
    for _ in range(3):
        with registry.write_lock(name):
            assert client.get_registered_model(f"{name}{registry.LOCK_SUFFIX}").tags["holder"].startswith("pid ")
            with pytest.raises(PolycolorError, match="being changed by another promote or rollback"):
                with registry.write_lock(name, wait_s=0.0):
                    pass
        assert not client.search_registered_models(f"name = '{name}{registry.LOCK_SUFFIX}'")
