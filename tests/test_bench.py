"""The benchmark's pieces on a tiny config: they produce every figure, consistently. FLOPs are checked exactly
against torch's own counter; timings only within bounds that a wrong formula (a missing batch division, a ratio
turned over) would leave."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from polycolor.bench import (
    BATCH_SIZES,
    _training_setup,
    ceiling_share,
    conv_flops,
    conv_shapes,
    format_table,
    inference_figures,
    training_figures,
)
from polycolor.cli import main
from polycolor.config.params import parse_config
from polycolor.nn.model import ConditionalUNet
from polycolor.nn.modelio import LoadedModel

TINY_PARAMS = {"ingest": {"image_size": 32, "outline_width": [1, 2]}, "model": {"widths": [4, 8], "embed_dim": 8},
               "train": {"batch_size": 4}}
TINY = parse_config(TINY_PARAMS)


def test_training_figures_count_flops_and_rate():
    fig = training_figures(TINY, steps=2)
    # A forward + backward pass of even this tiny net costs more than 1 MFLOP per 32 px image.
    assert fig["train_gflop_per_image"] > 1e-3
    assert fig["train_images_per_s"] > 0


def test_ceiling_share_is_achieved_rate_over_ceiling():
    # 4 GFLOP per image at 25 images/s is 100 GFLOP/s: half of a 200 GFLOP/s ceiling, a fifth of a 500 one.
    assert ceiling_share(4.0, 25.0, 200.0) == pytest.approx(0.5)
    assert ceiling_share(4.0, 25.0, 500.0) == pytest.approx(0.2)


@pytest.mark.parametrize("conditioning", ["film", "input"])
def test_conv_shapes_and_flops_match_torch_counter(conditioning):
    cfg = parse_config({**TINY_PARAMS, "model": {**TINY_PARAMS["model"], "conditioning": conditioning}})
    model, (x, _, idx, rgb) = _training_setup(cfg)
    shapes = conv_shapes(model, x, idx, rgb)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [s.conv for s in shapes] == convs, "every conv is recorded once, in call order"
    assert shapes[0].input_shape == (4, 3 + (8 if conditioning == "input" else 0), 32, 32)
    assert shapes[0].input_grad == (conditioning == "input"), "the image itself needs no gradient"
    assert {s.input_shape[2] for s in shapes} == {32, 16}, "two levels: convs at 32 and 16 px"
    with FlopCounterMode(display=False) as counter:
        model(x, idx, rgb).image.sum().backward()
    counted = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(k))
    assert sum(conv_flops(s) for s in shapes) == counted, "forward + backward conv FLOPs as torch counts them"


def test_conv_shapes_follow_where_each_conv_runs():
    """A model that runs its body at a smaller work size and a head at the input's size (as model.work_size with
    model.native_width does): each conv is recorded at the size it really sees, in the memory format given."""

    class WorkSize(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4 + 3, 1, 1)

        def forward(self, x):
            h = self.body(torch.nn.functional.interpolate(x, scale_factor=0.5))  # (B, 4, H/2, W/2)
            return self.head(torch.cat([torch.nn.functional.interpolate(h, size=x.shape[-2:]), x], dim=1))

    model = WorkSize()
    x = torch.randn(2, 3, 64, 48).contiguous(memory_format=torch.channels_last)
    shapes = conv_shapes(model, x)
    assert [(s.conv, s.input_shape, s.input_grad) for s in shapes] == [
        (model.body, (2, 3, 32, 24), False), (model.head, (2, 7, 64, 48), True)]
    # body: 2 x (2*4*32*24) x 3*3*3 forward, weight gradient only; head: 2 x (2*1*64*48) x 7, three passes
    assert [conv_flops(s) for s in shapes] == [2 * 2 * 4 * 32 * 24 * 27 * 2, 2 * 2 * 64 * 48 * 7 * 3]
    assert not any(h for m in model.modules() for h in m._forward_pre_hooks.values()), "hooks are removed"


def test_inference_figures_and_table():
    model = ConditionalUNet(TINY.model, ("red",), 32).eval()
    fig = inference_figures(LoadedModel(model, TINY.model, ("red",), 32, {}), TINY, repeats=3, runs=1)
    assert fig["infer_ms_p95"] >= fig["infer_ms_p50"] > 0
    assert fig["infer_ms_p95_64px"] >= fig["infer_ms_p50_64px"] > 0 and fig["infer_ms_p50_128px"] > 0
    assert set(fig["infer_images_per_s"]) == {f"b{bs}" for bs in BATCH_SIZES}
    assert min(fig["infer_images_per_s"].values()) > 0 and fig["infer_best_batch"] in BATCH_SIZES
    table = format_table({**fig, "stage_wall_s": {"train": 1.5}})
    assert "infer_ms_p50" in table and "stage_wall_s.train" in table


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_bench_command_writes_json(tmp_path, monkeypatch):
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"ingest": {"image_size": 32}, "model": {"widths": [4, 8], "embed_dim": 8},
                                  "train": {"batch_size": 2}}))
    out = tmp_path / "bench.json"
    rc = main(["bench", "--params", str(params), "--model", str(tmp_path / "none.pt"),
               "--train-metrics", str(tmp_path / "none.json"), "--out", str(out)])
    assert rc == 0
    fig = json.loads(out.read_text())
    assert {"matmul_gflops", "conv_ceiling_gflops", "infer_ms_p50", "parameters", "date", "cpu"} <= set(fig)
    assert fig["train_ceiling_ratio"] == pytest.approx(
        fig["train_gflop_per_image"] * fig["train_images_per_s"] / fig["matmul_gflops"])
    assert fig["conv_ceiling_ratio"] == pytest.approx(
        fig["conv_train_gflop_per_image"] * fig["train_images_per_s"] / fig["conv_ceiling_gflops"])
    # The convs are most of a UNet's FLOPs but not all of them (norms, pooling, the loss, AdamW).
    assert 0.5 * fig["train_gflop_per_image"] < fig["conv_train_gflop_per_image"] < fig["train_gflop_per_image"]
    # A training step runs every conv and more, so it cannot beat the convs timed alone by much (timing noise on a
    # shared machine aside): a ratio far above 1 is a wrong formula, e.g. FLOPs per batch over images per second.
    assert 0 < fig["conv_ceiling_ratio"] < 1.5, fig
