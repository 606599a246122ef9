"""Signals under a real `dvc repro` of the train stage, in a throwaway copy of the project: the training never
outlives DVC, a SIGKILLed training continues the same MLflow run, and no run is left RUNNING.

DVC runs the stage through `$SHELL -c`; SHELL=/bin/sh (dash, which does not exec the command) puts a shell between
DVC and the stage, the harder case for noticing that DVC has gone.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest
import torch
import yaml
from conftest import new_project

pytestmark = pytest.mark.slow

STOP_WITHIN_S = 30  # from the signal to the stage process gone, on a loaded 2-core machine (measured 7-14 s)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The project with tiny params and a long training, its data stages already run."""
    root = tmp_path_factory.mktemp("signals") / "polycolor"
    # far longer than we wait; plateau, whose checkpoints resume with more epochs (cosine spans train.epochs)
    env = {**new_project(root, overrides={"train": {"epochs": 300, "schedule": "plateau"}}), "SHELL": "/bin/sh"}
    for stage in ("check", "ingest", "augment"):
        subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd=root, env=env,
                       check=True, capture_output=True)
    return root, env


def start_train(root: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--single-item", "train"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_line(p: subprocess.Popen, prefix: str, seen: list[str]) -> None:
    for line in p.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return
    raise AssertionError(f"the stage ended before printing {prefix!r}:\n{''.join(seen)[-3000:]}")


def stage_process(dvc: subprocess.Popen) -> psutil.Process:
    """The stage's python process (below the `sh -c` that DVC runs it in)."""
    [train] = [c for c in psutil.Process(dvc.pid).children(recursive=True)
               if c.name().startswith("python") and "stages/train.py" in c.cmdline()]
    return train


def checkpoint(root: Path) -> dict:
    return torch.load(root / "checkpoints" / "last.pt", weights_only=True)


def test_sigterm_to_dvc_stops_the_stage_and_kills_the_run(project):
    root, env = project
    dvc, seen = start_train(root, env), []
    wait_for_line(dvc, "epoch 1/", seen)
    train = stage_process(dvc)
    t0 = time.monotonic()
    dvc.terminate()  # SIGTERM to dvc alone, as `kill <dvc>` does; the stage is not signalled
    gone, alive = psutil.wait_procs([train], timeout=STOP_WITHIN_S)
    took = time.monotonic() - t0
    for orphan in alive:  # the failure: do not leave it training
        orphan.kill()
    seen.append(dvc.stdout.read())
    dvc.wait()
    assert not alive, f"the train stage outlived dvc by more than {STOP_WITHIN_S} s:\n{''.join(seen)[-3000:]}"
    print(f"stage gone {took:.1f} s after SIGTERM to dvc")
    ck = checkpoint(root)
    run = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}").get_run(ck["run_id"])
    assert run.info.status == "KILLED", run.info.status
    assert 1 <= ck["epoch"] < 300, "the checkpoint of the last completed epoch is kept"


def test_after_sigkill_the_next_repro_continues_the_same_run(project):
    root, env = project
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    dvc, seen = start_train(root, env), []
    wait_for_line(dvc, "epoch ", seen)  # one more epoch than the checkpoint had
    stage_process(dvc).kill()
    seen.append(dvc.stdout.read())
    assert dvc.wait() != 0
    ck = checkpoint(root)
    assert client.get_run(ck["run_id"]).info.status == "RUNNING", "SIGKILL leaves the run RUNNING (until resumed)"

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["epochs"] = ck["epoch"] + 1  # finish soon: more epochs still resume (plateau)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", "train"], cwd=root, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"continuing MLflow run {ck['run_id']}" in done.stdout

    runs = client.search_runs([client.get_experiment_by_name("polycolor").experiment_id])
    assert [r.info.run_id for r in runs] == [ck["run_id"]], "one training (three processes) is one MLflow run"
    assert runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(ck["run_id"], "val_loss")]
    assert steps == list(range(1, ck["epoch"] + 2)), f"one unbroken curve, each epoch once: {steps}"
