"""The benchmark's pieces on a tiny config: they produce every figure, consistently (no timing assertions)."""

import json

from polycolor.bench import (
    BATCH_SIZES,
    format_table,
    inference_figures,
    training_figures,
)
from polycolor.cli import main
from polycolor.config import parse_config
from polycolor.nn.model import ConditionalUNet
from polycolor.nn.modelio import LoadedModel

TINY = parse_config({"ingest": {"image_size": 32, "outline_width": [1, 2]}, "model": {"widths": [4, 8], "embed_dim": 8},
                     "train": {"batch_size": 4}})


def test_training_figures_count_flops_and_rate():
    fig = training_figures(TINY, steps=2)
    # A forward + backward pass of even this tiny net costs more than 1 MFLOP per 32 px image.
    assert fig["train_gflop_per_image"] > 1e-3
    assert fig["train_images_per_s"] > 0


def test_inference_figures_and_table():
    model = ConditionalUNet(TINY.model, ("red",), 32).eval()
    fig = inference_figures(LoadedModel(model, TINY.model, ("red",), 32, {}), TINY, repeats=3, runs=1)
    assert fig["infer_ms_p95"] >= fig["infer_ms_p50"] > 0
    assert fig["infer_ms_p95_64px"] >= fig["infer_ms_p50_64px"] > 0 and fig["infer_ms_p50_128px"] > 0
    assert set(fig["infer_images_per_s"]) == {f"b{bs}" for bs in BATCH_SIZES}
    assert min(fig["infer_images_per_s"].values()) > 0 and fig["infer_best_batch"] in BATCH_SIZES
    table = format_table({**fig, "stage_wall_s": {"train": 1.5}})
    assert "infer_ms_p50" in table and "stage_wall_s.train" in table


def test_bench_command_writes_json(tmp_path, monkeypatch):
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"ingest": {"image_size": 32}, "model": {"widths": [4, 8], "embed_dim": 8},
                                  "train": {"batch_size": 2}}))
    out = tmp_path / "bench.json"
    rc = main(["bench", "--params", str(params), "--model", str(tmp_path / "none.pt"),
               "--train-metrics", str(tmp_path / "none.json"), "--out", str(out)])
    assert rc == 0
    fig = json.loads(out.read_text())
    assert {"matmul_gflops", "train_ceiling_ratio", "infer_ms_p50", "parameters"} <= set(fig)
    assert 0 < fig["train_ceiling_ratio"] < 10
