"""The train stage's MLflow edge: one run with params, per-epoch metrics and lineage tags; failures mark the run."""

import json
import os
import signal
import threading
import time

import mlflow
import pytest
import torch

from polycolor.config.base import flatten
from polycolor.config.training import TrainingParams
from polycolor.errors import PolycolorError
from polycolor.nn.modelio import load_model
from polycolor.tracking.datasets import dvc_hash
from polycolor.training.train import run_training

TINY_PARAMS = {
    "model": {"widths": [4, 8], "embed_dim": 8},
    "train": {"epochs": 2, "batch_size": 4, "grid_samples": 2},
    "mlflow": {"experiment": "test-train"},
}


@pytest.fixture
def store(mlflow_store):
    return mlflow_store


def outputs(tmp_path):
    return dict(checkpoint_dir=tmp_path / "ck", model_path=tmp_path / "models" / "model.pt",
                metrics_path=tmp_path / "train.json", curve_path=tmp_path / "curve.csv",
                run_info_path=tmp_path / "run.json")


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_a_training_run_lands_in_mlflow(tiny_dataset, tmp_path, store, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "tiny-exp")
    monkeypatch.setenv("MKL_CBWR", "AVX2")  # recorded as set (MKL has read it already: no effect here)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    cfg = TrainingParams.parse(TINY_PARAMS)
    out = outputs(tmp_path)
    run_training(cfg, train_dir=tiny_dataset / "training", val_dir=tiny_dataset / "validation", **out)

    info = json.loads(out["run_info_path"].read_text())
    run = mlflow.MlflowClient(store).get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tiny-exp", "run name must be the DVC experiment name when set"
    assert run.data.params["train.epochs"] == "2" and run.data.params["model.widths"] == "[4, 8]"
    assert run.data.tags["dvc_exp_name"] == "tiny-exp"
    assert {"git_commit", "git_dirty", "data_hash"} <= set(run.data.tags)
    assert run.data.tags["torch_version"] == torch.__version__ and run.data.tags["numpy_version"]
    assert run.data.tags["cpu_capability"] == torch.backends.cpu.get_cpu_capability(), "the kernels that ran"
    assert run.data.tags["env.MKL_CBWR"] == "AVX2" and "env.ATEN_CPU_CAPABILITY" not in run.data.tags
    assert not any(k.startswith(("evaluate.", "paint.", "promote.")) for k in run.data.params), "other runs' params"
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert inputs["train"].dataset.digest == dvc_hash(tiny_dataset / "training")
    assert inputs["val"].dataset.source_type == "dvc"
    assert {t.key: t.value for t in inputs["val"].tags}["mlflow.data.context"] == "validation"
    exp = mlflow.MlflowClient(store).get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development", "a model-training experiment"
    history = mlflow.MlflowClient(store).get_metric_history(info["run_id"], "val_psnr")
    assert [m.step for m in history] == [1, 2]
    assert {"train_loss", "val_loss", "lr", "images_per_s", "loss_l1"} <= set(run.data.metrics)
    loaded = load_model(out["model_path"])
    assert loaded.image_size == 32 and loaded.meta["run_id"] == info["run_id"]
    assert (out["checkpoint_dir"] / "last.pt").is_file() and (out["checkpoint_dir"] / "best.pt").is_file()
    assert out["curve_path"].read_text().splitlines()[0].startswith("epoch,")


def runs(store):
    client = mlflow.MlflowClient(store)
    return client.search_runs([client.get_experiment_by_name("test-train").experiment_id])


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_an_exception_leaves_the_run_failed(tiny_dataset, tmp_path, store):
    out = outputs(tmp_path)
    (tmp_path / "models").write_text("a file where the model's folder should be")  # writing the model fails
    with pytest.raises(OSError):
        run_training(TrainingParams.parse(TINY_PARAMS), train_dir=tiny_dataset / "training",
                     val_dir=tiny_dataset / "validation", **out)
    assert [r.info.status for r in runs(store)] == ["FAILED"]


def test_ctrl_c_marks_the_run_killed_and_keeps_the_checkpoint(tiny_dataset, tmp_path, store):
    """A real SIGINT in the middle of training (once epoch 1's best.pt exists)."""
    cfg = TrainingParams.parse({**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "epochs": 200}})
    out = outputs(tmp_path)

    def interrupt_after_epoch_1():
        deadline = time.monotonic() + 120
        while not (out["checkpoint_dir"] / "best.pt").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_after_epoch_1, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, train_dir=tiny_dataset / "training", val_dir=tiny_dataset / "validation", **out)
    [run] = runs(store)
    assert run.info.status == "KILLED"
    ck = torch.load(out["checkpoint_dir"] / "last.pt", weights_only=True)
    assert 1 <= ck["epoch"] < 200 and ck["run_id"] == run.info.run_id


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_a_run_whose_checkpoint_cannot_be_resumed_is_not_left_running(tiny_dataset, tmp_path, store):
    out = outputs(tmp_path)
    run_training(TrainingParams.parse(TINY_PARAMS), train_dir=tiny_dataset / "training",
                 val_dir=tiny_dataset / "validation", **out)
    [killed] = runs(store)
    mlflow.MlflowClient(store).update_run(killed.info.run_id, "RUNNING")  # as a SIGKILL leaves it
    other = TrainingParams.parse({**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "lr": 1e-3}})  # not resumable
    run_training(other, train_dir=tiny_dataset / "training", val_dir=tiny_dataset / "validation", **out)
    status = {r.info.run_id: r.info.status for r in runs(store)}
    assert status.pop(killed.info.run_id) == "KILLED"
    assert list(status.values()) == ["FINISHED"], "the new training has a run of its own"


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_a_resumed_run_logs_the_epoch_a_kill_left_unlogged(tiny_dataset, tmp_path, store, monkeypatch):
    """Killed after epoch 2's checkpoint was written but before epoch 2 reached MLflow: the continued run fills in
    epoch 2, so its curve has every epoch exactly once."""
    out = outputs(tmp_path)
    real_log_metrics = mlflow.log_metrics

    def killed_at_epoch_2(metrics, step=None, **kw):
        if step == 2:
            raise KeyboardInterrupt  # as a signal between save_checkpoint and the epoch's log call
        return real_log_metrics(metrics, step=step, **kw)

    monkeypatch.setattr(mlflow, "log_metrics", killed_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_training(TrainingParams.parse(TINY_PARAMS), train_dir=tiny_dataset / "training",
                     val_dir=tiny_dataset / "validation", **out)
    monkeypatch.setattr(mlflow, "log_metrics", real_log_metrics)
    assert torch.load(out["checkpoint_dir"] / "last.pt", weights_only=True)["epoch"] == 2
    three = TrainingParams.parse({**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "epochs": 3}})
    run_training(three, train_dir=tiny_dataset / "training", val_dir=tiny_dataset / "validation", **out)
    [run] = runs(store)
    steps = sorted(m.step for m in mlflow.MlflowClient(store).get_metric_history(run.info.run_id, "val_loss"))
    assert steps == [1, 2, 3] and run.info.status == "FINISHED", (steps, run.info.status)


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_a_truncated_last_checkpoint_is_refused_and_its_run_closed(tiny_dataset, tmp_path, store):
    """A cut checkpoints/last.pt beside an intact best.pt of a run a SIGKILL left RUNNING: the stage refuses in one
    line naming both ways on (best.pt's epoch, or delete the folder), best.pt is untouched and the run is closed."""
    out = outputs(tmp_path)
    run_training(TrainingParams.parse(TINY_PARAMS), train_dir=tiny_dataset / "training",
                 val_dir=tiny_dataset / "validation", **out)
    [run] = runs(store)
    mlflow.MlflowClient(store).update_run(run.info.run_id, "RUNNING")  # as a SIGKILL leaves it
    last, best = out["checkpoint_dir"] / "last.pt", out["checkpoint_dir"] / "best.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    best_bytes = best.read_bytes()
    three = TrainingParams.parse({**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "epochs": 3}})
    t0 = time.monotonic()
    with pytest.raises(PolycolorError, match=r"last\.pt is unreadable.*best\.pt \(epoch \d\).*delete") as e:
        run_training(three, train_dir=tiny_dataset / "training", val_dir=tiny_dataset / "validation", **out)
    assert "\n" not in str(e.value)
    print(f"truncated last.pt: refused {time.monotonic() - t0:.1f} s after the start: {e.value}")
    assert best.read_bytes() == best_bytes, "the intact best.pt was overwritten"
    assert [r.info.status for r in runs(store)] == ["KILLED"], "the old run is closed, no new one opened"


def test_a_training_run_logs_only_the_sections_training_reads():
    sections = {k.split(".", 1)[0] for k in flatten(TrainingParams())}
    assert sections == {"model", "loss", "train", "mlflow"}, sections
