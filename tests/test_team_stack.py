"""polycolor against the team stack, all started for real on loopback (conftest.team_stack): PostgreSQL as MLflow's
store, moto's S3 server as the artifact store, `mlflow server` proxying artifacts. The tiny preset runs through
`dvc exp run` with MLFLOW_TRACKING_URI=http://127.0.0.1:PORT and no S3 credentials in its environment; its run,
images and model must land on the server and in the bucket (it runs queued, in a temporary copy); promotion and
prediction from the registry go through the same server, logged in as the pipeline's user (the server runs MLflow's
basic auth). Also: `polycolor stack up` / `down`, the documented commands, on a second stack: `up` restarts a
PostgreSQL killed with SIGKILL on its data, without losing a finished run; `down` keeps the data for the next
`up`; `down --purge` discards it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import mlflow
import psutil
import pytest
from conftest import REPO, new_project, require_stack, run_queue, sh

from polycolor import stack as stack_mod

pytestmark = pytest.mark.slow

EPOCHS = 2  # the tiny preset trains 1 epoch; 2 make a per-epoch metric history worth the name


@pytest.fixture(scope="module")
def project(tmp_path_factory, team_stack):
    """A git copy of the project (default params, tiny comes from the preset) whose tracking URI is the server."""
    root = tmp_path_factory.mktemp("stack") / "polycolor"
    env = new_project(root, tiny=False)
    env.update(team_stack.client_env())  # the URI and the pipeline's login, as `eval "$(polycolor stack up)"` sets
    # Clients need no storage credentials: artifacts are proxied by the server.
    for key in [k for k in env if k.startswith("AWS_")]:
        del env[key]
    return root, env


def client(team_stack) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(team_stack.tracking_uri)


def bucket_keys(team_stack, prefix: str) -> list[str]:
    """Every object key under `prefix` in the stack's bucket, listed with boto3 against the S3 server."""
    s3 = stack_mod.s3_client(team_stack.s3_endpoint, stack_mod.s3_keys(team_stack.dir))
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack_mod.BUCKET, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def test_tiny_preset_lands_on_the_server_and_in_the_object_store(project, team_stack):
    """The tiny preset as a queued experiment: it runs in a temporary copy under .dvc/tmp/exps, and the server's URI
    and login still reach it (two workers at once into one store: tests/test_pipeline.py, on sqlite, the store that
    needs the care); `dvc exp apply` brings its outputs into the workspace for the promotion test below."""
    root, env = project
    preset = sh([sys.executable, "-m", "polycolor.cli", "preset", "tiny"], root, env).stdout.split()
    run_queue(root, env, [["-n", "stack-tiny", *preset, "-S", f"train.epochs={EPOCHS}"]], jobs=1)
    sh([sys.executable, "-m", "dvc", "exp", "apply", "stack-tiny"], root, env)
    assert not (root / "mlflow.db").exists(), "the run must go to the server, not the local sqlite store"
    assert not (root / "mlartifacts").exists(), "artifacts must go through the server, not to a local folder"
    assert not list((root / ".dvc" / "tmp").rglob("mlflow.db")), "the queued run fell back to a local store"

    c = client(team_stack)
    info = json.loads((root / "metrics/run.json").read_text())
    run = c.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "stack-tiny" and run.data.tags["dvc_exp_name"] == "stack-tiny"
    assert run.data.params["train.epochs"] == str(EPOCHS) and run.data.params["model.widths"] == "[4, 8]"
    for metric in ("train_loss", "val_loss", "val_psnr"):
        history = c.get_metric_history(run.info.run_id, metric)
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), \
            f"{metric}: one value per epoch expected, got {[(m.step, m.value) for m in history]}"
    exp = c.get_experiment(run.info.experiment_id)
    assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location
    images = [f.path for f in c.list_artifacts(run.info.run_id, "images")]
    assert images, "no sample images logged"

    # The bytes are in the object store, under the server's --artifacts-destination.
    prefix = stack_mod.ARTIFACTS.split("/", 3)[3]  # s3://polycolor/mlflow -> mlflow
    run_keys = bucket_keys(team_stack, f"{prefix}/{exp.experiment_id}/{run.info.run_id}/artifacts/")
    assert any("/artifacts/images/" in k and k.endswith(".png") for k in run_keys), run_keys
    reg = json.loads((root / "metrics/registry.json").read_text())
    mv = c.get_model_version_by_alias(reg["name"], "candidate")
    assert str(mv.version) == str(reg["version"]) and mv.run_id == run.info.run_id
    model_id = reg["logged_model_uri"].removeprefix("models:/")  # the version's source, the run's logged model
    assert mv.source == reg["logged_model_uri"]
    model_prefix = f"{prefix}/{exp.experiment_id}/models/{model_id}/artifacts/"
    files = {k.removeprefix(model_prefix) for k in bucket_keys(team_stack, model_prefix)}
    assert {"MLmodel", "pyfunc_entry.py", "artifacts/model.pt", "artifacts/MODEL_CARD.md"} <= files, sorted(files)
    assert not [k for k in run.data.params | run.data.tags if "AWS" in k.upper() or "PASSWORD" in k.upper()]

    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", "tiny on the stack"], root, env)


def test_promote_then_predict_from_the_server_registry(project, team_stack, tmp_path):
    root, env = project
    promoted = sh([sys.executable, "-m", "polycolor.cli", "promote"], root, env)
    assert "champion" in promoted.stdout, promoted.stdout
    reg = json.loads((root / "metrics/registry.json").read_text())
    assert str(client(team_stack).get_model_version_by_alias(reg["name"], "champion").version) == str(reg["version"])
    out = tmp_path / "pred"
    val = root / "data/dataset/validation"
    sh([sys.executable, "-m", "polycolor.cli", "predict", "--model", "models:/polycolor@champion",
        "--data", str(val), "--output", str(out)], root, env)
    expected = len(json.loads((val / "data.json").read_text()))
    assert len(list(out.glob("*.png"))) == expected


def test_stack_up_restarts_a_dead_service_down_keeps_the_data_purge_discards_it(tmp_path):
    """`polycolor stack up` prints exports that reach a live server as the pipeline's user; after PostgreSQL is
    killed (SIGKILL), `up` restarts it alone on its data and a finished run is still there; `down` stops every
    process and keeps runs and artifacts for the next `up`; `down --purge` discards them."""
    require_stack()
    d = Path(tempfile.mkdtemp(prefix="polycolor-stack-cli-"))
    cli = [sys.executable, "-m", "polycolor.cli", "stack"]

    def stack_cmd(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *args, "--dir", str(d)], cwd=REPO, capture_output=True, text=True, timeout=300,
                              check=False)

    up = stack_cmd("up")
    try:
        assert up.returncode == 0, up.stderr
        exports = subprocess.run(["bash", "-c", f'{up.stdout}\nenv'], capture_output=True, text=True,
                                 check=True).stdout
        env = dict(line.split("=", 1) for line in exports.splitlines() if line.startswith("MLFLOW_TRACKING_"))
        with urllib.request.urlopen(env["MLFLOW_TRACKING_URI"] + "/health", timeout=10) as r:
            assert r.status == 200
        again = stack_cmd("up")
        assert again.returncode == 1 and "already up" in again.stderr
        pids = {s.name: s.pid for s in stack_mod.load(d).services}
        secrets = [(d / "pgpass").read_text().rsplit(":", 1)[1].strip(), (d / stack_mod.PASSWORD_FILE).read_text()]

        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            c = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
            run = c.create_run(c.create_experiment("crash"))
            c.log_metric(run.info.run_id, "loss", 0.25)
            c.log_text(run.info.run_id, "kept", "note.txt")
            c.set_terminated(run.info.run_id)
            psutil.Process(pids["postgres"]).kill()  # a crash: no shutdown, no checkpoint
            psutil.Process(pids["postgres"]).wait(30)
            back = stack_cmd("up")
            assert back.returncode == 0 and "restarted postgres on the existing data" in back.stderr, back.stderr
            after = {s.name: s.pid for s in stack_mod.load(d).services}
            assert after["postgres"] != pids["postgres"] and after["s3"] == pids["s3"] \
                and after["mlflow"] == pids["mlflow"], "only the dead service is restarted"
            assert c.get_run(run.info.run_id).info.status == "FINISHED"
            assert c.get_run(run.info.run_id).data.metrics == {"loss": 0.25}

            down = stack_cmd("down")
            assert down.returncode == 0 and "kept its data" in down.stderr, down.stderr
            assert not [p for p in after.values() if psutil.pid_exists(p)
                        and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
            assert stack_cmd("up").returncode == 0
            assert c.get_run(run.info.run_id).data.metrics == {"loss": 0.25}, "down lost a run"
            note = Path(c.download_artifacts(run.info.run_id, "note.txt", str(tmp_path)))
            assert note.read_text() == "kept", "down lost an artifact"
    finally:
        down = stack_cmd("down", "--purge")
    assert down.returncode == 0, down.stderr
    logs = "".join(p.read_text(errors="replace") for p in (d / "logs").glob("*.log"))
    for secret in secrets:
        assert secret.strip() not in logs + up.stdout + up.stderr, "a password leaked"
    assert not [p for p in stack_mod.DATA if (d / p).exists()], "down --purge leaves no data or password behind"
    shutil.rmtree(d)
