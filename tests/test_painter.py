"""The two painters: `net` is the network at its own size and nothing else; `painted` adds the post-processing
that PaintConfig switches on, and with every step off it is `net`."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy import ndimage

from polycolor.config.data import IngestConfig
from polycolor.config.paint import PaintConfig
from polycolor.config.training import ModelConfig
from polycolor.data.synth import generate
from polycolor.errors import PolycolorError
from polycolor.images import images_to_tensor, painted_mask, tensor_to_images
from polycolor.nn.colour import encode_colours
from polycolor.nn.model import ConditionalUNet, composite
from polycolor.nn.modelio import LoadedModel
from polycolor.painting.canonical import canonicalise
from polycolor.nn.model import to_size as to_model_size
from polycolor.painting.painter import PAINTERS, composited, net_masks, paint, paint_net, painter
from polycolor.painting.snap import ink_mask, snap_to_outline


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
    off = PaintConfig(canonical="off", snap="off", flood_fill="off")
    for size in (32, 64):
        x, colours = drawings(size)
        assert np.array_equal(paint(loaded, x, colours, off), paint_net(loaded, x, colours)), size
    x, colours = drawings(64)
    assert not np.array_equal(paint(loaded, x, colours), paint_net(loaded, x, colours)), "the defaults do something"
    x, colours = drawings(32)
    assert np.array_equal(paint(loaded, x, colours), paint_net(loaded, x, colours)), \
        "at the model's own size the default painter is the net: both steps cost quality there (docs/evaluation.md)"


def test_snap_resized_snaps_only_masks_resized_from_the_models_size(loaded: LoadedModel):
    resized = PaintConfig(canonical="off", snap="resized")
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


def test_one_run_of_the_net_paints_both_painters_to_the_same_bytes(loaded: LoadedModel):
    """evaluate scores `net` and `painted` from one run of the net (net_masks, paint's net_masks): the bytes are those
    of paint_net and paint, for a net of one size and one that paints at any size, at its size and off it, with
    every post-processing setting."""
    torch.manual_seed(1)
    native = ConditionalUNet(ModelConfig(widths=(4, 8), work_size=16, native_width=4, fill=True), ("red",), 32).eval()
    models = [loaded, LoadedModel(native, native.cfg, native.vocab, 32, {})]
    settings = [PaintConfig(), PaintConfig(canonical="always", snap="always"), PaintConfig(flood_fill="off")]
    for model in models:
        for size in (32, 64):
            x, colours = drawings(size)
            masks = net_masks(model, x, colours)
            _, rgb = encode_colours(colours, model.vocab, "rgb")
            assert np.array_equal(composited(masks, rgb), paint_net(model, x, colours)), size
            for cfg in settings:
                assert np.array_equal(paint(model, x, colours, cfg, net_masks=masks), paint(model, x, colours, cfg)), \
                    (size, cfg)


# ------------------------------------------------------------------ ink detection: JPEG noise, anti-aliasing

def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """uint8 (H, W, 3) through a JPEG file of `quality` (PIL) and back."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def outlines(size: int = 64) -> np.ndarray:
    """(8, size, size, 3) generated outlines, 1-6 px wide, some gappy or wobbly."""
    return generate(IngestConfig(image_size=size, outline_width=(1, 6), gap_fraction=0.5, wobble_fraction=0.5),
                    8, 7).inputs


def test_jpeg_noise_beside_the_line_is_not_ink():
    cfg = PaintConfig()
    for x in outlines():
        for quality in (60, 80, 95):
            assert np.array_equal(ink_mask(jpeg(x, quality), cfg.ink_threshold), ink_mask(x, cfg.ink_threshold))
    noisy = jpeg(outlines()[0], 80)
    assert (painted_mask(noisy) & ~painted_mask(outlines()[0])).any(), "the data's < 240 would read noise as ink"


def test_a_jpeg_outline_has_the_clean_ones_canonical_crop_and_snap():
    cfg, old = PaintConfig(), PaintConfig(ink_threshold=240)
    changed = 0
    for x in outlines():
        noisy = jpeg(x, 80)
        clean_c, noisy_c = canonicalise(x, 32, cfg), canonicalise(noisy, 32, cfg)
        assert noisy_c.box == clean_c.box
        assert np.array_equal(ink_mask(noisy_c.image, 128), ink_mask(clean_c.image, 128))
        changed += canonicalise(noisy, 32, old).box != clean_c.box
        filled = ndimage.binary_fill_holes(ink_mask(x, 128))  # a net that paints the inside, off by a pixel
        for net in (filled, np.roll(filled, 1, axis=0), np.roll(filled, (-1, 1), axis=(0, 1))):
            clean = snap_to_outline(net, ink_mask(x, 128), 4, False, cfg)
            assert np.array_equal(snap_to_outline(net, ink_mask(noisy, 128), 4, False, cfg), clean)
            changed += not np.array_equal(snap_to_outline(net, ink_mask(noisy, 240), 4, False, old), clean)
    assert changed > 0, "at the data's threshold (240) the noise moves crops or snapped masks"


def anti_aliased(points: list[tuple[float, float]], width: int, fill: bool, size: int = 64, k: int = 4) -> np.ndarray:
    """uint8 (size, size, 3): a closed polygon drawn `width` px wide (and filled) at k times the size, then box
    downsampled, so each edge pixel is as grey as the line covers it."""
    im = Image.new("L", (size * k, size * k), 255)
    draw = ImageDraw.Draw(im)
    pts = [(x * k, y * k) for x, y in points]
    if fill:
        draw.polygon(pts, fill=0)
    draw.line([*pts, pts[0], pts[1]], fill=0, width=width * k, joint="curve")
    grey = np.asarray(im.resize((size, size), Image.BOX))
    return np.repeat(grey[..., None], 3, axis=-1)


def test_anti_aliased_edge_pixels_go_with_the_side_that_holds_most_of_them():
    """Snapped on an anti-aliased outline, a mask is the polygon's pixels covered more than half: grey pixels outside
    the line are cleared with the background, inside ones filled. At 240 the outer grey halo is ink, painted whole."""
    cfg = PaintConfig()
    for points in ([(10.3, 12.6), (52.2, 9.1), (40.7, 50.4)], [(8.2, 30.1), (30.3, 6.4), (55.6, 30.9), (31.2, 57.7)]):
        for width in (2, 3):
            x = anti_aliased(points, width, fill=False)
            target = anti_aliased(points, width, fill=True).min(axis=-1) < 128  # (64, 64) covered more than half
            for net in (target, np.roll(target, 1, axis=0), np.roll(target, (-1, 1), axis=(0, 1))):
                assert np.array_equal(snap_to_outline(net, ink_mask(x, cfg.ink_threshold), 4, True, cfg), target)
                halo = snap_to_outline(net, ink_mask(x, 240), 4, True, cfg) & ~target
                assert halo.sum() > 20, "the data's threshold paints the outer grey halo"


def test_the_flood_fill_replaces_the_net_only_on_clean_closed_outlines_it_agrees_with():
    from polycolor.painting.floodfill import enclosed_mask, flood_fill_wins

    a = generate(IngestConfig(image_size=128), 1, 5)
    image, target = a.inputs[0], painted_mask(a.targets[0])
    assert np.array_equal(enclosed_mask(image), target), "the generator's closed outline: the flood fill is exact"
    cfg = PaintConfig()
    off_by_one = target.copy()  # a net that paints a dozen pixels beside the outline
    ring = np.argwhere(ndimage.binary_dilation(target) & ~target)[:12]
    off_by_one[ring[:, 0], ring[:, 1]] = True
    assert np.array_equal(flood_fill_wins(image, off_by_one, cfg), target), "agrees: the flood fill's mask"
    assert flood_fill_wins(image, np.zeros_like(target), cfg) is None, "the net disagrees: the net's mask stays"
    assert flood_fill_wins(image, off_by_one, dataclasses.replace(cfg, flood_fill="off")) is None
    noisy = image.copy()
    noisy[::3, ::3] = np.minimum(noisy[::3, ::3], 250)  # a JPEG-like haze of near-white pixels
    assert flood_fill_wins(noisy, off_by_one, cfg) is None, "not clean: the net's mask stays"
    gappy = image.copy()
    ink_rows = np.flatnonzero(painted_mask(image).any(axis=1))
    gappy[ink_rows[0]:ink_rows[-1] + 1, :] = 255  # no outline left to enclose anything
    assert flood_fill_wins(gappy, off_by_one, cfg) is None, "open: the net's mask stays"


def test_the_paint_batch_size_has_one_default():
    """evaluate.batch_size and the painter's own batch_size default are config.paint.BATCH_SIZE."""
    import inspect

    from polycolor.config import paint as paint_config
    from polycolor.config.evaluation import EvaluateConfig
    from polycolor.painting import painter as painter_module

    defaults = {f.__name__: inspect.signature(f).parameters["batch_size"].default
                for f in (painter_module.paint, painter_module.paint_net, painter_module.painter)}
    assert set(defaults.values()) == {paint_config.BATCH_SIZE} == {EvaluateConfig().batch_size}, defaults
