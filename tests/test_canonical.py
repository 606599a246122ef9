"""Painting in a canonical form: turning, flipping or shifting an input turns, flips or shifts its paint exactly,
whatever the net does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polycolor.config.data import IngestConfig
from polycolor.config.paint import PaintConfig
from polycolor.config.training import ModelConfig
from polycolor.data.synth import generate
from polycolor.images import images_to_tensor, painted_mask
from polycolor.nn.colour import encode_colours
from polycolor.nn.model import ConditionalUNet
from polycolor.nn.modelio import LoadedModel
from polycolor.painting.canonical import POSES, canonicalise, restore, turn
from polycolor.painting.painter import paint, paint_net
from polycolor.painting.snap import gap_px_at

ALWAYS = PaintConfig(canonical="always", snap="always")  # the canonical form at every size, the model's own too


@pytest.fixture(scope="module")
def arbitrary() -> LoadedModel:
    """An untrained net whose output bias is set so it paints about half of every image: far from equivariant."""
    torch.manual_seed(0)
    model = ConditionalUNet(ModelConfig(widths=(4, 8)), ("red",), 32).eval()
    a = generate(IngestConfig(image_size=32), 8, 1)
    idx, rgb = encode_colours(list(a.colours), model.vocab, "rgb")
    with torch.no_grad():
        model.out.bias -= model(images_to_tensor(a.inputs), idx, rgb).mask_logits.median()
    return LoadedModel(model, model.cfg, model.vocab, 32, {})


def inputs(size: int = 32) -> tuple[np.ndarray, list[str]]:
    """(N, size, size, 3) outlines: generated ones (gappy, wobbly, near the border) and a centred square, which
    is its own turn (so its canonical form is reached by all 8 poses)."""
    a = generate(IngestConfig(image_size=size, gap_fraction=0.5, wobble_fraction=0.5, wide_pose_fraction=0.5), 6, 3)
    square = np.full((size, size, 3), 255, dtype=np.uint8)
    square[8:24, 8:24] = 0
    square[10:22, 10:22] = 255
    return np.concatenate([a.inputs, square[None]]), [*a.colours, "red"]


def masks(loaded: LoadedModel, x: np.ndarray, colours: list[str]) -> np.ndarray:
    return painted_mask(paint(loaded, np.ascontiguousarray(x), colours, ALWAYS))


def test_the_net_alone_is_not_equivariant(arbitrary: LoadedModel):
    """What the canonical form is for: the same net on turned inputs paints other masks."""
    x, colours = inputs()
    base = painted_mask(paint_net(arbitrary, x, colours))
    turned = painted_mask(paint_net(arbitrary, np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2))), colours))
    assert 0.2 < base.mean() < 0.8
    assert not np.array_equal(turned, np.rot90(base, 1, axes=(1, 2)))


def test_paint_turns_and_flips_with_its_input_exactly(arbitrary: LoadedModel):
    x, colours = inputs()
    base = masks(arbitrary, x, colours)
    assert base.any(axis=(1, 2)).all()
    for pose in POSES:
        turned = np.stack([turn(i, pose) for i in x])
        assert np.array_equal(masks(arbitrary, turned, colours), np.stack([turn(m, pose) for m in base])), pose


def test_paint_shifts_with_its_input_exactly(arbitrary: LoadedModel):
    """Each sample moves by a (dy, dx) that keeps its ink and the margin painted around it inside the frame."""
    a = generate(IngestConfig(image_size=64, scale=(0.15, 0.2), gap_fraction=0.5, wobble_fraction=0.5), 6, 4)
    x, colours = a.inputs, list(a.colours)
    margin = 2 * gap_px_at(64, 64, arbitrary.image_size)
    base = masks(arbitrary, x, colours)
    rng = np.random.default_rng(0)
    moved, moves = [], []
    for image in x:
        rows, cols = np.nonzero(painted_mask(image))
        lo, hi = np.array([rows.min(), cols.min()]) - margin, np.array([rows.max(), cols.max()]) + margin
        assert (lo >= 0).all() and (hi < 64).all(), "the window fits the frame before the move"
        move = tuple(int(rng.integers(-lo[k], 64 - hi[k])) for k in range(2))
        moves.append(move)
        moved.append(np.roll(image, move, axis=(0, 1)))
    assert any(m != (0, 0) for m in moves)
    after = masks(arbitrary, np.stack(moved), colours)
    for i, move in enumerate(moves):
        assert np.array_equal(after[i], np.roll(base[i], move, axis=(0, 1))), (i, move)


def test_non_square_inputs_turn_too(arbitrary: LoadedModel):
    a = generate(IngestConfig(image_size=48), 3, 5)
    x = np.ascontiguousarray(a.inputs[:, :, 8:40])  # (3, 48, 32, 3)
    base = masks(arbitrary, x, list(a.colours))
    turned = masks(arbitrary, np.rot90(x, 1, axes=(1, 2)), list(a.colours))  # (3, 32, 48)
    assert turned.shape == (3, 32, 48) and np.array_equal(turned, np.rot90(base, 1, axes=(1, 2)))


def test_an_input_without_ink_paints_nothing(arbitrary: LoadedModel):
    white = np.full((2, 32, 32, 3), 255, dtype=np.uint8)
    assert not masks(arbitrary, white, ["red", "red"]).any()


def test_restore_carries_the_canonical_ink_back_into_place():
    x, _ = inputs()
    small = np.full((64, 48, 3), 255, dtype=np.uint8)
    small[50:58, 3:9] = 0  # a small drawing near the corner of a larger, non-square image
    for image in [*x, small]:
        c = canonicalise(image, model_size=32)
        assert np.array_equal(restore(painted_mask(c.image), c, image.shape[:2], False), painted_mask(image))
        assert np.array_equal(restore(c.image, c, image.shape[:2], 255), image)
    assert canonicalise(small, 32).image.shape == (32, 32, 3), "a small drawing goes on the model's own canvas"
    assert canonicalise(x[0], 32).image.shape == x[0].shape, "a large one on a canvas of the input's size"
    assert len(canonicalise(x[-1], 32).poses) == 8, "the centred square is its own turn 8 ways"


def test_the_tanh_heads_images_turn_with_their_input_too():
    torch.manual_seed(1)
    model = ConditionalUNet(ModelConfig(widths=(4, 8), head="tanh"), ("red",), 32).eval()
    loaded = LoadedModel(model, model.cfg, model.vocab, 32, {})
    x, colours = inputs()
    base = paint(loaded, x, colours, ALWAYS)
    assert len(np.unique(base.reshape(-1, 3), axis=0)) > 2, "a free-RGB output, not two-valued"
    for pose in POSES:
        turned = paint(loaded, np.ascontiguousarray(np.stack([turn(i, pose) for i in x])), colours, ALWAYS)
        assert np.array_equal(turned, np.stack([turn(m, pose) for m in base])), pose
