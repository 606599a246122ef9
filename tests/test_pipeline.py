"""End to end on tiny params, in a throwaway copy of the project: `dvc repro` runs all five stages, a second
repro does nothing, promotion and prediction work, and two queued experiments run in parallel (`-j 2`) land in
the main MLflow store with their own names, params, metrics and registered versions."""

from __future__ import annotations

import json
import math
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import REPO, new_project, real_ayna, run_queue, sh
from services import mlflow_server_cmd, running

from polycolor.stack import free_port
from polycolor.tracking.store import EXPERIMENT_KIND_TAG

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
    assert {"val", "ood", "gappy", "behaviour"} <= set(ev) and set(ev["val"]) == {"net", "painted", "flood_fill"}
    reg = json.loads((root / "metrics/registry.json").read_text())
    client = store(root)
    mv = client.get_model_version_by_alias(reg["name"], "candidate")
    assert str(mv.version) == str(reg["version"])
    run = client.get_run(json.loads((root / "metrics/run.json").read_text())["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["git_dirty"] == "false", "the pipeline's own outputs (dvc.lock, metrics/) are not code"
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    inputs = {i.dataset.name: i.dataset for i in run.inputs.dataset_inputs}
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["train"]["deps"]
    assert inputs["val"].digest == next(d["md5"] for d in lock if d["path"] == "data/dataset/validation"), \
        "the dataset digest is DVC's hash"
    assert json.loads(inputs["train"].source) == {"path": "data/augmented/training",
                                                  "git_commit": run.data.tags["git_commit"]}
    (evaluation,) = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert "val.net.psnr_mean" in evaluation.data.metrics and "val.net.psnr_mean" not in run.data.metrics
    assert {"git_commit", "data_hash", "evaluation_run", "content_sha256"} <= set(mv.tags) <= {
        "git_commit", "data_hash", "dvc_exp_name", "evaluation_run", "content_sha256"}, "a short fixed set"
    logged = client.get_logged_model(mv.source.split("/")[-1])
    assert {(m.key, m.dataset_name) for m in logged.metrics} >= {
        ("val.net.psnr_mean", "val"), ("val.painted.psnr_mean", "val"), ("ood.net.iou", "ood"),
        ("behaviour.net.rot_flip", "val")}
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", "repro"], root, env)


def test_default_gates_read_metrics_the_pipeline_records(project, tmp_path, monkeypatch):
    """`polycolor promote` with the project's default `promote` section after a real pipeline run: every metric a
    default gate names reaches the registered version, so a refusal can only be a threshold the tiny model misses
    (it is 1 epoch of a 2-level net at 32 px); the default model passes them (test_readme_figures)."""
    from polycolor.config.params import load_params
    from polycolor.serving import registry

    root, env = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["promote"] = yaml.safe_load((REPO / "params.yaml").read_text())["promote"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    gates = load_params(tmp_path / "params.yaml").promote.gates
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")  # an earlier test may have set another store
    try:
        mv = store(root).get_model_version_by_alias("polycolor", "candidate")
        recorded = registry.version_metrics(mv)
    finally:
        mlflow.set_tracking_uri(before)
    assert {g.metric for g in gates} <= set(recorded), "every default gate's metric reaches the version"
    result = sh([sys.executable, "-m", "polycolor.cli", "promote", "--params", str(tmp_path / "params.yaml")],
                root, env, check=False)
    line = result.stdout.strip().splitlines()[-1]
    assert "not recorded" not in line, line
    failing = [g for g in gates if recorded[g.metric] < (g.min if g.min is not None else -math.inf)]
    if failing:
        assert result.returncode != 0 and all(g.metric in line for g in failing), line
    else:
        assert result.returncode == 0 and "champion" in line, line


def test_promote_then_predict_with_the_champion(project, tmp_path):
    root, env = project
    promoted = sh([sys.executable, "-m", "polycolor.cli", "promote", "--force"], root, env)
    assert "champion" in promoted.stdout
    out = tmp_path / "pred"
    sh([sys.executable, "-m", "polycolor.cli", "predict", "--model", "models:/polycolor@champion",
        "--data", str(real_ayna("validation")), "--output", str(out)], root, env)
    assert len(list(out.glob("*.png"))) == 5


@contextmanager
def mlflow_server(root: Path, log: Path):
    """`mlflow server` on the project's sqlite store at a free 127.0.0.1 port; yields its URL once /health answers
    and stops it by PID. Its log goes to `log`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running(mlflow_server_cmd(root / "mlflow.db", port), url + "/health", log, cwd=root):
        yield url


def test_mlflow_ui_shows_the_run_its_datasets_and_the_champion(project, browser, screenshots, tmp_path):
    """The MLflow UI of the tiny store, in headless Chromium: the runs table lists the training run by name, the run
    page shows its datasets, the registered model page shows version 1 with its alias."""
    root, _ = project
    client = store(root)
    exp = client.get_experiment_by_name("polycolor")
    assert exp.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    run = client.get_run(json.loads((root / "metrics/run.json").read_text())["run_id"])
    digests = {i.dataset.name: i.dataset.digest for i in run.inputs.dataset_inputs}
    shots = screenshots
    with mlflow_server(root, tmp_path / "mlflow-server.log") as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        # MLflow 3.x UIs with the GenAI / Model training switch take the view from the URL (or the browser's last
        # choice); the experiment's kind tag is what the UIs without the switch read
        ml = "?workflowType=machine_learning"
        page.goto(f"{url}/#/experiments/{exp.experiment_id}{ml}")
        page.get_by_role("link", name=run.info.run_name).first.wait_for(timeout=60_000)
        assistant = page.get_by_role("button", name="Close", exact=True)  # the chat side panel, when the UI has it
        if assistant.count():
            assistant.first.click()
        page.get_by_text("Expand rows").first.click()  # every dataset of the run in its Dataset cell
        page.get_by_text(f"val ({digests['val']}").first.wait_for(timeout=30_000)
        page.screenshot(path=str(shots / "mlflow-runs.png"))

        page.goto(f"{url}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}{ml}")
        page.get_by_text("Datasets", exact=True).first.wait_for(timeout=60_000)
        page.get_by_text(f"train ({digests['train']})").first.wait_for(timeout=30_000)
        page.get_by_text(re.compile(r"^\s*training\s*$", re.I)).first.wait_for(timeout=30_000)  # its context
        page.screenshot(path=str(shots / "mlflow-run.png"))

        page.goto(f"{url}/#/models/polycolor{ml}")
        row = page.get_by_role("row").filter(has_text="Version 1")
        row.first.wait_for(timeout=60_000)
        assert "champion" in row.first.inner_text(), row.first.inner_text()
        page.screenshot(path=str(shots / "mlflow-model.png"))
        page.close()


def test_two_queued_experiments_run_in_parallel_into_one_store(project):
    root, env = project
    before = {r.info.run_id for r in store(root).search_runs(
        [store(root).get_experiment_by_name("polycolor").experiment_id])}
    run_queue(root, env, [["-S", f"train.lr={lr}"] for lr in ("0.002", "0.004")])

    client = store(root)
    exp = client.get_experiment_by_name("polycolor")
    new = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_id not in before]
    runs = [r for r in new if r.data.tags.get("stage") == "train"]
    assert len(runs) == 2 and len(new) == 4, [r.info.run_name for r in new]
    shown = sh([sys.executable, "-m", "dvc", "exp", "show", "--json"], root, env).stdout
    table = sh([sys.executable, "-m", "dvc", "exp", "show", "--only-changed", "--drop", ".*/|State|Executor",
                "--no-pager"], root,
               {**env, "COLUMNS": "200"}).stdout
    assert "train.lr" in table and "\u2026" not in table, f"the changed param and figures fit 200 columns:\n{table}"
    for r in runs:
        assert r.info.status == "FINISHED"
        name = r.data.tags["dvc_exp_name"]
        assert name and r.info.run_name == name, "run name must be the DVC experiment name"
        assert name in shown, f"{name} not in dvc exp show"
        (evaluation,) = [e for e in new if e.data.tags.get("mlflow.parentRunId") == r.info.run_id]
        assert "val.net.psnr_mean" in evaluation.data.metrics
        versions = client.search_model_versions(f"run_id = '{r.info.run_id}'")
        assert len(versions) == 1 and versions[0].tags.get("dvc_exp_name") == name
    assert sorted(r.data.params["train.lr"] for r in runs) == ["0.002", "0.004"]
    stray = list((root / ".dvc" / "tmp").rglob("mlflow.db"))
    assert not stray, f"runs landed in a temporary copy's store: {stray}"
