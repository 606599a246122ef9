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


from polycolor.config.data import IngestConfig
from polycolor.config.paint import PaintConfig
from polycolor.config.params import parse_config
from polycolor.config.training import ModelConfig
from polycolor.data.ayna import write_split
from polycolor.data.synth import generate
from polycolor.errors import PolycolorError
from polycolor.evaluation import evaluate as E
from polycolor.evaluation import grid as G
from polycolor.evaluation import logging as L
from polycolor.evaluation import metrics as M
from polycolor.evaluation import sets as S
from polycolor.evaluation.behaviour import BEHAVIOURS
from polycolor.nn.model import ConditionalUNet
from polycolor.nn.modelio import save_model
from polycolor.tracking.datasets import dvc_hash
from polycolor.tracking.eval_runs import EVAL_DIGEST_TAG, file_sha256
from polycolor.tracking.lineage import write_run_info
from polycolor.tracking.store import configure

ROOT = Path(__file__).resolve().parents[1]
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
        configure()
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
    params = {"seed": 7, "evaluate": {"extra_sets": extra, "ood_samples": 3, "ood_scale": [0.15, 0.48],
                                      "ood_offset": 0.2, "unseen_colour_samples": 2, "grid_samples": 2, "batch_size": 4,
                                      "robust_samples": 2, "native_sizes": [64], "gappy_sizes": [64],
                                      "behaviour_samples": 3}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_run_info(tmp_path / "run.json", {"run_id": store["run_id"], "experiment_id": store["exp_id"]})
    return {"dir": tmp_path, "params": params}


def argv(d: Path, **over: str) -> list[str]:
    paths = {"params": d / "params.yaml", "model": d / "model.pt", "data": d / "validation",
             "run-info": d / "run.json", "metrics": d / "out" / "eval.json", "headline": d / "out" / "headline.json",
             "tables": d / "out" / "eval",
             "grid": d / "out" / "eval_grid.png"}
    paths.update({k.replace("_", "-"): v for k, v in over.items()})
    return [x for k, v in paths.items() for x in (f"--{k}", str(v))]


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_end_to_end(project, store, ayna_val, capsys):
    import mlflow

    d = project["dir"]
    params = project["params"]
    params["evaluate"]["extra_sets"]["ayna_real"] = {"path": str(ayna_val), "required": False}
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    assert load_stage().main(argv(d)) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "missing_one" in warnings[0], err

    result = json.loads((d / "out" / "eval.json").read_text())
    sets = ["val", "ood", "unseen_colours", *S.SAME_SIZE_SETS[2:], "native_64", "gappy_64", "ayna_real"]
    for name in sets:
        assert set(result[name]) == {"net", "painted", "flood_fill"}, name
        for scorer, block in result[name].items():
            assert set(block) == BLOCK_KEYS, f"{name}.{scorer}: {sorted(block)}"
    for name in ("val", "ood", "unseen_colours", "ayna_real"):  # closed outlines: the flood fill is exact
        assert result[name]["flood_fill"]["psnr_min"] == M.PSNR_CAP, name
    assert result["missing_one"] == {"skipped": f"{d / 'nowhere'} does not exist"}
    assert result["val"]["net"]["n"] == 6 and result["ood"]["painted"]["n"] == 3
    assert all(result[name]["net"]["n"] == 2 for name in sets if name not in ("val", "ood", "ayna_real"))
    assert result["gappy"]["flood_fill"]["psnr_mean"] < 40, "gaps make the flood fill leak"
    assert set(result["behaviour"]) == {"net", "painted", "flood_fill"}
    for block in result["behaviour"].values():
        assert set(block) == {"rot_flip", "colour_change", "all_white", "shift", "n"} | {
            f"{k}_exact" for k in ("rot_flip", "colour_change", "all_white", "shift")}
        assert block["n"] == 3
    assert all(v == 1.0 for v in result["behaviour"]["flood_fill"].values() if v != 3), "the flood fill is exact"

    headline = json.loads((d / "out" / "headline.json").read_text())
    generated = [n for n in sets if n != "ayna_real"]  # val and the generated sets: what `worst` is taken over
    assert headline["net"]["val"] == round(result["val"]["net"]["psnr_mean"], 4)
    assert headline["painted"]["worst_min"] == round(min(result[n]["painted"]["psnr_min"] for n in generated), 4)
    worst = result["worst"]["net"]
    assert worst["psnr_mean"] == min(result[n]["net"]["psnr_mean"] for n in generated)
    assert result[worst["psnr_min_set"]]["net"]["psnr_min"] == worst["psnr_min"]
    assert headline["behaviour"] == round(min(result["behaviour"]["net"][k] for k in BEHAVIOURS), 4)
    assert "ayna" in headline["net"]
    assert len(L.flat_metrics(headline)) <= 10, "headline.json stays ten columns of dvc exp show"

    tables = d / "out" / "eval"
    assert sorted(p.name for p in tables.iterdir()) == ["confusion.csv", "per_colour.csv", "per_shape.csv",
                                                         "samples.csv"]
    samples = pd.read_csv(tables / "samples.csv")
    assert set(samples["set"]) == set(sets) and set(samples["scorer"]) == {"net", "painted", "flood_fill"}
    assert {"psnr", "iou", "colour_correct", "requested", "painted", "shape"} <= set(samples.columns)
    confusion = pd.read_csv(tables / "confusion.csv")
    assert list(confusion.columns) == ["requested", "painted"] and len(confusion) == 6
    per_colour = pd.read_csv(tables / "per_colour.csv")
    assert per_colour.groupby("set")["n"].sum()["val"] == 3 * 6

    grid = np.asarray(Image.open(d / "out" / "eval_grid.png"))
    # grid_samples of val, then of the real Ayna set, then 2 of each generated set the grid shows
    rows = 2 + 2 + 2 * len(E.GRID_SETS)
    cell = 128  # the largest image: the real data is 128 px
    assert grid.shape == (12 + rows * (12 + cell + 2) + 2, len(G.COLUMNS) * (cell + 2) + 2, 3)

    # the evaluation is its own run under the training run, with its params, datasets and dataset-linked metrics
    client = mlflow.MlflowClient(store["uri"])
    train = client.get_run(store["run_id"])
    assert not any(k.startswith(("val.", "eval.")) for k in train.data.metrics), "the training run stays as it was"
    evals = client.search_runs([train.info.experiment_id], f"tags.`mlflow.parentRunId` = '{store['run_id']}'")
    assert len(evals) == 1
    run = evals[0]
    assert run.info.status == "FINISHED" and run.data.params["evaluate.ood_samples"] == "3"
    assert run.data.params["paint.snap"] == str(PaintConfig().snap), "the paint params are the evaluation's"
    logged = run.data.metrics
    assert logged["val.net.psnr_mean"] == pytest.approx(result["val"]["net"]["psnr_mean"])
    assert logged["val.painted.iou"] == pytest.approx(result["val"]["painted"]["iou"])
    assert logged["val.flood_fill.iou"] == 1.0
    assert logged["behaviour.net.rot_flip"] == pytest.approx(result["behaviour"]["net"]["rot_flip"])
    assert logged["ayna_real.net.iou"] == pytest.approx(result["ayna_real"]["net"]["iou"])
    assert not any(k.startswith("missing_one") for k in logged)
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert {"val", "ood", "unseen_colours"} <= set(inputs)
    val = inputs["val"].dataset
    assert val.digest == dvc_hash(d / "validation") and val.digest.endswith(".dir")
    assert val.source_type == "dvc" and json.loads(val.source)["path"].endswith("validation")
    assert {t.key: t.value for t in inputs["val"].tags}["mlflow.data.context"] == "evaluation"
    assert inputs["ood"].dataset.source_type == "code"
    assert run.data.tags[EVAL_DIGEST_TAG] == file_sha256(d / "out" / "eval.json")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/eval_grid.png", "eval/eval.json", "eval/headline.json", "eval/tables"} <= artifacts
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
    write_run_info(d / "gone.json", {"run_id": "0" * 32})
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


def test_flat_metrics_and_generated_sets_are_deterministic():
    metrics = {"val": {"net": {"psnr_mean": 30.0, "colour_accuracy": None, "n": 4}}, "x": {"skipped": "gone"}}
    assert L.flat_metrics(metrics) == {"val.net.psnr_mean": 30.0, "val.net.n": 4.0}
    assert L.flat_metrics(metrics, "eval") == {"eval.val.net.psnr_mean": 30.0, "eval.val.net.n": 4.0}
    cfg = parse_config({"seed": 5, "evaluate": {"ood_samples": 4, "robust_samples": 2, "gappy_sizes": [64]}})
    a, b = S.generated_sets(cfg, 32), S.generated_sets(cfg, 32)
    assert list(a) == list(S.generated_names(cfg.evaluate))
    assert a["ood"].inputs.shape == (4, 32, 32, 3) and a["gappy_64"].inputs.shape == (2, 64, 64, 3)
    for name in a:
        np.testing.assert_array_equal(a[name].inputs, b[name].inputs)
    assert set(a["ood"].colours) <= {"red", "green", "blue", "yellow", "cyan", "magenta", "orange", "purple"}
    grey = a["jpeg"].inputs[(a["jpeg"].inputs > 0) & (a["jpeg"].inputs < 255)]
    assert grey.size > 0 and set(np.unique(a["jpeg"].targets[0])) <= {0, 255} | set(a["jpeg"].rgb[0].tolist())


def test_grid_layout():
    t = np.full((16, 16, 3), 255, dtype=np.uint8)
    p = t.copy()
    p[4:8, 4:8] = (255, 0, 0)
    grid = G.labelled_grid([G.GridRow("a", t, t, t, p), G.GridRow("b", t, t, t, t)], gap=2, label=10)
    assert grid.shape == (10 + 2 * (10 + 16 + 2) + 2, 5 * 18 + 2, 3)
    err = grid[10 + 10:10 + 10 + 16, 4 * 18 + 2:4 * 18 + 2 + 16]  # row 0, |painted - target| column
    assert err[5, 5].tolist() == [255, 255, 255] and err[0, 0].tolist() == [0, 0, 0]


def test_bad_extra_set_names_are_errors(tmp_path):
    for name in ("val", "a b", "gappy", "jpeg", "behaviour", "native_512", "gappy_1024"):
        cfg = parse_config({"evaluate": {"extra_sets": {name: str(tmp_path)}}})
        with pytest.raises(PolycolorError, match="evaluate.extra_sets"):
            S.load_sets(cfg, tmp_path)


def test_embedding_model_leaves_out_unknown_colours():
    torch.manual_seed(0)
    model = ConditionalUNet(ModelConfig(widths=(4, 8), colour_encoding="embedding"), ("red", "blue"), 32)
    from polycolor.nn.modelio import LoadedModel

    loaded = LoadedModel(model.eval(), model.cfg, model.vocab, 32, {})
    arrays = generate(IngestConfig(image_size=32, colours=("red", "green")), 4, 2)
    cfg = parse_config({"evaluate": {"grid_samples": 1}}).evaluate
    ev = E.evaluate_model(loaded, [S.EvalSet("val", arrays)], cfg, PaintConfig(), {"gone": "missing"})
    assert ev.metrics["val"]["net"]["n"] == ev.metrics["val"]["flood_fill"]["n"] == arrays.colours.count("red")
    assert ev.metrics["gone"] == {"skipped": "missing"}
    assert len(ev.notes) == 1 and "outside the model's vocabulary" in ev.notes[0]
    assert set(ev.samples["colour"]) == {"red"}
    assert sorted(ev.samples["index"][(ev.samples["set"] == "val") & (ev.samples["scorer"] == "net")]) == [
        i for i, c in enumerate(arrays.colours) if c == "red"], "indices point into the set as loaded"
