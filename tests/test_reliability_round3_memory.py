"""Issue 28, memory bounded by what the pixel limit promises: painting a thin image (1 x 100000 px, 0.6% of
serving.max_pixels) allocates in proportion to its width x height, not to the square of its longest side.

Before, canonical.restore padded the canonical paint by its margin (two gaps, scaled with the longest side) on every
side and turned the whole window back: 50001 x 150000 int32 (27.9 GiB) for a 1 x 100000 black PNG with a 32 px
model, 12501 x 112500 (5.2 GiB) with the default model. Now it cuts out only the part of the window inside the
input's frame."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from polycolor.config.paint import PaintConfig
from polycolor.config.training import ModelConfig
from polycolor.images import painted_mask
from polycolor.nn.model import ConditionalUNet
from polycolor.nn.modelio import LoadedModel
from polycolor.painting.canonical import POSES, Canonical, canonicalise, restore, turn, unturn
from polycolor.painting.painter import paint

ALWAYS = PaintConfig(canonical="always", snap="always")


def whole_window_restore(painted: np.ndarray, c: Canonical, shape: tuple[int, int], blank: int) -> np.ndarray:
    """restore as it was before issue 28 (the whole window, margin on every side, then clipped to the frame): the
    reference the bounded one must equal, on inputs small enough for it."""
    out = np.full(shape + painted.shape[2:], blank, dtype=painted.dtype)
    top, left, height, width = c.box
    if height == 0:
        return out
    m = c.margin
    h, w = (width, height) if c.poses[0][0] % 2 else (height, width)
    padded = np.pad(painted, ((m, m), (m, m)) + ((0, 0),) * (painted.ndim - 2), constant_values=blank)
    window = padded[c.at[0]:c.at[0] + h + 2 * m, c.at[1]:c.at[1] + w + 2 * m]
    back = sum(unturn(window, p).astype(np.int32) for p in c.poses)
    n = len(c.poses)
    back = 2 * back >= n if painted.dtype == bool else ((back + n // 2) // n).astype(painted.dtype)
    r0, c0 = top - m, left - m
    rs, cs = slice(max(r0, 0), min(r0 + height + 2 * m, shape[0])), slice(max(c0, 0), min(c0 + width + 2 * m, shape[1]))
    out[rs, cs] = back[rs.start - r0:rs.stop - r0, cs.start - c0:cs.stop - c0]
    return out


def drawings() -> list[np.ndarray]:
    """Inputs whose window reaches past the frame on each side in turn: random ink near edges and corners, in
    square and non-square frames, thin strips, and symmetric crops (reached by several poses)."""
    rng = np.random.default_rng(28)
    out = []
    for h, w in ((32, 32), (40, 24), (24, 56), (1, 200), (3, 200), (200, 2), (64, 64)):
        for _ in range(6):
            image = np.full((h, w, 3), 255, dtype=np.uint8)
            r0, c0 = int(rng.integers(0, h)), int(rng.integers(0, w))
            r1, c1 = int(rng.integers(r0, h)) + 1, int(rng.integers(c0, w)) + 1
            image[r0:r1, c0:c1] = np.where(rng.random((r1 - r0, c1 - c0, 1)) < 0.5, 0, 255)
            image[r0, c0] = 0  # at least one ink pixel
            out.append(image)
    square = np.full((48, 64, 3), 255, dtype=np.uint8)
    square[2:14, 50:62] = 0
    square[4:12, 52:60] = 255  # a hollow square near a corner: its own turn 8 ways
    bar = np.full((40, 40, 3), 255, dtype=np.uint8)
    bar[37:40, 5:35] = 0  # symmetric under a half turn and flips, at the bottom edge
    return [*out, square, bar, np.zeros((1, 100, 3), dtype=np.uint8)]


@pytest.mark.parametrize("model_size", [8, 32])
def test_restore_equals_the_whole_window_it_replaces(model_size: int):
    rng = np.random.default_rng(1)
    for image in drawings():
        c = canonicalise(image, model_size)
        masks = rng.random(c.image.shape[:2]) < 0.5  # any paint, not only the ink
        colours = rng.integers(0, 256, c.image.shape, dtype=np.uint8)
        assert np.array_equal(restore(masks, c, image.shape[:2], False),
                              whole_window_restore(masks, c, image.shape[:2], False)), (image.shape, c.box, c.poses)
        assert np.array_equal(restore(colours, c, image.shape[:2], 255),
                              whole_window_restore(colours, c, image.shape[:2], 255)), (image.shape, c.box, c.poses)
    assert any(len(canonicalise(i, 32).poses) > 1 for i in drawings()), "symmetric crops are covered"


def thin_images() -> dict[str, np.ndarray]:
    """The issue's two thin images: a 1 x 100000 px black line and a 3 x 100000 px rectangle outline."""
    black = np.zeros((1, 100_000, 3), dtype=np.uint8)
    outline = np.zeros((3, 100_000, 3), dtype=np.uint8)
    outline[1, 1:-1] = 255
    return {"black": black, "outline": outline}


@pytest.mark.parametrize("name", ["black", "outline"])
def test_restoring_a_thin_image_allocates_in_proportion_to_its_pixels(name: str):
    image = thin_images()[name]
    c = canonicalise(image, 32)
    assert c.margin > 10_000, "the margin scales with the longest side: the case of the issue"
    mask = painted_mask(c.image)
    tracemalloc.start()
    try:
        back = restore(mask, c, image.shape[:2], False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    pixels = image.shape[0] * image.shape[1]
    assert peak <= 16 * pixels, f"restore of a {image.shape[0]} x {image.shape[1]} px input peaked at {peak} bytes"
    assert np.array_equal(back, painted_mask(image))


@pytest.mark.parametrize("name", ["black", "outline"])
@pytest.mark.parametrize("native_width", [0, 4])
def test_painting_a_thin_image_allocates_in_proportion_to_its_pixels(name: str, native_width: int):
    """The whole painter (canonical form, snapping, flood fill), a 32 px net and one that paints at the input's
    size: numpy's peak (tracemalloc) stays within 300 bytes per pixel, 90 MB for the outline's 300000 px."""
    torch.manual_seed(0)
    model = ConditionalUNet(ModelConfig(widths=(4, 8), native_width=native_width), ("red",), 32).eval()
    loaded = LoadedModel(model, model.cfg, model.vocab, 32, {})
    image = thin_images()[name]
    tracemalloc.start()
    try:
        out = paint(loaded, image[None], ["red"], ALWAYS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    pixels = image.shape[0] * image.shape[1]
    assert out.shape == (1, *image.shape)
    assert peak <= 300 * pixels, f"painting a {image.shape[0]} x {image.shape[1]} px input peaked at {peak} bytes"


def test_turned_margins_follow_the_crop():
    """A strip at the top edge, turned every way: restore puts the ink back where it was."""
    image = np.full((20, 30, 3), 255, dtype=np.uint8)
    image[0:2, 3:20] = 0
    for pose in POSES:
        turned = np.ascontiguousarray(turn(image, pose))
        c = canonicalise(turned, 8)
        assert np.array_equal(restore(painted_mask(c.image), c, turned.shape[:2], False), painted_mask(turned))
