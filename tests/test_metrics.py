"""Metrics on constructed pairs whose answers are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.color import deltaE_ciede2000, rgb2lab

from polycolor.evaluation import metrics as M
from polycolor.images import painted_mask

RED = (255, 0, 0)
BLUE = (0, 0, 255)
YELLOW = (255, 255, 0)


def square(colour: tuple[int, int, int], x0: int = 10, y0: int = 10, side: int = 10, size: int = 32) -> np.ndarray:
    """(size, size, 3) uint8 white image with a filled side x side square at (x0, y0)."""
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    img[y0:y0 + side, x0:x0 + side] = colour
    return img


def test_identical_images_hit_the_caps():
    t = square(RED)
    m = M.sample_metrics(t, t.copy(), "red")
    assert m["psnr"] == M.PSNR_CAP == 100.0, "identical images must give the 100 dB cap"
    assert m["ssim"] == pytest.approx(1.0)
    assert m["mae"] == 0.0 and m["mse"] == 0.0
    assert m["iou"] == 1.0 and m["dice"] == 1.0
    assert m["bleeding"] == 0.0, "an exact prediction paints no background"
    assert m["boundary_f1"] == 1.0
    assert m["colour_correct"] == 1.0 and m["painted"] == "red" and m["requested"] == "red"
    assert m["ciede2000"] == pytest.approx(0.0, abs=1e-9)


def test_known_shift_by_hand():
    t = square(RED)  # columns 10..19
    p = square(RED, x0=12)  # columns 12..21: 80 pixels shared, 20 lost, 20 bled
    m = M.sample_metrics(t, p, "red")
    assert m["iou"] == pytest.approx(80 / 120)
    assert m["dice"] == pytest.approx(160 / 200)
    assert m["bleeding"] == pytest.approx(20 / (32 * 32 - 100))
    # 40 pixels differ by (0, 255, 255): MSE = 40 * 2 * 255^2 / (32 * 32 * 3) on the uint8 scale.
    mse_255 = 40 * 2 * 255.0**2 / (32 * 32 * 3)
    assert m["psnr"] == pytest.approx(10 * math.log10(255.0**2 / mse_255))
    assert m["mse"] == pytest.approx(mse_255 / 255.0**2)
    assert m["mae"] == pytest.approx(40 * 2 * 255.0 / (32 * 32 * 3) / 255.0)
    assert m["colour_correct"] == 1.0, "the mean colour over the true polygon stays nearest to red"
    # A 2 px shift is within the 2 px tolerance: every boundary pixel has a partner.
    tm, pm = painted_mask(t), painted_mask(p)
    assert M.boundary_f1(tm, pm, tolerance=2) == 1.0
    # Exact matching: of 36 boundary pixels each, only the 8 + 8 on the shared top and bottom rows coincide.
    assert M.boundary_f1(tm, pm, tolerance=0) == pytest.approx(16 / 36)


def test_wrong_colour_is_a_confusion():
    t, p = square(RED), square(BLUE)
    m = M.sample_metrics(t, p, "red")
    assert m["colour_correct"] == 0.0
    assert (m["requested"], m["painted"]) == ("red", "blue")
    assert m["iou"] == 1.0, "the shape is right even though the colour is not"
    expected = deltaE_ciede2000(rgb2lab(np.array([[BLUE]]) / 255.0), rgb2lab(np.array([[RED]]) / 255.0)).item()
    assert m["ciede2000"] == pytest.approx(expected)
    rows = M.score(np.stack([t, t]), np.stack([p, t]), ["red", "red"], ["square", None])
    assert list(zip(rows["requested"], rows["painted"])) == [("red", "blue"), ("red", "red")], "confusion rows"
    assert M.summarise(rows)["colour_accuracy"] == 0.5
    assert list(rows["shape"]) == ["square", "unknown"]


def test_all_white_prediction():
    t = square(YELLOW)
    p = np.full_like(t, 255)
    m = M.sample_metrics(t, p, "yellow")
    assert m["iou"] == 0.0 and m["dice"] == 0.0
    assert m["bleeding"] == 0.0
    assert m["boundary_f1"] == 0.0
    # White is a candidate, so an unpainted polygon never passes for yellow (white's nearest Ayna colour).
    assert m["painted"] == M.UNPAINTED and m["colour_correct"] == 0.0
    assert 0 < m["psnr"] < M.PSNR_CAP


def test_near_white_counts_as_background():
    t = square(RED)
    p = t.copy()
    p[~painted_mask(t)] = 250  # a free-RGB head's almost-white background
    assert M.bleeding(painted_mask(t), painted_mask(p)) == 0.0
    assert M.iou(painted_mask(t), painted_mask(p)) == 1.0


def test_hex_colours_are_other():
    assert M.colour_label("#123456") == M.OTHER
    assert M.colour_label("#FF0000") == "red", "a hex spelling of an Ayna colour keeps its name"
    t = square((0x12, 0x34, 0x56))
    m = M.sample_metrics(t, t, "#123456")
    assert (m["requested"], m["painted"], m["colour_correct"]) == ("other", "other", 1.0)
    m = M.sample_metrics(t, square(RED), "#123456")
    assert (m["painted"], m["colour_correct"]) == ("red", 0.0)


def test_empty_polygons():
    white = np.full((16, 16, 3), 255, dtype=np.uint8)
    m = M.sample_metrics(white, white, "red")
    assert m["iou"] == 1.0 and m["dice"] == 1.0 and m["boundary_f1"] == 1.0 and m["bleeding"] == 0.0
    assert math.isnan(m["colour_correct"]) and math.isnan(m["ciede2000"]) and m["painted"] is None
    rows = M.score(np.stack([white, square(RED, size=16, x0=2, y0=2)]),
                   np.stack([white, square(RED, size=16, x0=2, y0=2)]), ["red", "red"])
    summary = M.summarise(rows)
    assert summary["colour_accuracy"] == 1.0, "a sample without a polygon is left out, not counted wrong"
    assert set(summary) == set(M.SUMMARY_KEYS)


def test_summary_and_breakdowns():
    t = np.stack([square(RED), square(RED), square(BLUE)])
    p = np.stack([square(RED), square(RED, x0=12), square(RED)])
    rows = M.score(t, p, ["red", "red", "blue"], ["square", "square", "diamond"])
    s = M.summarise(rows)
    assert s["psnr_min"] == pytest.approx(rows["psnr"].min()) and s["psnr_min"] < s["psnr_mean"]
    assert s["iou"] == pytest.approx((1 + 80 / 120 + 1) / 3)
    assert s["colour_accuracy"] == pytest.approx(2 / 3)
    per_colour = M.breakdown(rows, "requested").set_index("requested")
    assert per_colour.loc["red", "n"] == 2 and per_colour.loc["blue", "colour_correct"] == 0.0
    per_shape = M.breakdown(rows, "shape").set_index("shape")
    assert per_shape.loc["square", "iou"] == pytest.approx((1 + 80 / 120) / 2)


def test_ssim_on_tiny_images():
    t = square(RED, x0=1, y0=1, side=3, size=5)
    assert M.ssim(t, t) == pytest.approx(1.0)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        M.sample_metrics(square(RED), square(RED, size=16), "red")


def test_latency_times_single_images():
    calls = []

    def predict(inputs, colours):
        calls.append(len(inputs))
        return inputs

    imgs = np.stack([square(RED)] * 7)
    ms = M.latency_ms_p50(predict, imgs, ["red"] * 7, samples=3)
    assert ms >= 0.0
    assert calls == [1, 1, 1, 1], "one warm-up call plus three timed calls, all at batch 1"


def test_training_and_evaluation_psnr_are_one_definition():
    """The trainer's val PSNR and evaluation's per-sample PSNR give the same float, bit for bit, on the same images;
    evaluation's value is the formula its docstring states (float64 MSE on uint8 values, 100 dB cap)."""
    import torch

    from polycolor.images import images_to_tensor
    from polycolor.training.trainer import psnr_batch

    rng = np.random.default_rng(0)
    target = rng.integers(0, 256, (5, 256, 256, 3), dtype=np.uint8)
    pred = target.copy()
    pred[1, 3, 4, 0] ^= 1  # one value off by one in 256x256x3: 101 dB before the cap
    pred[2:] = rng.integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    pred[4, :128] = target[4, :128]
    evaluated = [M.psnr(t, p) for t, p in zip(target, pred)]
    for e, t, p in zip(evaluated, target, pred):
        mse = float(np.mean((t.astype(np.float64) - p.astype(np.float64)) ** 2))
        assert e == (M.PSNR_CAP if mse == 0 else min(M.PSNR_CAP, 10.0 * float(np.log10(255.0**2 / mse))))
    assert evaluated[0] == evaluated[1] == M.PSNR_CAP, "identical and nearly identical images: the 100 dB cap"
    trained = psnr_batch(images_to_tensor(pred), images_to_tensor(target))
    assert trained.dtype == torch.float64 and trained.tolist() == evaluated, (trained.tolist(), evaluated)
