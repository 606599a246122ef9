"""The two painters: `net` is the network at its own size and nothing else; `painted` adds the post-processing
that PaintConfig switches on, and with every step off it is `net`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from polycolor.config import IngestConfig, ModelConfig, PaintConfig
from polycolor.data.synth import generate
from polycolor.errors import PolycolorError
from polycolor.images import images_to_tensor, tensor_to_images
from polycolor.nn.colour import encode_colours
from polycolor.nn.model import ConditionalUNet, composite
from polycolor.nn.modelio import LoadedModel
from polycolor.painting.painter import PAINTERS, paint, paint_net, painter, to_model_size


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    """An untrained net biased to paint about half of every image, so every step has something to change."""
    torch.manual_seed(0)
    model = ConditionalUNet(ModelConfig(widths=(4, 8)), ("red",), 32).eval()
    x, colours = drawings(32)
    idx, rgb = encode_colours(colours, model.vocab, "rgb")
    with torch.no_grad():
        model.out.bias -= model(images_to_tensor(x), idx, rgb).mask_logits.median()
    return LoadedModel(model, model.cfg, model.vocab, 32, {})


def drawings(size: int, n: int = 4, seed: int = 3) -> tuple[np.ndarray, list[str]]:
    a = generate(IngestConfig(image_size=size, gap_fraction=0.5, wobble_fraction=0.5), n, seed)
    return a.inputs, list(a.colours)


@torch.no_grad()
def test_paint_net_is_the_network_resized_back_and_thresholded(loaded: LoadedModel):
    """Computed here step by step: min-pool to the model's size, logits resized back bilinearly, > 0, composite."""
    x, colours = drawings(64)
    idx, rgb = encode_colours(colours, loaded.vocab, "rgb")
    small = to_model_size(images_to_tensor(x), 32).contiguous(memory_format=torch.channels_last)  # (4, 3, 32, 32)
    logits = F.interpolate(loaded.model(small, idx, rgb).mask_logits, size=(64, 64), mode="bilinear",
                           align_corners=False)  # (4, 1, 64, 64)
    assert 0.2 < (logits > 0).float().mean() < 0.8
    expected = tensor_to_images(composite((logits > 0).float(), rgb))
    assert np.array_equal(paint_net(loaded, x, colours, batch_size=len(x)), expected)


def test_paint_with_every_step_off_is_paint_net(loaded: LoadedModel):
    off = PaintConfig(canonical=False, snap="off")
    for size in (32, 64):
        x, colours = drawings(size)
        assert np.array_equal(paint(loaded, x, colours, off), paint_net(loaded, x, colours)), size
    x, colours = drawings(64)
    assert not np.array_equal(paint(loaded, x, colours), paint_net(loaded, x, colours)), "the defaults do something"


def test_snap_resized_snaps_only_masks_resized_from_the_models_size(loaded: LoadedModel):
    resized = PaintConfig(canonical=False, snap="resized")
    always = dataclasses.replace(resized, snap="always")
    x, colours = drawings(32)
    assert np.array_equal(paint(loaded, x, colours, resized), paint_net(loaded, x, colours)), "at the model's size"
    x, colours = drawings(64)
    assert np.array_equal(paint(loaded, x, colours, resized), paint(loaded, x, colours, always)), "at 64 px"
    assert not np.array_equal(paint(loaded, x, colours, resized), paint_net(loaded, x, colours)), "it snaps there"


def test_painter_by_name(loaded: LoadedModel):
    x, colours = drawings(32)
    cfg = PaintConfig()
    assert PAINTERS == ("net", "painted")
    assert np.array_equal(painter("net", loaded, cfg)(x, colours), paint_net(loaded, x, colours))
    assert np.array_equal(painter("painted", loaded, cfg)(x, colours), paint(loaded, x, colours, cfg))
    with pytest.raises(PolycolorError, match="painter must be one of net, painted, got 'crf'"):
        painter("crf", loaded, cfg)
