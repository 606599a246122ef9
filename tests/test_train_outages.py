"""The train stage when what it writes to goes away: a full disk under its checkpoints, a tracking server that
blinks or stays down (docs/reliability.md, round 2)."""

from __future__ import annotations

import errno
import io
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import fail_or_skip

from polycolor.config import parse_config
from polycolor.errors import run_guarded
from polycolor.nn import modelio
from polycolor.training.train import run_training

TINY_PARAMS = {
    "model": {"widths": [4, 8], "embed_dim": 8},
    "train": {"epochs": 2, "batch_size": 4, "grid_samples": 2},
    "mlflow": {"experiment": "test-outages"},
}


def tiny(epochs: int = 2, **train):
    return parse_config({**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "epochs": epochs, **train}})


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
            free = __import__("shutil").disk_usage(d).free
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
            subprocess.run(["umount", str(d)], check=False)


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
