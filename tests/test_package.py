"""The package stage: the pyfunc's wire format, the package folder, the model card, logging and registration."""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import log_evaluation
from PIL import Image

from polycolor.config.paint import PaintConfig
from polycolor.config.params import load_params
from polycolor.config.training import ModelConfig
from polycolor.errors import PolycolorError
from polycolor.nn import modelio
from polycolor.nn.model import ConditionalUNet
from polycolor.serving import package, predict, pyfunc, registry

REPO = Path(__file__).resolve().parents[1]


def _load_stage():
    """stages/package.py as a module (stages/ is not a package; a unique name avoids clashing with others)."""
    spec = importlib.util.spec_from_file_location("polycolor_stage_package", REPO / "stages" / "package.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


package_stage = _load_stage()

EVAL = {
    "val": {"net": {"psnr_mean": 31.5, "colour_accuracy": 0.98, "iou": 0.91, "ssim": 0.95, "n": 5},
            "painted": {"psnr_mean": 33.0, "colour_accuracy": 0.98},
            "flood_fill": {"psnr_mean": 20.0, "colour_accuracy": 1.0}},
    "ayna_real": {"net": {"psnr_mean": 28.0, "colour_accuracy": 0.96}, "painted": {"psnr_mean": 29.0},
                  "flood_fill": {"psnr_mean": 19.0}},
    "behaviour": {"net": {"rot_flip": 0.99, "shift": 0.98}, "flood_fill": {"rot_flip": 1.0}},
    "ood": {"skipped": "disabled"},
}


def tiny_model(path: Path, paint_everything: bool = True) -> Path:
    """A tiny untrained model (widths (4, 8), 32 px). With paint_everything its mask head is biased to 1, so it
    paints every pixel the requested colour: a deterministic output to check colours against."""
    torch.manual_seed(0)
    model = ConditionalUNet(ModelConfig(widths=(4, 8)), ("red", "blue"), 32)
    if paint_everything:
        with torch.no_grad():
            model.out.bias.fill_(50.0)
    modelio.save_model(path, model, meta={"epoch": 1})
    return path


def b64_png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode(text: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(text))) as im:
        assert im.mode == "RGB", f"output PNG mode {im.mode}, expected RGB"
        return np.asarray(im)


@pytest.fixture
def store(tmp_path, monkeypatch, mlflow_store):
    """A fresh sqlite MLflow store (a copy of the template) with one finished 'training' run and its run.json."""
    import mlflow

    from polycolor.tracking.lineage import write_run_info
    from polycolor.tracking.store import configure, ensure_experiment, tracking_uri

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    configure()
    exp = ensure_experiment("polycolor-test")
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_param("train.lr", 0.003)
    info = {"run_id": run.info.run_id, "experiment_id": exp, "run_name": run.info.run_name,
            "dvc_exp_name": "exp-tiny", "data_hash": "0123abcd", "git_commit": "feedface",
            "tracking_uri": tracking_uri()}
    write_run_info(tmp_path / "run.json", info)
    log_evaluation(run.info.run_id, tmp_path, EVAL)
    return tmp_path


def test_pip_requirements_are_polycolor_dependencies_without_extras():
    reqs = package.pip_requirements()
    names = {r.split("<")[0].split(">")[0].split("=")[0].strip() for r in reqs}
    assert {"torch", "mlflow", "pandas", "pillow"} <= names, reqs
    assert not any("extra" in r for r in reqs), f"extras leaked into the requirements: {reqs}"


def test_pyfunc_paints_any_size_and_mode_at_input_size(tmp_path):
    loaded = modelio.load_model(tiny_model(tmp_path / "m.pt"))
    rgba = Image.new("RGBA", (45, 30), (0, 0, 0, 0))  # transparent: composited over white
    rgba.paste((0, 0, 0, 255), (20, 12, 26, 14))  # an opaque black stroke
    grey = Image.new("L", (64, 64), 255)
    grey.paste(0, (30, 30, 33, 40))
    frame = pd.DataFrame({"image": [b64_png(rgba), b64_png(grey), b64_png(rgba)],
                          "colour": ["red", "#0000ff", "Blue"]})
    out = pyfunc.predict_frame(loaded, frame)
    assert list(out.columns) == ["image"] and len(out) == 3
    shapes = [decode(t).shape for t in out["image"]]
    assert shapes == [(30, 45, 3), (64, 64, 3), (30, 45, 3)], f"outputs must keep input sizes, got {shapes}"
    for text, rgb in zip(out["image"], [(255, 0, 0), (0, 0, 255), (0, 0, 255)]):
        colours = {tuple(c) for c in np.unique(decode(text).reshape(-1, 3), axis=0).tolist()}
        assert colours == {rgb, (255, 255, 255)}, f"the biased model paints around the ink {rgb}, got {colours}"


def test_pyfunc_rejects_bad_rows_with_one_line_errors(tmp_path):
    loaded = modelio.load_model(tiny_model(tmp_path / "m.pt"))
    good = b64_png(Image.new("RGB", (32, 32), "white"))
    cases = [
        (pd.DataFrame({"image": [good]}), "missing colour"),
        (pd.DataFrame({"image": ["not base64!"], "colour": ["red"]}), "not valid base64"),
        (pd.DataFrame({"image": [base64.b64encode(b"plain text").decode()], "colour": ["red"]}), "decodable"),
        (pd.DataFrame({"image": [good], "colour": ["no-such-colour"]}), "unknown colour"),
    ]
    for frame, expected in cases:
        with pytest.raises(PolycolorError, match=expected) as e:
            pyfunc.predict_frame(loaded, frame)
        assert "\n" not in str(e.value)


def test_card_markdown_and_example(tmp_path):
    loaded = modelio.load_model(tiny_model(tmp_path / "m.pt"))
    card = package.model_card(loaded, name="polycolor", run_info={"run_id": "r1", "git_commit": "c0ffee"},
                              run_params={"train.lr": "0.003"}, eval_metrics=EVAL)
    for key in ("params", "lineage", "metrics", "intended_use", "known_limits", "model"):
        assert card[key], f"model card lacks {key}"
    md = package.card_markdown(card)
    assert "## Intended use" in md and "## Known limits" in md and "c0ffee" in md and "train.lr" in md
    assert "| ood | skipped: disabled |" in md
    example = package.input_example(32)
    assert decode(example["image"][0]).shape == (32, 32, 3)


def test_package_stage_builds_logs_and_registers(store, tiny_dataset):
    model = tiny_model(store / "model.pt")
    out, reg = store / "package", store / "registry.json"
    argv = ["--params", str(REPO / "params.yaml"), "--model", str(model), "--metrics", str(store / "eval.json"),
            "--run-info", str(store / "run.json"), "--data", str(tiny_dataset), "--out", str(out),
            "--registry-info", str(reg)]
    assert package_stage.main(argv) == 0

    # the package: models from code (no pickle), signature, example, requirements, model card
    mlmodel = (out / "MLmodel").read_text()
    assert "mlflow.pyfunc.loaders.code_model" in mlmodel and "signature:" in mlmodel
    assert not list(out.rglob("*.pkl")), "the package must not hold pickles"
    for name in ("input_example.json", "requirements.txt", "model_card.json", "MODEL_CARD.md", "artifacts/model.pt"):
        assert (out / name).is_file(), f"package lacks {name}"
    card = json.loads((out / "model_card.json").read_text())
    assert card["lineage"]["data_hash"] == "0123abcd" and card["metrics"]["val"]["net"]["psnr_mean"] == 31.5
    assert card["params"] == {"train.lr": "0.003"}

    import mlflow

    answer = mlflow.pyfunc.load_model(str(out)).predict(package.input_example(32))
    assert decode(answer["image"][0]).shape == (32, 32, 3)
    params = load_params(REPO / "params.yaml")
    assert predict.stored_paint(out) == params.paint, "the package stores the params' paint section"
    assert card["interface"]["paint"] == dataclasses.asdict(params.paint)

    # the registry: a new version with the lineage tags and the card, alias candidate, linked to the training run
    info = json.loads(reg.read_text())
    run_id = json.loads((store / "run.json").read_text())["run_id"]
    assert info["name"] == "polycolor" and info["version"] == "1" and info["run_id"] == run_id
    assert info["model_uri"] == "models:/polycolor/1"
    client = mlflow.MlflowClient()
    mv = client.get_model_version_by_alias("polycolor", "candidate")
    assert str(mv.version) == "1" and mv.run_id == run_id
    eval_run = client.search_runs([json.loads((store / "run.json").read_text())["experiment_id"]],
                                  f"tags.`mlflow.parentRunId` = '{run_id}'")[0]
    assert mv.tags == {"git_commit": "feedface", "dvc_exp_name": "exp-tiny", "data_hash": "0123abcd",
                       "evaluation_run": eval_run.info.run_id,
                       "content_sha256": registry.package_digest(modelio.load_payload(model), dataclasses.asdict(params.paint))}, \
        "a short fixed set of tags, no metrics"
    assert mv.description.startswith("# Model card: polycolor")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED", "packaging must not reopen or fail the training run"
    logged = client.get_logged_model(info["logged_model_uri"].split("/")[-1])
    assert logged.experiment_id == run.info.experiment_id and logged.source_run_id == run_id
    assert logged.artifact_location.startswith((store / "mlartifacts").as_uri()), logged.artifact_location
    assert "READY" in str(logged.status) and logged.params == {"train.lr": "0.003"}
    assert [m.model_id for m in run.outputs.model_outputs] == [logged.model_id], "the run lists its model"
    assert run.data.tags["polycolor.registered_version"] == "polycolor/1"

    # the logged model carries the evaluation's metrics of its own blocks, each tied to its dataset and to the
    # evaluation run, which lists the model as an input
    linked = {(m.key, m.dataset_name, m.dataset_digest, m.run_id): m.value for m in logged.metrics}
    assert linked[("val.net.psnr_mean", "val", "digest-val", eval_run.info.run_id)] == 31.5
    assert linked[("val.painted.psnr_mean", "val", "digest-val", eval_run.info.run_id)] == 33.0
    assert linked[("ayna_real.net.psnr_mean", "ayna_real", "digest-ayna_real", eval_run.info.run_id)] == 28.0
    assert linked[("behaviour.net.rot_flip", "val", "digest-val", eval_run.info.run_id)] == 0.99, \
        "the behavioural shares reach the model (the default gates read them), tied to val"
    assert not any(".flood_fill." in k[0] for k in linked), "the flood fill's figures are not the model's"
    assert logged.model_id in {i.model_id for i in client.get_run(eval_run.info.run_id).inputs.model_inputs}

    assert registry.version_metrics(mv)["val.net.psnr_mean"] == 31.5
    assert registry.version_metrics(mv)["behaviour.net.shift"] == 0.98


def test_package_refuses_metrics_no_evaluation_run_wrote(store, tiny_dataset, capsys):
    (store / "eval.json").write_text(json.dumps({**EVAL, "val": {"net": {"psnr_mean": 99.0}}}))
    argv = ["--params", str(REPO / "params.yaml"), "--model", str(tiny_model(store / "model.pt")), "--metrics",
            str(store / "eval.json"), "--run-info", str(store / "run.json"), "--data", str(tiny_dataset),
            "--out", str(store / "package"),
            "--registry-info", str(store / "registry.json")]
    assert package_stage.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "was not written by an evaluation run" in err, err
    assert not (store / "package").exists()


def test_package_stage_errors_are_one_line_and_leave_no_output(store, tiny_dataset, capsys):
    model = tiny_model(store / "model.pt")
    out = store / "package"
    base = ["--params", str(REPO / "params.yaml"), "--model", str(model), "--metrics", str(store / "eval.json"),
            "--run-info", str(store / "run.json"), "--data", str(tiny_dataset), "--out", str(out),
            "--registry-info", str(store / "r.json")]
    for flag, value, expected in [("--run-info", store / "nope.json", "run info not found"),
                                  ("--metrics", store / "nope.json", "metrics file not found"),
                                  ("--model", store / "nope.pt", "model file not found")]:
        argv = list(base)
        argv[argv.index(flag) + 1] = str(value)
        assert package_stage.main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and expected in err[-1], err
        assert not out.exists() and not (store / "r.json").exists()


def stroke_frame() -> pd.DataFrame:
    """One request row: a short stroke in a 64 px image, which the biased model paints only around (canonical
    form) as the full painter, and everywhere as the net alone."""
    grey = Image.new("L", (64, 64), 255)
    grey.paste(0, (30, 30, 33, 40))
    return pd.DataFrame({"image": [b64_png(grey)], "colour": ["red"]})


def test_the_pyfunc_paints_with_its_stored_paint_section_or_as_the_net(tmp_path):
    """The paint section travels in the package (model_config): a package stored with every step off paints as
    the net alone; the default one paints only around the ink. params={"painter": "net"} gives the net's output."""
    import mlflow
    from mlflow.exceptions import MlflowException

    model = tiny_model(tmp_path / "m.pt")
    loaded = modelio.load_model(model)
    card = package.model_card(loaded, name="polycolor", run_info={}, run_params={}, eval_metrics={})
    painted_red = {}
    for name, paint in (("default", PaintConfig()), ("off", PaintConfig(canonical="off", snap="off"))):
        package.save_package(tmp_path / name, model, card, loaded.image_size, paint=paint)
        assert predict.stored_paint(tmp_path / name) == paint
        pyfunc_model = mlflow.pyfunc.load_model(str(tmp_path / name))
        for painter in ("painted", "net"):
            out = decode(pyfunc_model.predict(stroke_frame(), params={"painter": painter})["image"][0])
            painted_red[name, painter] = int((out == (255, 0, 0)).all(axis=-1).sum())
        with pytest.raises(MlflowException, match="painter must be one of net, painted, got 'crf'"):
            pyfunc_model.predict(stroke_frame(), params={"painter": "crf"})
    everything = 64 * 64
    assert painted_red["default", "net"] == painted_red["off", "net"] == painted_red["off", "painted"] == everything
    assert 0 < painted_red["default", "painted"] < everything, "the stored default paints around the ink only"
    assert mlflow.models.get_model_info(str(tmp_path / "default")).signature.params.to_dict() == [
        {"name": "painter", "type": "string", "default": "painted", "shape": None}]


def test_pyfunc_caps_rows_and_pixels_per_request(tmp_path):
    """Issue 28: the scoring server refuses (400: MlflowException INVALID_PARAMETER_VALUE) a request over
    MAX_ROWS rows or over max_pixels pixels summed over its rows, in one line naming the cap."""
    from mlflow.exceptions import MlflowException

    model = pyfunc.PolycolorModel()
    model.loaded, model.max_pixels, model.paint = modelio.load_model(tiny_model(tmp_path / "m.pt")), 3000, PaintConfig()
    small = b64_png(Image.new("RGB", (32, 32), "white"))  # 1024 pixels
    too_many = pd.DataFrame({"image": [small] * (pyfunc.MAX_ROWS + 1), "colour": ["red"] * (pyfunc.MAX_ROWS + 1)})
    too_big = pd.DataFrame({"image": [small] * 3, "colour": ["red"] * 3})  # 3072 pixels, each under 3000
    for frame, cap in ((too_many, f"cap of {pyfunc.MAX_ROWS} rows"), (too_big, "cap of 3000 pixels per request")):
        with pytest.raises(MlflowException, match=cap) as e:
            model.predict(None, frame)
        assert e.value.error_code == "INVALID_PARAMETER_VALUE" and "\n" not in e.value.message
    assert len(model.predict(None, too_big.iloc[:2])) == 2, "a request within both caps paints"


def test_the_package_ties_each_metric_to_the_dataset_evaluation_logged_it_with(monkeypatch):
    """link_evaluation (package) and metric_dataset (evaluation logging) read the set of a metric key with the one
    rule, names.metric_set: its own set, val for the behavioural shares; the flood fill stays on the run."""
    from types import SimpleNamespace

    import mlflow

    from polycolor.evaluation.logging import metric_dataset

    datasets = {n: SimpleNamespace(name=n) for n in ("val", "gappy")}
    metrics = {"val.net.psnr_mean": 40.0, "gappy.painted.iou": 0.9, "behaviour.net.shift": 1.0,
               "val.flood_fill.iou": 1.0, "worst.net.psnr_min": 30.0}
    eval_run = SimpleNamespace(inputs=SimpleNamespace(dataset_inputs=[SimpleNamespace(dataset=d)
                                                                       for d in datasets.values()]),
                               data=SimpleNamespace(metrics=metrics), info=SimpleNamespace(run_id="r"))
    logged: dict[str, object] = {}
    monkeypatch.setattr(mlflow, "log_metrics", lambda values, dataset=None, **_: logged.update(
        {k: dataset for k in values}))
    linked = package.link_evaluation(eval_run, "m-1")
    assert sorted(linked) == sorted(k for k in metrics if ".flood_fill." not in k)
    assert logged == {k: metric_dataset(k, datasets) for k in linked}
    assert logged["behaviour.net.shift"] is datasets["val"] and logged["worst.net.psnr_min"] is None
