"""The train stage when what it writes to goes away: a full disk under its checkpoints, a tracking server that
blinks or stays down (docs/reliability.md, round 2)."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import mlflow
import pytest
import torch
from services import launch, mlflow_server_cmd, wait_until_answers

from polycolor.config.training import TrainingParams
from polycolor.errors import run_guarded
from polycolor.nn import modelio
from polycolor.stack import free_port
from polycolor.training.train import run_training

TINY_PARAMS = {
    "model": {"widths": [4, 8], "embed_dim": 8},
    "train": {"epochs": 2, "batch_size": 4, "grid_samples": 2},
    "mlflow": {"experiment": "test-outages"},
}


def tiny(epochs: int = 2, **train):
    return TrainingParams.parse({**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "epochs": epochs, **train}})


def outputs(root: Path, ck: Path) -> dict[str, Path]:
    return dict(checkpoint_dir=ck, model_path=root / "models" / "model.pt", metrics_path=root / "train.json",
                curve_path=root / "curve.csv", run_info_path=root / "run.json")


def statuses(uri: str) -> list[str]:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("test-outages")
    return sorted(r.info.status for r in client.search_runs([exp.experiment_id]))


# ------------------------------------------------------------------------------------------------- a full disk

class FullDisk(io.RawIOBase):
    """A file on a disk that fills after `room` bytes (used only where tmpfs cannot be mounted: not root)."""

    def __init__(self, path: Path, room: int):
        self.f, self.room = open(path, "wb"), room  # noqa: SIM115

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return self.f.write(b)

    def close(self) -> None:
        self.f.close()
        super().close()


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A 2 MiB tmpfs mounted for this test (root only), unmounted after; elsewhere a simulated one: model files
    written through modelio get ENOSPC once `fill()` was called. Yields (folder, fill, free)."""
    d = tmp_path / "small-disk"
    d.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(d)],
                             capture_output=True).returncode == 0
    filler = d / "filler"

    def fill() -> None:
        if mounted:  # leave 16 KiB: less than a checkpoint of the tiny model
            free = shutil.disk_usage(d).free
            filler.write_bytes(b"\0" * (free - 16 * 1024))
        else:
            monkeypatch.setattr(modelio, "open", lambda p, mode: FullDisk(Path(p), 16 * 1024), raising=False)

    def free() -> None:
        filler.unlink(missing_ok=True)
        monkeypatch.delattr(modelio, "open", raising=False)

    try:
        yield d, fill, free
    finally:
        if mounted:
            if subprocess.run(["umount", str(d)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(d)], check=False)  # still busy: detach it now, freed when idle


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_a_full_disk_stops_training_in_one_line_with_the_checkpoint_intact(tiny_dataset, tmp_path, mlflow_store,
                                                                            small_disk, capsys):
    folder, fill, free = small_disk
    out = outputs(tmp_path, folder / "checkpoints")
    data = dict(train_dir=tiny_dataset / "training", val_dir=tiny_dataset / "validation")
    run_training(tiny(2), **data, **out)
    last = out["checkpoint_dir"] / "last.pt"
    before = last.read_bytes()
    fill()
    capsys.readouterr()
    t0 = time.monotonic()
    code = run_guarded(lambda: run_training(tiny(3), **data, **out))
    took = time.monotonic() - t0
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 1 and len(err) == 1 and "Traceback" not in stderr, stderr
    assert "no space left on device" in err[0] and "basic_ios" not in err[0] and ".tmp-" not in err[0], err
    if folder.is_mount():  # the real tmpfs: the line names it
        assert f"the filesystem at {folder} (2.0 MiB) is full" in err[0], err
    assert last.read_bytes() == before, "the last complete checkpoint (epoch 2) is kept"
    assert sorted(p.name for p in out["checkpoint_dir"].iterdir()) == ["best.pt", "last.pt"], "nothing half-written"
    assert statuses(mlflow_store) == ["FAILED", "FINISHED"], "the continued run is closed as FAILED"
    print(f"disk full: one line after {took:.1f} s: {err[0]}")
    free()
    run_training(tiny(3), **data, **out)  # space freed: the same training goes on from epoch 2
    assert torch.load(last, weights_only=True)["epoch"] == 3


# ------------------------------------------------------------------------------------------- a tracking server

class Server:
    """A real `mlflow server` (sqlite store, local artifacts) on one fixed free loopback port, that the test stops
    (SIGKILL to its process group: a crash) and starts again on the same store. Its log names itself on failure."""

    def __init__(self, root: Path, empty_db: Path):
        self.root = root
        shutil.copy(empty_db, root / "mlflow.db")  # the schema made once per session: the server starts faster
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = root / "mlflow-server.log"

    def start(self, timeout: float = 180) -> None:
        cmd = mlflow_server_cmd(self.root / "mlflow.db", self.port,
                                "--artifacts-destination", str(self.root / "artifacts"))
        self.proc = launch(cmd, self.log, cwd=self.root,
                           env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        wait_until_answers(self.proc, self.uri + "/health", self.log, timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@pytest.fixture
def server(tmp_path, monkeypatch, empty_mlflow_db):
    srv = Server(tmp_path, empty_mlflow_db)
    srv.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", srv.uri)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    try:
        yield srv
    finally:
        srv.kill()


def epochs_done(ck: Path) -> int:
    try:
        return int(torch.load(ck / "last.pt", weights_only=True)["epoch"])
    except Exception:  # not written yet, or being replaced
        return 0


def in_background(fn) -> list:
    """Run fn in a thread; returns a list that gets fn's exception, if any (training keeps the main thread: its
    signal handlers live there)."""
    errors: list = []

    def body():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threading.Thread(target=body, daemon=True).start()
    return errors


def wait_until(cond, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


@pytest.mark.slow  # starts an mlflow server, twice
def test_a_blink_of_the_tracking_server_costs_no_metric(tiny_dataset, tmp_path, server, capsys):
    """The server is killed after epoch 1 and started again once two more epochs were trained without it: training
    goes on, the run ends FINISHED with every epoch's metrics exactly once."""
    out = outputs(tmp_path, tmp_path / "checkpoints")
    seen: dict[str, int] = {}

    def blink():
        wait_until(lambda: epochs_done(out["checkpoint_dir"]) >= 1)
        server.kill()
        seen["killed_after"] = epochs_done(out["checkpoint_dir"])
        wait_until(lambda: epochs_done(out["checkpoint_dir"]) >= seen["killed_after"] + 2)
        seen["restarted_after"] = epochs_done(out["checkpoint_dir"])
        server.start()

    errors = in_background(blink)
    run_training(tiny(12), train_dir=tiny_dataset / "training", val_dir=tiny_dataset / "validation", **out,
                 max_outage_s=300)
    assert not errors, errors
    assert seen["restarted_after"] >= seen["killed_after"] + 2, seen
    client = mlflow.MlflowClient(server.uri)
    run_id = json.loads(out["run_info_path"].read_text())["run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run_id, "val_loss"))
    assert steps == list(range(1, 13)), steps
    said = capsys.readouterr().out
    assert "does not answer: metrics kept" in said and "is back after" in said, said
    print(f"blink: server down after epoch {seen['killed_after']}, back after epoch {seen['restarted_after']}")


@pytest.mark.slow  # starts an mlflow server, twice
def test_a_long_outage_stops_training_in_one_line_and_the_next_start_continues_the_run(
        tiny_dataset, tmp_path, server, capsys):
    out = outputs(tmp_path, tmp_path / "checkpoints")
    data = dict(train_dir=tiny_dataset / "training", val_dir=tiny_dataset / "validation")
    killed: dict[str, float] = {}

    def outage():
        wait_until(lambda: epochs_done(out["checkpoint_dir"]) >= 1)
        server.kill()
        killed["at"] = time.monotonic()

    errors = in_background(outage)
    code = run_guarded(lambda: run_training(tiny(100_000), **data, **out, max_outage_s=5))
    took = time.monotonic() - killed["at"]
    assert not errors, errors
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 1 and len(err) == 1 and "Traceback" not in stderr, stderr
    assert f"tracking server {server.uri} has not answered" in err[0] and "checkpoint kept" in err[0], err
    done = epochs_done(out["checkpoint_dir"])
    assert done >= 1, "the checkpoint of the last completed epoch is kept"
    print(f"long outage (bound 5 s): one line {took:.1f} s after the kill, {done} epochs kept: {err[0]}")
    server.start()
    run_training(tiny(done), **data, **out)  # back: the same run continues and is closed
    client = mlflow.MlflowClient(server.uri)
    [run] = client.search_runs([client.get_experiment_by_name("test-outages").experiment_id])
    assert run.info.status == "FINISHED", run.info.status
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
    assert steps == list(range(1, done + 1)), steps
