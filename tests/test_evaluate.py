"""The evaluate stage end to end on a tiny untrained model, a tiny dataset and a temporary MLflow store."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from polycolor import tracking
from polycolor.config import IngestConfig, ModelConfig, parse_config
from polycolor.data.ayna import write_split
from polycolor.data.synth import generate
from polycolor.errors import PolycolorError
from polycolor.evaluation import evaluate as E
from polycolor.evaluation import metrics as M
from polycolor.nn.model import ConditionalUNet
from polycolor.nn.modelio import save_model

ROOT = Path(__file__).resolve().parents[1]
REAL_VAL = ROOT / ".." / "shared" / "ayna-dataset" / "validation"
BLOCK_KEYS = {*M.SUMMARY_KEYS, "latency_ms_p50", "n"}


def load_stage():
    spec = importlib.util.spec_from_file_location("stage_evaluate", ROOT / "stages" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """On a small shared machine, OpenMP threads spinning against other processes make a tiny forward pass take
    hundreds of ms at 2 threads against well under 1 ms at 1; the stage itself leaves threads as they are."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """A temporary sqlite MLflow store holding one 'training' run (schema creation is slow: once per module)."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        tracking.configure()
        client = mlflow.MlflowClient()
        exp_id = client.create_experiment("eval-test", artifact_location=(root / "artifacts").as_uri())
        run = client.create_run(exp_id, run_name="tiny")
        client.set_terminated(run.info.run_id)  # evaluate logs into a finished training run
    finally:
        mp.undo()
    return {"uri": uri, "run_id": run.info.run_id, "exp_id": exp_id}


@pytest.fixture
def project(tmp_path, store, monkeypatch) -> dict:
    """A tiny model, a 6-sample validation split at 32 px, params and a run-info file, all in tmp_path."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = ConditionalUNet(ModelConfig(widths=(4, 8)), ("red", "blue"), 32)
    save_model(tmp_path / "model.pt", model, meta={})
    val = generate(IngestConfig(image_size=32), 6, 1)
    names = [f"{i:02d}_{s}.png" for i, s in enumerate(val.shapes)]
    write_split(tmp_path / "validation", val.inputs, val.targets, val.colours, names, names)
    extra = {"missing_one": {"path": str(tmp_path / "nowhere"), "required": False}}
    if REAL_VAL.is_dir():
        extra["ayna_real"] = {"path": str(REAL_VAL), "required": False}
    params = {"seed": 7, "evaluate": {"extra_sets": extra, "ood_samples": 3, "ood_scale": [0.15, 0.48],
                                      "ood_offset": 0.2, "unseen_colour_samples": 2, "grid_samples": 2, "batch_size": 4,
                                      "robust_samples": 2, "native_size": 64, "behaviour_samples": 3}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    tracking.write_run_info(tmp_path / "run.json", {"run_id": store["run_id"], "experiment_id": store["exp_id"]})
    return {"dir": tmp_path, "params": params}


def argv(d: Path, **over: str) -> list[str]:
    paths = {"params": d / "params.yaml", "model": d / "model.pt", "data": d / "validation",
             "run-info": d / "run.json", "metrics": d / "out" / "eval.json", "tables": d / "out" / "eval",
             "grid": d / "out" / "eval_grid.png"}
    paths.update({k.replace("_", "-"): v for k, v in over.items()})
    return [x for k, v in paths.items() for x in (f"--{k}", str(v))]


def test_end_to_end(project, store, capsys):
    import mlflow

    d = project["dir"]
    assert load_stage().main(argv(d)) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "missing_one" in warnings[0], err

    result = json.loads((d / "out" / "eval.json").read_text())
    blocks = ["val", "reference", "ood", "ood_reference", "unseen_colours", "unseen_colours_reference"]
    if REAL_VAL.is_dir():
        blocks += ["ayna_real", "ayna_real_reference"]
    for block in [b for b in blocks if b.endswith("reference")]:  # closed outlines: the flood fill is exact
        assert result[block]["psnr_min"] == M.PSNR_CAP and result[block]["iou"] == 1.0, block
    robust = ["gappy", "hand_drawn", "thick_thin", "novel_shapes", "native_64"]
    blocks += robust + [f"{b}_reference" for b in robust]
    for block in blocks:
        assert set(result[block]) == BLOCK_KEYS, f"{block}: {sorted(result[block])}"
    assert result["missing_one"] == {"skipped": f"{d / 'nowhere'} does not exist"}
    assert result["val"]["n"] == 6 and result["ood"]["n"] == 3 and result["unseen_colours"]["n"] == 2
    assert all(result[b]["n"] == 2 for b in robust)
    assert result["gappy_reference"]["psnr_mean"] < 40, "gaps make the flood fill leak"
    for block in ("behaviour", "behaviour_reference"):
        assert set(result[block]) == {"rot_flip", "colour_change", "all_white", "shift", "n"}, block
        assert result[block]["n"] == 3
    assert all(v == 1.0 for k, v in result["behaviour_reference"].items() if k != "n"), "the flood fill is exact"

    tables = d / "out" / "eval"
    assert sorted(p.name for p in tables.iterdir()) == ["confusion.csv", "per_colour.csv", "per_shape.csv",
                                                         "samples.csv"]
    samples = pd.read_csv(tables / "samples.csv")
    assert set(samples["set"]) == set(blocks)
    assert {"psnr", "iou", "colour_correct", "requested", "painted", "shape"} <= set(samples.columns)
    confusion = pd.read_csv(tables / "confusion.csv")
    assert list(confusion.columns) == ["requested", "painted"] and len(confusion) == 6
    per_colour = pd.read_csv(tables / "per_colour.csv")
    assert per_colour.groupby("set")["n"].sum()["val"] == 6

    grid = np.asarray(Image.open(d / "out" / "eval_grid.png"))
    # grid_samples of val, then of the real Ayna set, then 2 (of 3 allowed) of each robustness set at val's size
    rows = 2 + (2 if REAL_VAL.is_dir() else 0) + 4 * 2
    cell = 128 if REAL_VAL.is_dir() else 32  # the largest image: the real data is 128 px
    assert grid.shape == (12 + rows * (12 + cell + 2) + 2, 4 * (cell + 2) + 2, 3)

    # the evaluation is its own run under the training run, with its params, datasets and dataset-linked metrics
    client = mlflow.MlflowClient(store["uri"])
    train = client.get_run(store["run_id"])
    assert not any(k.startswith(("val.", "eval.")) for k in train.data.metrics), "the training run stays as it was"
    evals = client.search_runs([train.info.experiment_id], f"tags.`mlflow.parentRunId` = '{store['run_id']}'")
    assert len(evals) == 1
    run = evals[0]
    assert run.info.status == "FINISHED" and run.data.params["evaluate.ood_samples"] == "3"
    logged = run.data.metrics
    assert logged["val.psnr_mean"] == pytest.approx(result["val"]["psnr_mean"])
    assert logged["reference.iou"] == 1.0
    if REAL_VAL.is_dir():
        assert logged["ayna_real.iou"] == pytest.approx(result["ayna_real"]["iou"])
    assert not any(k.startswith("missing_one") for k in logged)
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert {"val", "ood", "unseen_colours"} <= set(inputs)
    val = inputs["val"].dataset
    assert val.digest == tracking.dvc_hash(d / "validation") and val.digest.endswith(".dir")
    assert val.source_type == "dvc" and json.loads(val.source)["path"].endswith("validation")
    assert {t.key: t.value for t in inputs["val"].tags}["mlflow.data.context"] == "evaluation"
    assert inputs["ood"].dataset.source_type == "code"
    assert run.data.tags[tracking.EVAL_DIGEST_TAG] == tracking.file_sha256(d / "out" / "eval.json")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/eval_grid.png", "eval/eval.json", "eval/tables"} <= artifacts
    assert "eval/tables/samples.csv" in {a.path for a in client.list_artifacts(run.info.run_id, "eval/tables")}


def one_error_line(err: str) -> str:
    """The one `error: ...` line of stderr (warnings about skipped sets aside)."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_missing_model_is_one_line_and_writes_nothing(project, capsys):
    d = project["dir"]
    (d / "out").mkdir()
    (d / "out" / "eval.json").write_text("old\n")
    assert load_stage().main(argv(d, model=d / "absent.pt")) == 1
    assert "model file not found" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in (d / "out").iterdir()) == ["eval.json"], "no new or temporary outputs"
    assert (d / "out" / "eval.json").read_text() == "old\n"


def test_missing_run_info_or_run_is_an_error(project, capsys):
    d = project["dir"]
    stage = load_stage()
    assert stage.main(argv(d, run_info=d / "absent.json")) == 1
    assert "run info not found" in one_error_line(capsys.readouterr().err)
    tracking.write_run_info(d / "gone.json", {"run_id": "0" * 32})
    assert stage.main(argv(d, run_info=d / "gone.json")) == 1
    assert "not found" in one_error_line(capsys.readouterr().err)
    assert not (d / "out").exists()


def test_missing_required_set_is_an_error(project, capsys):
    d = project["dir"]
    params = project["params"]
    params["evaluate"]["extra_sets"]["missing_one"]["required"] = True
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    assert load_stage().main(argv(d)) == 1
    assert "required set" in one_error_line(capsys.readouterr().err)


def test_failed_write_leaves_nothing_half_written(project, monkeypatch, capsys):
    d = project["dir"]

    def broken_png(path, image):
        Path(path).write_bytes(b"partial")
        raise PolycolorError("disk full")

    monkeypatch.setattr(E, "write_png", broken_png)
    assert load_stage().main(argv(d)) == 1
    assert "disk full" in one_error_line(capsys.readouterr().err)
    assert list((d / "out").iterdir()) == [], "eval.json, the tables and the grid are all or nothing"


def test_flat_metrics_and_ood_are_deterministic():
    metrics = {"val": {"psnr_mean": 30.0, "colour_accuracy": None, "n": 4}, "x": {"skipped": "gone"}}
    assert E.flat_metrics(metrics) == {"eval.val.psnr_mean": 30.0, "eval.val.n": 4.0}
    cfg = parse_config({"seed": 5, "evaluate": {"ood_samples": 4}})
    a, b = E.ood_arrays(cfg, 32), E.ood_arrays(cfg, 32)
    assert a.inputs.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(a.targets, b.targets)
    assert set(a.colours) <= {"red", "green", "blue", "yellow", "cyan", "magenta", "orange", "purple"}


def test_grid_layout():
    t = np.full((16, 16, 3), 255, dtype=np.uint8)
    p = t.copy()
    p[4:8, 4:8] = (255, 0, 0)
    grid = E.labelled_grid([E.GridRow("a", t, t, p), E.GridRow("b", t, t, t)], gap=2, label=10)
    assert grid.shape == (10 + 2 * (10 + 16 + 2) + 2, 4 * 18 + 2, 3)
    err = grid[10 + 10:10 + 10 + 16, 3 * 18 + 2:3 * 18 + 2 + 16]  # row 0, |error| column
    assert err[5, 5].tolist() == [255, 255, 255] and err[0, 0].tolist() == [0, 0, 0]


def test_bad_extra_set_names_are_errors(tmp_path):
    for name in ("reference", "val_reference", "a b", "gappy", "behaviour", "native_512"):
        cfg = parse_config({"evaluate": {"extra_sets": {name: str(tmp_path)}}})
        with pytest.raises(PolycolorError, match="evaluate.extra_sets"):
            E.load_sets(cfg, tmp_path)


def test_embedding_model_leaves_out_unknown_colours():
    torch.manual_seed(0)
    model = ConditionalUNet(ModelConfig(widths=(4, 8), colour_encoding="embedding"), ("red", "blue"), 32)
    from polycolor.nn.modelio import LoadedModel

    loaded = LoadedModel(model.eval(), model.cfg, model.vocab, 32, {})
    arrays = generate(IngestConfig(image_size=32, colours=("red", "green")), 4, 2)
    cfg = parse_config({"evaluate": {"grid_samples": 1}}).evaluate
    ev = E.evaluate_model(loaded, [E.EvalSet("val", arrays)], cfg, {"gone": "missing"})
    assert ev.metrics["val"]["n"] == ev.metrics["reference"]["n"] == arrays.colours.count("red")
    assert ev.metrics["gone"] == {"skipped": "missing"}
    assert len(ev.notes) == 1 and "outside the model's vocabulary" in ev.notes[0]
    assert set(ev.samples["colour"]) == {"red"}
    assert sorted(ev.samples["index"][ev.samples["set"] == "val"]) == [
        i for i, c in enumerate(arrays.colours) if c == "red"], "indices point into the set as loaded"
