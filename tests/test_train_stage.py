"""The train stage's MLflow edge: one run with params, per-epoch metrics and lineage tags; failures mark the run."""

import json

import mlflow
import pytest

from polycolor import tracking
from polycolor.config import parse_config
from polycolor.errors import PolycolorError
from polycolor.nn.modelio import load_model
from polycolor.training.train import run_training

TINY_PARAMS = {
    "model": {"widths": [4, 8], "embed_dim": 8},
    "train": {"epochs": 2, "batch_size": 4, "grid_samples": 2},
    "mlflow": {"experiment": "test-train"},
}


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return uri


def outputs(tmp_path):
    return dict(checkpoint_dir=tmp_path / "ck", model_path=tmp_path / "models" / "model.pt",
                metrics_path=tmp_path / "train.json", curve_path=tmp_path / "curve.csv",
                run_info_path=tmp_path / "run.json")


def test_a_training_run_lands_in_mlflow(tiny_dataset, tmp_path, store, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "tiny-exp")
    cfg = parse_config(TINY_PARAMS)
    out = outputs(tmp_path)
    run_training(cfg, train_dir=tiny_dataset / "training", val_dir=tiny_dataset / "validation", **out)

    info = json.loads(out["run_info_path"].read_text())
    run = mlflow.MlflowClient(store).get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tiny-exp", "run name must be the DVC experiment name when set"
    assert run.data.params["train.epochs"] == "2" and run.data.params["model.widths"] == "[4, 8]"
    assert run.data.tags["dvc_exp_name"] == "tiny-exp"
    assert {"git_commit", "git_dirty", "data_hash"} <= set(run.data.tags)
    assert not any(k.startswith(("evaluate.", "promote.")) for k in run.data.params), "those belong to other runs"
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert inputs["train"].dataset.digest == tracking.dvc_hash(tiny_dataset / "training")
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


def test_an_exception_leaves_the_run_failed(tiny_dataset, tmp_path, store, monkeypatch):
    cfg = parse_config({**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "lr": 1e9}})
    import polycolor.training.trainer as trainer_mod

    def boom(self, data):  # a failure in the middle of training
        raise PolycolorError("loss became nan at epoch 1, step 1; training diverged: lower train.lr (now 1e9)")

    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", boom)
    with pytest.raises(PolycolorError):
        run_training(cfg, train_dir=tiny_dataset / "training", val_dir=tiny_dataset / "validation",
                     **outputs(tmp_path))
    runs = mlflow.MlflowClient(store).search_runs(
        [mlflow.MlflowClient(store).get_experiment_by_name("test-train").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_interrupt_marks_the_run_killed(tiny_dataset, tmp_path, store, monkeypatch):
    cfg = parse_config(TINY_PARAMS)
    import polycolor.training.trainer as trainer_mod

    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", lambda self, data: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, train_dir=tiny_dataset / "training", val_dir=tiny_dataset / "validation",
                     **outputs(tmp_path))
    client = mlflow.MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("test-train").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]
