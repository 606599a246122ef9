"""Painting at any size: the min-pool shrink keeps thin outlines, and snapping makes a resized mask exact."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from polycolor.config.data import IngestConfig
from polycolor.config.paint import PaintConfig
from polycolor.config.training import ModelConfig
from polycolor.data.synth import generate
from polycolor.images import images_to_tensor, painted_mask
from polycolor.nn.model import ConditionalUNet
from polycolor.nn.modelio import LoadedModel
from polycolor.nn.model import to_size as to_model_size
from polycolor.painting.painter import paint
from polycolor.painting.snap import gap_px_at, ink_mask, snap_to_outline


def square(size: int, lo: int, hi: int, width: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(ink, filled) (size, size) bool of an axis-aligned square outline from lo to hi inclusive."""
    filled = np.zeros((size, size), dtype=bool)
    filled[lo:hi + 1, lo:hi + 1] = True
    inner = np.zeros_like(filled)
    inner[lo + width:hi + 1 - width, lo + width:hi + 1 - width] = True
    return filled & ~inner, filled


def test_snapping_makes_an_offset_mask_exact():
    ink, filled = square(64, 10, 50, width=2)
    coarse = np.zeros_like(filled)
    coarse[12:53, 9:49] = True  # the net's mask, off by up to 2 px on every side
    assert np.array_equal(snap_to_outline(coarse, ink, resized=True), filled)


def test_snapping_clears_stray_paint_and_keeps_undecided_regions():
    ink, filled = square(64, 10, 50)
    mask = filled.copy()
    mask[55:60, 55:60] = True  # a stray blob in the background
    assert np.array_equal(snap_to_outline(mask, ink), filled)
    gap = ink.copy()
    gap[10, 20:24] = False  # a gap joins inside and outside: the net's pixels stand
    assert np.array_equal(snap_to_outline(filled, gap), filled)


def test_shrinking_keeps_a_one_pixel_outline_unbroken():
    ink, _ = square(256, 41, 201)
    img = np.where(ink[..., None], 0, 255).astype(np.uint8)[None].repeat(3, axis=-1)  # (1, 256, 256, 3)
    small = to_model_size(images_to_tensor(img), 128)  # (1, 3, 128, 128)
    dark = (small[0] < 0).all(dim=0).numpy()
    ring, _ = square(128, 20, 100)
    assert np.array_equal(dark, ring), "every 2x2 window holding ink is ink"
    assert to_model_size(images_to_tensor(img[:, :64, :64]), 128).shape == (1, 3, 128, 128)


def test_paint_keeps_any_size_and_is_two_valued():
    torch.manual_seed(0)
    model = ConditionalUNet(ModelConfig(widths=(4, 8)), ("red",), 32).eval()
    loaded = LoadedModel(model, model.cfg, model.vocab, 32, {})
    for size in (24, 32, 64):
        a = generate(IngestConfig(image_size=size), 3, size)
        out = paint(loaded, a.inputs, a.colours, PaintConfig(canonical="always", snap="always"))
        assert out.shape == a.inputs.shape
        values = {tuple(v) for v in out.reshape(-1, 3).tolist()}
        assert values <= {(255, 255, 255), *(tuple(map(int, c)) for c in a.rgb)}


def test_across_a_gap_only_pixels_near_the_outline_keep_the_nets_value():
    ink, filled = square(64, 10, 50, width=2)
    gappy = ink.copy()
    gappy[10:12, 28:33] = False  # a 5 px gap in the top edge joins inside and outside
    coarse = np.zeros_like(filled)
    coarse[11:52, 9:50] = True  # off by a pixel on every side, and so reaching out through the gap
    out = snap_to_outline(coarse, gappy, gap_px=4)
    wrong = out != filled
    assert wrong[20:45, 20:45].sum() == 0 and wrong[55:, :].sum() == 0, "far from the outline: snapped"
    near = ndimage.binary_dilation(gappy, structure=np.ones((9, 9), dtype=bool))
    assert np.array_equal(out[near & ~gappy], coarse[near & ~gappy]), "near the outline: the net's pixels"


def test_a_resized_mask_keeps_the_nets_stroke_across_a_gap():
    """Near the outline a resized mask takes the nearest part's value, which cuts the stroke across a gap: its
    outer half lies nearer the outside. Where a closing of the outline by a gap_px disk bridges the gap, the
    net's paint stands (all but the stroke's outermost row, which the disk's rim just misses)."""
    ink, filled = square(64, 10, 50, width=3)
    gappy = ink.copy()
    gappy[10:13, 28:32] = False  # a 4 px gap in the top edge
    for net in (filled, filled | (np.arange(64)[:, None] < 10) & (np.abs(np.arange(64) - 30) < 3)):
        out = snap_to_outline(net, gappy, gap_px=4, resized=True)  # the second net also reaches out of the gap
        assert np.argwhere(out != filled).tolist() == [[10, 28], [10, 29], [10, 30], [10, 31]]


def test_a_small_interior_joined_to_the_background_through_a_gap_keeps_the_nets_paint():
    """Its interior is all within gap_px of the outline (no part of its own) and a tiny share of the background it
    joins, so the region would be cleared whole; the net's blob there is bordered by outline and stands."""
    ink, filled = square(64, 20, 31, width=2)  # an 8 x 8 interior
    gappy = ink.copy()
    gappy[20:22, 24:27] = False  # a 3 px gap in the top edge
    out = snap_to_outline(filled, gappy, gap_px=4)
    assert out[22:30, 22:30].all(), "the interior stays painted"
    assert not out[:18].any() and not out[34:].any(), "nothing away from the square"
    stray = np.zeros_like(filled)
    stray[40:42, 40:42] = True  # 4 px of stray paint in the open, and a pixel beside the outline
    stray[19, 25] = True
    assert not snap_to_outline(stray | filled, gappy, gap_px=4)[36:].any()


def test_snapping_makes_masks_resized_to_256_and_512_px_exact():
    """The case snapping is for: the net paints at 128 px, and its mask resized bilinearly to 256 or 512 px is off
    along every edge; snapped to the input's own outline it is the polygon, pixel for pixel."""
    for size, width in ((256, (2, 4)), (512, (4, 8))):
        a = generate(IngestConfig(image_size=size, outline_width=width), 4, 11)
        target = painted_mask(a.targets)  # (4, size, size)
        coverage = F.adaptive_avg_pool2d(torch.from_numpy(target[:, None].astype(np.float32)), 128)  # at 128 px
        resized = F.interpolate(coverage - 0.5, size=(size, size), mode="bilinear", align_corners=False)[:, 0] > 0
        for i, mask in enumerate(resized.numpy()):
            assert (mask != target[i]).any(), "resizing alone is off along the edges"
            ink = ink_mask(a.inputs[i], PaintConfig().ink_threshold)
            assert np.array_equal(snap_to_outline(mask, ink, gap_px_at(size, size, 128), resized=True), target[i])
