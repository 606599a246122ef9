"""The registry under the team's conditions (issue 19): a model card longer than MLflow's description column,
two processes packaging the same model at once, and a registry only its owners can write.

Each runs on a sqlite store where it can, and on the real team stack (conftest.team_stack: PostgreSQL, which
enforces the column's 5,000 characters, behind `mlflow server` with basic auth).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from conftest import REPO, log_evaluation, sh
from mlflow.exceptions import MlflowException
from test_package import EVAL, tiny_model

from polycolor.config.data import IngestConfig
from polycolor.config.params import load_params
from polycolor.data.ingest import ingest
from polycolor.nn import modelio
from polycolor.serving import package, registry
from polycolor.tracking.lineage import write_run_info
from polycolor.tracking.store import configure, describe_failure, ensure_experiment

NAME = "polycolor-svc-test"  # registered models of their own (NAME-<test>): the stack is shared by the session
COLUMN = 5000  # MLflow's model_versions.description is String(5000)

# Runs stages/package.py in a process of its own, after making its first registry look-up (package_model's
# find_by_content) wait until the other process has made its own: both see no version of the model, as two
# `package` stages started in the same second do, and both go on to register it.
DRIVER = r"""
import importlib.util, sys, time
from pathlib import Path
from polycolor.serving import registry
barrier, me, script, argv = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
find, waited = registry.find_by_content, []
def find_then_wait(name, digest):
    found = find(name, digest)
    if not waited:
        waited.append(me)
        (barrier / me).touch()
        deadline = time.monotonic() + 120
        while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    return found
registry.find_by_content = find_then_wait
spec = importlib.util.spec_from_file_location("stage_package", script)
stage = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stage)
sys.exit(stage.main(argv))
"""


def training_run(folder: Path, name: str, n_params: int = 1) -> Path:
    """A finished 'training' run with `n_params` params (they fill the model card's Params section), its
    run.json, an evaluation run with eval.json, a tiny model and a params file naming the registered model
    `name`, all in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    configure()
    exp = ensure_experiment("polycolor-svc-test")
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_params({f"train.option_{i:03d}": f"a value long enough to count {i}" for i in range(n_params)})
    write_run_info(folder / "run.json", {"run_id": run.info.run_id, "experiment_id": exp,
                                         "run_name": run.info.run_name, "git_commit": "feedface"})
    log_evaluation(run.info.run_id, folder, EVAL)
    tiny_model(folder / "model.pt")
    ingest(IngestConfig(image_size=32, train_samples=6, val_samples=2), 0, folder / "dataset")  # the reference's
    (folder / "params.yaml").write_text(f"mlflow: {{experiment: polycolor-svc-test, registered_model: {name}}}\n")
    return folder


def stage_argv(folder: Path, tag: str = "") -> list[str]:
    return ["--params", str(folder / "params.yaml"), "--model", str(folder / "model.pt"),
            "--metrics", str(folder / "eval.json"), "--run-info", str(folder / "run.json"),
            "--data", str(folder / "dataset"), "--out", str(folder / f"package{tag}"), "--registry-info", str(folder / f"registry{tag}.json")]


def package_twice_at_once(folder: Path, env: dict[str, str]) -> list[dict]:
    """Two `package` stages of the same model, in two processes, both past their look-up before either
    registers (DRIVER); returns their registry.json contents."""
    barrier = folder / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", DRIVER, str(barrier), tag, str(REPO / "stages/package.py"),
                               *stage_argv(folder, tag)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
             for tag in ("a", "b")]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return [json.loads((folder / f"registry{tag}.json").read_text()) for tag in ("a", "b")]


def assert_one_version(folder: Path, name: str, infos: list[dict]) -> None:
    paint = dataclasses.asdict(load_params(folder / "params.yaml").paint)
    digest = registry.package_digest(modelio.load_payload(folder / "model.pt"), paint)
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name = '{name}' AND tags.{registry.CONTENT_TAG} = '{digest}'")
    assert len(versions) == 1, f"{len(versions)} versions of one model: {[v.version for v in versions]}"
    assert infos[0]["version"] == infos[1]["version"] == str(versions[0].version), infos
    assert infos[0]["logged_model_uri"] == infos[1]["logged_model_uri"] == versions[0].source
    assert str(client.get_model_version_by_alias(name, registry.CANDIDATE).version) == infos[0]["version"]
    assert len(client.search_model_versions(f"name = '{name}'")) == 1, "the loser's version is deleted"


# ------------------------------------------------------------------------------------------- sqlite

def test_card_summary_fits_the_column_and_links_the_full_card():
    short = "# Model card: x\n\n## Intended use\nPaint.\n"
    assert package.card_summary(short, "mlflow-artifacts:/1/models/m-1/artifacts/artifacts/MODEL_CARD.md") \
        .startswith(short.rstrip())
    long = "# Model card: x\n\n## Intended use\nPaint.\n\n## Params\n" + "- `k`: v\n" * 2000 + "\n## Interface\n- in\n"
    text = package.card_summary(long, "file:///store/MODEL_CARD.md")
    assert len(text) <= package.DESCRIPTION_MAX < COLUMN, len(text)
    assert "## Intended use" in text and "## Interface" in text and "## Params" not in text
    assert "Left out here" in text and "Params" in text and "file:///store/MODEL_CARD.md" in text
    one_huge = "# Model card: x\n\n" + "word " * 3000  # no section to drop: cut inside, still under the limit
    assert len(package.card_summary(one_huge, "u")) <= package.DESCRIPTION_MAX


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_two_processes_packaging_one_model_register_one_version_sqlite(tmp_path, mlflow_store):
    folder = training_run(tmp_path / "work", NAME)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    assert_one_version(folder, NAME, package_twice_at_once(folder, env))


# ------------------------------------------------------------------------------------------- the team stack

@pytest.fixture
def on_stack(team_stack, monkeypatch) -> dict[str, str]:
    """MLFLOW_TRACKING_URI (and the pipeline's login, set by team_stack) pointing at the stack."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_stack.tracking_uri)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return {**os.environ}


@pytest.mark.slow
def test_a_card_longer_than_the_column_packages_on_postgresql(tmp_path, on_stack, stage):
    name = f"{NAME}-card"
    folder = training_run(tmp_path / "work", name, n_params=120)
    assert stage("package").main(stage_argv(folder)) == 0
    full = (folder / "package" / package.CARD_MD).read_text()
    assert len(full) > COLUMN, f"the test card has {len(full)} characters: not longer than the column"
    info = json.loads((folder / "registry.json").read_text())
    mv = mlflow.MlflowClient().get_model_version(name, info["version"])
    assert len(mv.description) <= package.DESCRIPTION_MAX < COLUMN
    logged = mlflow.MlflowClient().get_logged_model(info["logged_model_uri"].removeprefix("models:/"))
    link = f"{logged.artifact_location}/artifacts/{package.CARD_MD}"  # mlflow-artifacts:/..., via the server
    assert link in mv.description and "Left out here" in mv.description, mv.description[-300:]
    served = Path(mlflow.artifacts.download_artifacts(artifact_uri=link, dst_path=str(tmp_path / "card")))
    assert served.read_text() == full, "the full card is the version's artifact, as the description says"


@pytest.mark.slow
def test_two_processes_packaging_one_model_register_one_version_on_the_stack(tmp_path, on_stack):
    folder = training_run(tmp_path / "work", f"{NAME}-race")
    assert_one_version(folder, f"{NAME}-race", package_twice_at_once(folder, on_stack))


@pytest.mark.slow
def test_only_the_pipelines_login_can_register_or_move_aliases(tmp_path, on_stack, monkeypatch):
    name = f"{NAME}-auth"
    folder = training_run(tmp_path / "work", name)

    sh([sys.executable, str(REPO / "stages/package.py"), *stage_argv(folder)], REPO, on_stack)  # the pipeline
    info = json.loads((folder / "registry.json").read_text())
    owner = mlflow.MlflowClient()
    password = os.environ["MLFLOW_TRACKING_PASSWORD"]

    for who, user, pw in (("no login", None, None), ("a wrong password", "polycolor", password + "x")):
        for key, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", pw)):
            monkeypatch.delenv(key) if value is None else monkeypatch.setenv(key, value)
        other = mlflow.MlflowClient()
        attempts = {
            "register a version": lambda: other.create_model_version(name, info["logged_model_uri"]),
            "move an alias": lambda: other.set_registered_model_alias(name, registry.CHAMPION, info["version"]),
            "read": lambda: other.get_registered_model(name),
        }
        for what, attempt in attempts.items():
            with pytest.raises(MlflowException, match="401") as e:
                attempt()
            said = describe_failure(e.value, on_stack["MLFLOW_TRACKING_URI"])
            assert said and "MLFLOW_TRACKING_USERNAME" in said, (who, what, said)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "polycolor")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    versions = [str(v.version) for v in owner.search_model_versions(f"name = '{name}'")]
    assert versions == [info["version"]], f"an unauthenticated client registered a version: {versions}"
    assert registry.CHAMPION not in owner.get_registered_model(name).aliases, "an unauthenticated client moved it"
    owner.set_registered_model_alias(name, registry.CHAMPION, info["version"])  # the pipeline's own login can
    assert str(owner.get_model_version_by_alias(name, registry.CHAMPION).version) == info["version"]
