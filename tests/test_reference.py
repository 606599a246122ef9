"""The flood-fill reference: exact on constructed outlines, on synthetic pairs and on the real Ayna validation data."""

from __future__ import annotations

import numpy as np
import pytest

from polycolor.config.data import IngestConfig
from polycolor.data.ayna import load_split
from polycolor.data.synth import generate
from polycolor.errors import PolycolorError
from polycolor.evaluation import metrics as M
from polycolor.evaluation.reference import enclosed_mask, reference_fill
from polycolor.images import painted_mask


def outline_square(size: int = 24, x0: int = 5, side: int = 12, gap: bool = False) -> np.ndarray:
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    img[x0:x0 + side, x0:x0 + side] = 0
    img[x0 + 2:x0 + side - 2, x0 + 2:x0 + side - 2] = 255  # a 2 px outline
    if gap:
        img[x0 + side // 2, x0:x0 + 2] = 255  # a hole through the left side
    return img


def test_fills_outline_and_inside():
    out = reference_fill(outline_square()[None], ["blue"])[0]
    expected = np.full_like(out, 255)
    expected[5:17, 5:17] = (0, 0, 255)
    np.testing.assert_array_equal(out, expected)


def test_open_outline_paints_only_the_outline():
    img = outline_square(gap=True)
    mask = enclosed_mask(img)
    assert np.array_equal(mask, painted_mask(img)), "through the gap the inside is background: only the outline"


def test_diagonal_gap_does_not_leak():
    img = np.full((9, 9, 3), 255, dtype=np.uint8)
    for i in range(9):  # a 1 px diagonal line from corner to corner: 4-connected white cannot cross it
        img[i, i] = 0
    img[0, 1:] = 0  # closing the upper triangle along the top row
    img[:, 8] = 0  # ... and the right column
    mask = enclosed_mask(img)
    assert mask[1, 4] and mask[3, 6], "the upper triangle's inside is enclosed"
    assert not mask[6, 2], "the lower triangle touches the border"


def test_bad_input_is_an_error():
    with pytest.raises(PolycolorError, match="images but"):
        reference_fill(outline_square()[None], ["red", "blue"])
    with pytest.raises(PolycolorError, match="shape"):
        reference_fill(outline_square(), ["red"])


def test_exact_on_synthetic_pairs():
    arrays = generate(IngestConfig(image_size=32, scale=(0.15, 0.48), offset=0.2), 16, 3)
    preds = reference_fill(arrays.inputs, arrays.colours)
    np.testing.assert_array_equal(preds, arrays.targets)


def test_scores_perfectly_on_real_ayna_validation(ayna_val):
    arrays = load_split(ayna_val, None)
    rows = M.score(arrays.targets, reference_fill(arrays.inputs, arrays.colours), arrays.colours, arrays.shapes)
    s = M.summarise(rows)
    assert s["psnr_mean"] == s["psnr_min"] == M.PSNR_CAP
    assert s["iou"] == s["dice"] == s["boundary_f1"] == s["colour_accuracy"] == 1.0
    assert s["bleeding"] == 0.0 and s["mae"] == 0.0 and s["ciede2000"] == pytest.approx(0.0, abs=1e-9)
