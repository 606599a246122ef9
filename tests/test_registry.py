"""Promotion by Model Registry aliases: the decision rule, the registry flow in a temporary sqlite store, the CLI;
and promote's refusal of a version that is not a polycolor package (a planted pickle pyfunc)."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest

from polycolor.cli import REFUSED_EXIT, main
from polycolor.config.paint import PaintConfig
from polycolor.config.serving import Gate, PromoteConfig
from polycolor.serving import registry
from polycolor.tracking.datasets import generated_dataset
from polycolor.tracking.store import configure, ensure_experiment

REPO = Path(__file__).resolve().parents[1]
CFG = PromoteConfig(metric="val.net.psnr_mean", higher_is_better=True, min_delta=0.1,
                    gates=(Gate("val.net.psnr_mean", min=30.0), Gate("val.net.colour_accuracy", min=0.95)))
PARAMS = """
mlflow: {experiment: polycolor-test, registered_model: polycolor}
promote:
  metric: val.net.psnr_mean
  higher_is_better: true
  min_delta: 0.1
  gates:
    - {metric: val.net.psnr_mean, min: 30.0}
    - {metric: val.net.colour_accuracy, min: 0.95}
"""


# ------------------------------------------------------------------------------------------- decide()

def test_decide_gates_first_champion_and_comparison():
    good = {"val.net.psnr_mean": 31.0, "val.net.colour_accuracy": 0.99}
    ok, why = registry.decide(CFG, good, None)
    assert ok and "no champion" in why
    ok, why = registry.decide(CFG, {"val.net.psnr_mean": 35.0, "val.net.colour_accuracy": 0.5}, None)
    assert not ok and "val.net.colour_accuracy" in why and "min 0.95" in why
    ok, why = registry.decide(CFG, {"val.net.colour_accuracy": 0.99}, None)
    assert not ok and "val.net.psnr_mean not recorded" in why
    ok, why = registry.decide(CFG, {"val.net.psnr_mean": math.nan, "val.net.colour_accuracy": 0.99}, None)
    assert not ok and "NaN" in why
    assert registry.decide(CFG, {**good, "val.net.psnr_mean": 31.5}, good)[0], "better by 0.5 > min_delta 0.1"
    assert not registry.decide(CFG, {**good, "val.net.psnr_mean": 31.05}, good)[0], "better by 0.05 <= min_delta"
    assert not registry.decide(CFG, {**good, "val.net.psnr_mean": 30.5}, good)[0], "worse"


def test_decide_lower_is_better_and_max_gate():
    cfg = PromoteConfig(metric="val.mae", higher_is_better=False, min_delta=0.0, gates=(Gate("val.mae", max=0.2),))
    assert registry.decide(cfg, {"val.mae": 0.05}, {"val.mae": 0.1})[0]
    assert not registry.decide(cfg, {"val.mae": 0.15}, {"val.mae": 0.1})[0]
    ok, why = registry.decide(cfg, {"val.mae": 0.3}, None)
    assert not ok and "max 0.2" in why


# ------------------------------------------------------------------------------------------- the flow

@pytest.fixture
def store(tmp_path, monkeypatch, mlflow_store):
    """A fresh sqlite store holding one real polycolor package (a tiny model logged by package.log_to_run):
    promote only moves @champion to a verified package, so every test version is registered from it."""
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(PARAMS)
    configure()
    PACKAGE.update(zip(("uri", "digest"), log_package(tmp_path)))
    return tmp_path


PACKAGE: dict[str, str] = {}  # the store fixture's package: {"uri": models:/<logged model id>, "digest": ...}


def log_package(folder: Path) -> tuple[str, str]:
    """A tiny model packaged and logged to a new run as the package stage does: (its models:/ URI, its
    content_sha256)."""
    import mlflow
    from test_package import tiny_model

    from polycolor.nn import modelio
    from polycolor.serving import package

    model = tiny_model(folder / "model.pt")
    loaded = modelio.load_model(model)
    exp = ensure_experiment("polycolor-test")
    with mlflow.start_run(experiment_id=exp) as run:
        pass
    card = package.model_card(loaded, name="polycolor", run_info={}, run_params={}, eval_metrics={})
    info = package.log_to_run(mlflow.MlflowClient().get_run(run.info.run_id), model, card, loaded.image_size,
                              10_000)
    return info.model_uri, registry.package_digest(modelio.load_payload(model), dataclasses.asdict(PaintConfig()))


def add_version(psnr: float, accuracy: float = 0.99, name: str = "polycolor", source: str | None = None,
                run_id: str | None = None) -> str:
    """A version of the store's package (or of `source`) made @candidate, whose metrics are `eval.*` tags, the
    format versions registered before logged-model metrics carry (version_metrics still reads it). Made with
    create_model_version, so several versions may share the package's content_sha256."""
    import mlflow

    client = mlflow.MlflowClient()
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    tags = {"eval.val.net.psnr_mean": str(psnr), "eval.val.net.colour_accuracy": str(accuracy),
            registry.CONTENT_TAG: PACKAGE["digest"]}
    mv = client.create_model_version(name, source or PACKAGE["uri"], run_id=run_id, tags=tags)
    client.set_registered_model_alias(name, registry.CANDIDATE, mv.version)
    return str(mv.version)


def cli(*args: str) -> int:
    return main(list(args))


def champion(name: str = "polycolor") -> str | None:
    return registry.aliases(name).get(registry.CHAMPION)


def version_tags(version: str) -> dict[str, str]:
    import mlflow

    return mlflow.MlflowClient().get_model_version("polycolor", version).tags


def test_promotion_refuses_worse_accepts_better_and_rolls_back(store, capsys):
    v1 = add_version(31.0)
    assert registry.aliases("polycolor")[registry.CANDIDATE] == v1
    assert cli("promote") == 0, "the first version that passes the gates becomes champion"
    assert champion() == v1 and version_tags(v1)["promotion.decision"] == "promoted"
    assert "no champion yet" in capsys.readouterr().out

    v2 = add_version(30.5)  # passes the gates but is worse
    assert cli("promote") == REFUSED_EXIT
    out = capsys.readouterr().out
    assert "refused" in out and "not better" in out
    assert champion() == v1
    tags = version_tags(v2)
    assert tags["promotion.decision"] == "refused" and "30.5" in tags["promotion.reason"] and tags["promotion.at"]

    v3 = add_version(32.0)
    assert cli("promote") == 0 and champion() == v3
    assert registry.champion_history("polycolor") == [v1, v3]

    v4 = add_version(40.0, accuracy=0.5)  # best PSNR but fails the colour gate
    assert cli("promote") == REFUSED_EXIT and champion() == v3
    assert "fails gates" in version_tags(v4)["promotion.reason"]

    assert cli("promote", "--rollback") == 0 and champion() == v1
    assert version_tags(v3)["promotion.decision"] == "rolled_back"
    capsys.readouterr()
    assert cli("promote", "--rollback") == 1, "nothing before the first champion"
    assert capsys.readouterr().err.strip().startswith("error: ")

    assert cli("promote", "--version", v2, "--force") == 0 and champion() == v2
    tags = version_tags(v2)
    assert tags["promotion.decision"] == "forced" and tags["promotion.reason"].startswith("forced over: not better")
    assert cli("promote", "--version", v2) == 0 and "already the champion" in capsys.readouterr().out
    assert cli("promote", "--rollback") == 0 and champion() == v1

    capsys.readouterr()
    assert cli("models") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "registered model polycolor" and lines[1].split()[:2] == ["version", "aliases"]
    rows = {ln.split()[0]: ln for ln in lines[2:]}
    assert list(rows) == [v4, v3, v2, v1], "newest first"
    assert "candidate" in rows[v4] and "champion" in rows[v1] and "rolled_back" in rows[v3]
    assert "40" in rows[v4] and "0.5" in rows[v4], "metric columns"


def test_version_metrics_fall_back_to_the_runs_eval_metrics(store):
    import mlflow

    with mlflow.start_run(experiment_id=ensure_experiment("polycolor-test")) as run:
        mlflow.log_metric("eval.val.net.psnr_mean", 33.0)
        mlflow.log_metric("eval.val.net.colour_accuracy", 0.97)
    client = mlflow.MlflowClient()
    client.create_registered_model("polycolor")
    mv = client.create_model_version("polycolor", PACKAGE["uri"], run_id=run.info.run_id,
                                     tags={"eval.val.net.psnr_mean": "31.0", registry.CONTENT_TAG: PACKAGE["digest"]})
    metrics = registry.version_metrics(mv, ["val.net.psnr_mean", "val.net.colour_accuracy"])
    assert metrics == {"val.net.psnr_mean": 31.0, "val.net.colour_accuracy": 0.97}, "tags first, then the run"
    d = registry.promote("polycolor", CFG, version=mv.version)
    assert d.decision == "promoted"


def test_version_metrics_come_from_the_logged_model(store):
    import mlflow

    exp = ensure_experiment("polycolor-test")
    model_id = PACKAGE["uri"].removeprefix("models:/")
    ds = generated_dataset("val", "d1", {"generator": "test"})
    with mlflow.start_run(experiment_id=exp):
        mlflow.log_metrics({"val.net.psnr_mean": 35.0, "val.net.colour_accuracy": 0.99}, model_id=model_id, dataset=ds)
    mv = registry.register_version("polycolor", PACKAGE["uri"],
                                   tags={"git_commit": "abc", registry.CONTENT_TAG: PACKAGE["digest"]},
                                   description="# Model card")
    assert registry.version_metrics(mv) == {"val.net.psnr_mean": 35.0, "val.net.colour_accuracy": 0.99}
    d = registry.promote("polycolor", CFG)
    assert d.decision == "promoted" and version_tags(d.version)["promotion.metric"] == "val.net.psnr_mean = 35"
    assert mlflow.MlflowClient().get_model_version("polycolor", d.version).description == "# Model card"


def test_cli_errors_are_one_line(store, capsys):
    assert cli("models") == 1, "no registered model yet"
    err = capsys.readouterr().err.strip()
    assert err == "error: registered model 'polycolor' not found (run the package stage first)", err
    add_version(31.0)
    capsys.readouterr()  # MLflow's own "registered" lines
    for args in (["promote", "--version", "99"], ["promote", "--name", "other"], ["promote", "--rollback"],
                 ["promote", "--params", "missing.yaml"]):
        assert cli(*args) == 1, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), (args, err)
    with pytest.raises(SystemExit) as e:
        cli("promote", "--rollback", "--force")
    assert e.value.code == 2


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_cli_exit_code_as_a_subprocess(store):
    """The console entry point's exit status, as a shell sees it: refused is REFUSED_EXIT, not a traceback."""
    add_version(31.0)
    assert cli("promote") == 0
    add_version(20.0)
    proc = subprocess.run([sys.executable, "-m", "polycolor.cli", "promote"], capture_output=True, text=True,
                          cwd=store, timeout=120)
    assert proc.returncode == REFUSED_EXIT, proc.stderr
    assert "Traceback" not in proc.stderr and "refused" in proc.stdout
    assert champion() == "1"


def test_commands_do_not_create_a_missing_store(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/absent.db")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(PARAMS)
    for args in (["models"], ["promote"], ["promote", "--rollback"]):
        assert cli(*args) == 1
        assert capsys.readouterr().err.strip().startswith("error: no MLflow store at ")
    assert not (tmp_path / "absent.db").exists()


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_promote_refuses_a_version_that_is_not_a_polycolor_package(store, capsys):
    import mlflow

    from polycolor.serving import pyfunc

    good = add_version(31.0)
    assert cli("promote") == 0 and champion() == good

    class PlantedModel(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):  # noqa: ARG002
            return model_input

    exp = ensure_experiment("polycolor-test")
    with mlflow.start_run(experiment_id=exp):
        planted = mlflow.pyfunc.log_model(name="planted", python_model=PlantedModel())
    capsys.readouterr()
    tampered = [
        ("pickle", add_version(99.0, source=planted.model_uri), "hold a pickle (python_model.pkl)"),
        # a real package whose content_sha256 tag names other weights: the artifacts were swapped under the tag
        ("digest", add_version(99.0), "its weights and paint section hash to"),
    ]
    client = mlflow.MlflowClient()
    client.set_model_version_tag("polycolor", tampered[1][1], registry.CONTENT_TAG, "0" * 64)
    no_tag = client.create_model_version("polycolor", planted.model_uri).version
    tampered.append(("no tag", str(no_tag), f"no {registry.CONTENT_TAG} tag"))
    for what, version, words in tampered:
        for args in (["promote", "--version", version], ["promote", "--version", version, "--force"]):
            assert cli(*args) == 1, (what, args)
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and err.startswith(f"error: refusing polycolor version {version}") \
                and words in err, (what, err)
        assert champion() == good, f"{what}: a version that is not a polycolor package became champion"
        assert "promotion.decision" not in version_tags(version)
    assert pyfunc.MODEL_ARTIFACT  # the package's weights travel as this artifact, checked by verify_package


def test_predict_without_model_names_the_champion_version_and_hash(store, capsys):
    """Issue 28: `predict` without --model says on stderr which model it paints with: the champion's URI, its
    version and its content_sha256."""
    from PIL import Image

    from polycolor.serving import package

    v1 = add_version(31.0)
    assert cli("promote") == 0 and champion() == v1
    Image.fromarray(package.example_outline(32)).save(store / "in.png")
    capsys.readouterr()
    assert cli("predict", "--input", str(store / "in.png"), "--colour", "red", "--output", str(store / "o.png")) == 0
    said = capsys.readouterr().err
    assert f"model: models:/polycolor@champion (version {v1}, content_sha256 {PACKAGE['digest']})" in said, said


def test_a_version_whose_artifacts_were_swapped_is_refused_by_predict_and_rollback(store, capsys):
    """Issue 28: every load by name or alias compares what it downloaded with the version's content_sha256:
    weights swapped in the artifact store after registration are refused in one line naming the version."""
    import mlflow
    from PIL import Image
    from test_package import tiny_model

    from polycolor.serving import package

    v1 = add_version(31.0)
    assert cli("promote") == 0 and champion() == v1
    v2 = add_version(32.0)
    assert cli("promote") == 0 and champion() == v2
    Image.fromarray(package.example_outline(32)).save(store / "in.png")
    predict = ("predict", "--model", "models:/polycolor@champion", "--input", str(store / "in.png"),
               "--colour", "red", "--output", str(store / "o.png"))
    assert cli(*predict) == 0, "the untouched champion paints"
    # every test version shares the store's package: swap its weights for other, validly self-hashed ones
    root = Path(mlflow.artifacts.download_artifacts(f"models:/polycolor/{v2}", dst_path=str(store / "probe")))
    source = mlflow.MlflowClient().get_model_version_download_uri("polycolor", v2).removeprefix("file://")
    assert (root / registry.WEIGHTS).is_file()
    tiny_model(Path(source) / registry.WEIGHTS, paint_everything=False)
    capsys.readouterr()
    for args, version in ((predict, v2), (("promote", "--rollback"), v1)):
        assert cli(*args) == 1, args
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith(f"error: refusing polycolor version {version}") \
            and "hash to" in err and "promote --rollback" in err, (args, err)
    assert champion() == v2 and registry.champion_history("polycolor") == [v1, v2], "a refused rollback moves nothing"


def test_a_deleted_champion_is_refused_by_predict_and_rollback_restores_the_newest_that_exists(store, capsys):
    """Issue 28: deleting the champion's version takes @champion with it. `predict` without --model then says so in
    one line, instead of painting quietly with package/, and `promote --rollback` restores the newest version of
    the history that still exists."""
    import mlflow
    from PIL import Image

    from polycolor.serving import package

    v1 = add_version(31.0)
    assert cli("promote") == 0 and champion() == v1
    v2 = add_version(32.0)
    assert cli("promote") == 0 and champion() == v2
    mlflow.MlflowClient().delete_model_version("polycolor", v2)
    assert champion() is None and registry.champion_history("polycolor") == [v1, v2]
    Image.fromarray(package.example_outline(32)).save(store / "in.png")
    predict = ("predict", "--input", str(store / "in.png"), "--colour", "red", "--output", str(store / "o.png"))
    capsys.readouterr()
    assert cli(*predict) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: registered model 'polycolor' has no @champion") \
        and f"version {v2} was its last" in err and "promote --rollback" in err, err
    assert not (store / "o.png").exists(), "nothing painted"
    assert cli("promote", "--rollback") == 0
    assert champion() == v1 and registry.champion_history("polycolor") == [v1]
    assert "restored version" in version_tags(v1)[registry.REASON_TAG]
    capsys.readouterr()
    assert cli(*predict) == 0
    assert f"model: models:/polycolor@champion (version {v1}," in capsys.readouterr().err
    mlflow.MlflowClient().delete_model_version("polycolor", v1)
    assert cli("promote", "--rollback") == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no previous champion recorded that still exists" in err, err


def test_the_pyfunc_refuses_at_load_weights_that_no_version_records(store, monkeypatch):
    """Issue 28: MLflow's own load of a registered version (`mlflow models serve -m models:/...` loads the same way)
    asks the registry: weights swapped in the artifact store after registration are refused before anything is
    served, in one line naming the hash and the way back; the untouched version loads. Without a store to ask, a
    package still loads."""
    import mlflow
    from test_package import tiny_model

    from polycolor.monitoring.log import ENV, OFF
    from polycolor.nn import modelio
    from polycolor.serving import package

    monkeypatch.setenv(ENV, OFF)
    (store / "named").mkdir()
    model = tiny_model(store / "named" / "model.pt")  # the artifact is named after the file: artifacts/model.pt
    loaded = modelio.load_model(model)
    with mlflow.start_run(experiment_id=ensure_experiment("polycolor-test")) as run:
        pass
    card = package.model_card(loaded, name="polycolor", run_info={}, run_params={}, eval_metrics={})
    info = package.log_to_run(mlflow.MlflowClient().get_run(run.info.run_id), model, card, loaded.image_size, 10_000,
                              watching=package.Watching("polycolor"))
    digest = registry.package_digest(modelio.load_payload(model), dataclasses.asdict(PaintConfig()))
    mv = registry.register_version("polycolor", info.model_uri, tags={registry.CONTENT_TAG: digest})
    uri = f"models:/polycolor/{mv.version}"
    assert mlflow.pyfunc.load_model(uri) is not None, "the version as registered loads"
    source = mlflow.MlflowClient().get_model_version_download_uri("polycolor", mv.version).removeprefix("file://")
    tiny_model(Path(source) / registry.WEIGHTS, paint_everything=False)  # other weights, validly self-hashed
    with pytest.raises(registry.UnregisteredContent) as e:
        mlflow.pyfunc.load_model(uri)
    said = str(e.value)
    assert "\n" not in said and said.startswith("refusing to serve: this package's weights and paint section hash") \
        and "which no version of 'polycolor'" in said and "promote --rollback" in said, said
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'elsewhere' / 'mlflow.db'}")  # no store there
    assert mlflow.pyfunc.load_model(source) is not None, "with no registry to ask, it loads"
