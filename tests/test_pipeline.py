"""End to end on tiny params, in a throwaway copy of the project: `dvc repro` runs all five stages, a second
repro does nothing, promotion and prediction work, and two queued experiments run in parallel (`-j 2`) land in
the main MLflow store with their own names, params, metrics and registered versions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import pytest
from conftest import AYNA_VAL, new_project, run_queue, sh

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git repo holding the project's files with tiny params (conftest.new_project)."""
    root = tmp_path_factory.mktemp("e2e") / "polycolor"
    return root, new_project(root)


def store(root: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def test_repro_runs_all_stages_then_does_nothing(project):
    root, env = project
    sh([sys.executable, "-m", "dvc", "repro"], root, env)
    for out in ("data/dataset/manifest.csv", "data/augmented/manifest.csv", "models/model.pt", "checkpoints/last.pt",
                "metrics/eval.json", "metrics/eval_grid.png", "package/MLmodel", "metrics/registry.json"):
        assert (root / out).exists(), f"{out} missing after dvc repro"
    again = sh([sys.executable, "-m", "dvc", "repro"], root, env)
    assert "Data and pipelines are up to date" in again.stdout + again.stderr
    ev = json.loads((root / "metrics/eval.json").read_text())
    assert {"val", "reference", "ood"} <= set(ev)
    reg = json.loads((root / "metrics/registry.json").read_text())
    client = store(root)
    mv = client.get_model_version_by_alias(reg["name"], "candidate")
    assert str(mv.version) == str(reg["version"])
    run = client.get_run(json.loads((root / "metrics/run.json").read_text())["run_id"])
    assert run.info.status == "FINISHED" and "eval.val.psnr_mean" in run.data.metrics
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", "repro"], root, env)


def test_promote_then_predict_with_the_champion(project, tmp_path):
    root, env = project
    promoted = sh([sys.executable, "-m", "polycolor.cli", "promote", "--force"], root, env)
    assert "champion" in promoted.stdout
    if not AYNA_VAL.is_dir():
        pytest.skip("the real Ayna validation split is not beside this checkout")
    out = tmp_path / "pred"
    sh([sys.executable, "-m", "polycolor.cli", "predict", "--model", "models:/polycolor@champion",
        "--data", str(AYNA_VAL), "--output", str(out)], root, env)
    assert len(list(out.glob("*.png"))) == 5


def test_two_queued_experiments_run_in_parallel_into_one_store(project):
    root, env = project
    before = {r.info.run_id for r in store(root).search_runs(
        [store(root).get_experiment_by_name("polycolor").experiment_id])}
    run_queue(root, env, [["-S", f"train.lr={lr}"] for lr in ("0.002", "0.004")])

    client = store(root)
    exp = client.get_experiment_by_name("polycolor")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_id not in before]
    assert len(runs) == 2, [r.info.run_name for r in runs]
    shown = sh([sys.executable, "-m", "dvc", "exp", "show", "--json"], root, env).stdout
    for r in runs:
        assert r.info.status == "FINISHED"
        name = r.data.tags["dvc_exp_name"]
        assert name and r.info.run_name == name, "run name must be the DVC experiment name"
        assert name in shown, f"{name} not in dvc exp show"
        assert "eval.val.psnr_mean" in r.data.metrics
        versions = client.search_model_versions(f"run_id = '{r.info.run_id}'")
        assert len(versions) == 1 and versions[0].tags.get("dvc_exp_name") == name
    assert sorted(r.data.params["train.lr"] for r in runs) == ["0.002", "0.004"]
    stray = list((root / ".dvc" / "tmp").rglob("mlflow.db"))
    assert not stray, f"runs landed in a temporary copy's store: {stray}"
