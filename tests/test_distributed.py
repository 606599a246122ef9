"""train.nproc = 2 on the CPU: the train stage launches two real DDP ranks (gloo) with torchrun, as `dvc repro`
runs it; compared with one process on the same global batch, and resumed exactly under two processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import psutil
import pytest
import torch
import yaml

from polycolor.config.params import parse_config
from polycolor.config.training import TrainingParams
from polycolor.errors import ConfigError
from polycolor.training.distributed import torchrun_args
from polycolor.training.train import run_training
from polycolor.training.trainer import set_torch_globals

REPO = Path(__file__).parents[1]
PARAMS = {
    "model": {"widths": [4, 8], "embed_dim": 8},
    "train": {"epochs": 2, "batch_size": 4, "grid_samples": 2, "nproc": 2},
    "mlflow": {"experiment": "test-ddp"},
}
# Two ranks see the same global batches in the same order as one process, and DDP averages their gradients, so
# the only difference is BatchNorm: each rank normalises over its own batch_size / nproc images. Measured on this
# config: 1 process 1.2267, 2 processes 1.2254 (0.1 %).
VAL_LOSS_RTOL = 0.05


def outputs(root: Path) -> dict[str, Path]:
    return dict(checkpoint_dir=root / "ck", model_path=root / "model.pt", metrics_path=root / "train.json",
                curve_path=root / "curve.csv", run_info_path=root / "run.json")


def stage_args(params: Path, data: Path, out: dict[str, Path]) -> list[str]:
    return ["--params", str(params), "--train", str(data / "training"), "--val", str(data / "validation"),
            "--checkpoints", str(out["checkpoint_dir"]), "--model", str(out["model_path"]),
            "--metrics", str(out["metrics_path"]), "--curve", str(out["curve_path"]),
            "--run-info", str(out["run_info_path"])]


@pytest.fixture
def store(mlflow_store):
    return mlflow.MlflowClient(mlflow_store)


def train_2_ranks(tmp_path: Path, data: Path, out_dir: str, epochs: int) -> tuple[dict[str, Path], str]:
    params = tmp_path / f"params-{epochs}.yaml"
    params.write_text(yaml.safe_dump({**PARAMS, "train": {**PARAMS["train"], "epochs": epochs}}))
    out = outputs(tmp_path / out_dir)
    p = subprocess.run([sys.executable, str(REPO / "stages" / "train.py"), *stage_args(params, data, out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out, p.stdout


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]["state_dict"]


@pytest.mark.slow
def test_two_ranks_train_like_one_process_and_resume_exactly(tiny_dataset, tmp_path, store):
    straight, said = train_2_ranks(tmp_path, tiny_dataset, "straight", epochs=2)
    assert "2 process(es)" in said and "weights identical on all 2 ranks" in said, said
    exp = store.get_experiment_by_name("test-ddp").experiment_id
    [run] = store.search_runs([exp])
    assert run.info.status == "FINISHED" and run.data.params["train.nproc"] == "2"
    assert [m.step for m in store.get_metric_history(run.info.run_id, "val_loss")] == [1, 2], "rank 0 alone logs"
    assert sorted(p.name for p in straight["checkpoint_dir"].iterdir()) == ["best.pt", "last.pt"]
    two = pd.read_csv(straight["curve_path"])["val_loss"].iloc[-1]

    cfg = TrainingParams.parse({**PARAMS, "train": {**PARAMS["train"], "nproc": 1}})
    set_torch_globals(cfg.train)
    one = run_training(cfg, train_dir=tiny_dataset / "training", val_dir=tiny_dataset / "validation",
                       **outputs(tmp_path / "one")).history[-1]["val_loss"]
    print(f"final val loss: 1 process {one:.4f}, 2 processes {two:.4f}")
    assert two == pytest.approx(one, rel=VAL_LOSS_RTOL)

    # Exact resume under two processes: 1 epoch, then a new launch continues to 2.
    first, _ = train_2_ranks(tmp_path, tiny_dataset, "resumed", epochs=1)
    resumed, said = train_2_ranks(tmp_path, tiny_dataset, "resumed", epochs=2)
    assert "resuming from" in said, said
    run_id = json.loads(resumed["run_info_path"].read_text())["run_id"]  # a new run: the first one FINISHED
    assert [m.step for m in store.get_metric_history(run_id, "val_loss")] == [1, 2], "one curve from epoch 1"
    a, b = weights(straight["checkpoint_dir"] / "last.pt"), weights(resumed["checkpoint_dir"] / "last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between straight and resumed 2-process training"


def test_batch_size_is_the_global_batch_and_must_split_evenly():
    with pytest.raises(ConfigError, match=r"train.batch_size must be divisible by train.nproc \(3\)"):
        parse_config({"train": {"batch_size": 16, "nproc": 3}})
    with pytest.raises(ConfigError, match="train.nproc must be >= 1"):
        parse_config({"train": {"nproc": 0}})


def test_torchrun_is_standalone_on_one_node_and_reads_the_environment_on_several(monkeypatch):
    monkeypatch.delenv("PET_NNODES", raising=False)
    assert torchrun_args(2, "stages/train.py", ["--x"]) == [
        "--nproc-per-node", "2", "--standalone", "stages/train.py", "--x"]
    monkeypatch.setenv("PET_NNODES", "2")  # with PET_RDZV_ENDPOINT etc., read by torchrun itself
    assert "--standalone" not in torchrun_args(2, "stages/train.py", [])


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_signalled_launcher_takes_its_ranks_down_and_the_run_is_killed(tiny_dataset, tmp_path, store, sig):
    """SIGTERM: torchrun passes it to the ranks. SIGKILL: the ranks notice their parent is gone."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**PARAMS, "train": {**PARAMS["train"], "epochs": 500}}))
    out = outputs(tmp_path / "out")
    launcher = subprocess.Popen([sys.executable, str(REPO / "stages" / "train.py"), *stage_args(params, tiny_dataset, out)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    said = []
    for line in launcher.stdout:
        said.append(line)
        if line.startswith("epoch 1/"):
            break
    ranks = psutil.Process(launcher.pid).children()
    assert len(ranks) == 2, said
    launcher.send_signal(sig)
    gone, alive = psutil.wait_procs(ranks, timeout=60)
    for orphan in alive:  # the failure: do not leave it training
        orphan.kill()
    assert not alive, "a rank outlived the launcher"
    said.append(launcher.stdout.read())
    assert launcher.wait(timeout=60) == (130 if sig == signal.SIGTERM else -9), "".join(said)[-3000:]
    ck = torch.load(out["checkpoint_dir"] / "last.pt", weights_only=True)
    [run] = store.search_runs([store.get_experiment_by_name("test-ddp").experiment_id])
    assert run.info.status == "KILLED" and ck["run_id"] == run.info.run_id and 1 <= ck["epoch"] < 500
