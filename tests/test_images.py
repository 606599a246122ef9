"""The image conventions: one painted-pixel rule on both scales, and exact uint8 <-> [-1, 1] conversions."""

from __future__ import annotations

import numpy as np
import torch
from conftest import TINY

from polycolor.data.synth import generate
from polycolor.images import (
    WHITE_MIN,
    images_to_tensor,
    painted_mask,
    tensor_to_images,
    to_signed,
    to_uint8,
)
from polycolor.nn.colour import paintable

EVERY_VALUE = np.arange(256, dtype=np.uint8)


def test_uint8_round_trips_through_the_signed_scale():
    u = torch.from_numpy(EVERY_VALUE)
    assert to_signed(u)[0].item() == -1.0 and to_signed(u)[255].item() == 1.0, "black is -1, white exactly 1"
    assert torch.equal(to_uint8(to_signed(u)), u)
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    t = images_to_tensor(images)
    assert t.shape == (2, 3, 5, 7) and t.dtype == torch.float32
    np.testing.assert_array_equal(tensor_to_images(t), images)
    assert to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255], "out-of-range values are clamped"


def test_painted_is_one_rule_on_both_scales():
    # Every uint8 value in each channel position, as a (256, 1, 3) image per channel.
    for c in range(3):
        img = np.full((256, 1, 3), 255, dtype=np.uint8)
        img[:, 0, c] = EVERY_VALUE
        expected = EVERY_VALUE < WHITE_MIN  # (256,)
        np.testing.assert_array_equal(painted_mask(img)[:, 0], expected)
        signed = images_to_tensor(img[None])  # (1, 3, 256, 1) in [-1, 1]
        np.testing.assert_array_equal(painted_mask(signed, channel_axis=1)[0, :, 0].numpy(), expected)
    assert painted_mask(np.array([[239, 255, 255]], np.uint8))[0] and not painted_mask(np.array([[240] * 3]))[0]


def test_on_the_data_the_old_thresholds_agree_with_the_rule():
    """Targets and inputs are two-valued, so `!= 255` (augment, ayna) and `< 0.999` (the loss) gave these masks."""
    a = generate(TINY, 12, 0)
    for images in (a.inputs, a.targets):
        np.testing.assert_array_equal(painted_mask(images), (images != 255).any(-1))
        signed = images_to_tensor(images)
        assert torch.equal(painted_mask(signed, channel_axis=1), (signed < 0.999).any(1))


def test_paintable_keeps_vocabulary_colours_for_the_embedding_only():
    colours = ["red", "Blue ", "#123456", "green"]
    assert paintable(colours, ("blue", "red"), "embedding").tolist() == [0, 1], "canonical names match"
    assert paintable(colours, ("blue", "red"), "rgb").tolist() == [0, 1, 2, 3]
    assert paintable(["green"], ("red",), "embedding").dtype.kind == "i"


def test_tile_grid_is_the_trainers_and_the_augment_stages_grid():
    """images.tile_grid lays out the trainer's per-epoch grid (gap 0: input | target | prediction per row, the bytes
    the torch concatenation gave) and the augment stage's (grey gaps of 4 px)."""
    import torch

    from polycolor.images import tensor_to_images, tile_grid, to_uint8

    torch.manual_seed(0)
    x, y, p = (torch.rand(3, 3, 8, 6) * 2 - 1 for _ in range(3))  # (rows, 3, H, W) signed
    img = to_uint8(torch.cat([x, y, p], dim=3))  # the trainer's former layout: (r, 3, H, 3W)
    before = img.permute(0, 2, 3, 1).reshape(-1, img.shape[3], 3).numpy()
    after = tile_grid(list(zip(*(tensor_to_images(t) for t in (x, y, p)))), gap=0)
    assert after.shape == (3 * 8, 3 * 6, 3) and np.array_equal(after, before)
    tiles = [[np.zeros((2, 2, 3), np.uint8)] * 2, [np.full((2, 2, 3), 7, np.uint8)]]
    grid = tile_grid(tiles)
    assert grid.shape == (2 * 6 + 4, 2 * 6 + 4, 3) and grid[0, 0, 0] == 160 and grid[4, 4, 0] == 0
    assert (grid[10:12, 4:6] == 7).all() and (grid[10:12, 10:12] == 160).all(), "a short row leaves grey"
