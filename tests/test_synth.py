"""The synthetic generator: it reproduces the real Ayna images, passes the shared format checker, and is
deterministic."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from polycolor.colours import AYNA_COLOURS, SHAPES
from polycolor.config import IngestConfig
from polycolor.data import ayna, synth


@pytest.mark.parametrize("shape", SHAPES)
def test_canonical_pose_reproduces_the_real_images(ayna_dir, shape):
    """At 128 px, centre (64, 64), radius 40, rotation 0 and a 2 px outline the generator draws the real input and
    output pixel for pixel: outline width, fill over the outline, star inner radius, diamond aspect, sizes."""
    split = "training"
    samples = [s for s in ayna.read_split(ayna_dir / split) if s.shape == shape]
    assert samples, shape
    real_in = ayna.load_image(samples[0].input_path)
    for s in samples:
        spec = synth.PolygonSpec(shape, s.colour, s.rgb, (64.0, 64.0), 40.0, 0.0, 2)
        inp, tgt = synth.render(spec, 128)
        assert np.array_equal(inp, real_in), f"{shape} input differs in {(inp != real_in).any(-1).sum()} px"
        real_out = ayna.load_image(s.output_path)
        assert np.array_equal(tgt, real_out), f"{s.output_path.name} differs in {(tgt != real_out).any(-1).sum()} px"


@pytest.mark.parametrize("size, widths", [(32, (1, 2)), (64, (2, 3)), (128, (2, 3))])
def test_synthetic_pairs_pass_the_shared_checker(size, widths):
    a = synth.generate(IngestConfig(image_size=size, outline_width=widths, random_colour_fraction=0.5), 48, size)
    assert a.inputs.shape == a.targets.shape == (48, size, size, 3)
    assert a.inputs.dtype == np.uint8 and a.rgb.shape == (48, 3)
    for i in range(len(a)):
        assert ayna.format_problems(a.inputs[i], a.targets[i]) == [], f"sample {i} ({a.shapes[i]})"
        filled = (a.targets[i] != 255).any(-1)
        assert tuple(a.targets[i][filled][0]) == tuple(a.rgb[i])
        border = np.concatenate([filled[0], filled[-1], filled[:, 0], filled[:, -1]])
        assert not border.any(), f"sample {i} touches the border"


def test_same_seed_same_arrays_other_seed_other_arrays():
    cfg = IngestConfig(image_size=32, random_colour_fraction=0.5)
    a, b = synth.generate(cfg, 16, 7), synth.generate(cfg, 16, 7)
    c = synth.generate(cfg, 16, 8)
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.targets, b.targets)
    assert a.colours == b.colours and a.shapes == b.shapes
    assert not np.array_equal(a.targets, c.targets)


def test_shapes_and_named_colours_are_balanced():
    a = synth.generate(IngestConfig(image_size=32), 80, 1)
    assert sorted(set(a.shapes)) == sorted(SHAPES)
    assert all(a.shapes.count(s) == 10 for s in SHAPES)
    assert all(a.colours.count(c) == 10 for c in AYNA_COLOURS)
    assert all(tuple(v) == AYNA_COLOURS[c] for c, v in zip(a.colours, a.rgb.tolist()))


def test_shape_and_colour_lists_are_configurable():
    a = synth.generate(IngestConfig(image_size=32, shapes=("star",), colours=("Teal", "#102030")), 6, 0)
    assert set(a.shapes) == {"star"}
    assert set(a.colours) == {"teal", "#102030"}


def test_random_colours_are_hex_and_never_near_white():
    a = synth.generate(IngestConfig(image_size=16, random_colour_fraction=1.0), 400, 0)
    assert all(c.startswith("#") and len(c) == 7 for c in a.colours)
    assert (a.rgb.min(axis=1) <= 191).all(), "some channel at least 64 below white"
    assert len(set(a.colours)) > 350
    b = synth.generate(IngestConfig(image_size=16, random_colour_fraction=0.25), 400, 0)
    share = sum(c.startswith("#") for c in b.colours) / 400
    assert 0.18 < share < 0.32


def test_pose_follows_the_ranges():
    specs = synth.sample_specs(IngestConfig(image_size=128, scale=(0.3, 0.35), rotation=(10.0, 20.0), offset=0.05,
                                            outline_width=(3, 3)), 300, 0)
    radii = np.array([s.radius for s in specs]) / 128
    assert radii.min() >= 0.3 and radii.max() <= 0.35
    assert all(10.0 <= s.angle <= 20.0 and s.width == 3 for s in specs)
    centres = np.array([s.centre for s in specs])
    assert np.abs(centres - 64).max() <= 0.05 * 128 + 1e-9
    assert centres.std(axis=0).min() > 2, "centres vary"


def test_too_large_shapes_are_kept_inside_the_frame():
    a = synth.generate(IngestConfig(image_size=32, scale=(0.5, 0.5), offset=0.4), 24, 0)
    for i in range(len(a)):
        filled = (a.targets[i] != 255).any(-1)
        assert not (filled[0].any() or filled[-1].any() or filled[:, 0].any() or filled[:, -1].any())
        assert ayna.format_problems(a.inputs[i], a.targets[i]) == []


def test_a_generator_rng_and_its_seed_give_the_same_pairs():
    cfg = IngestConfig(image_size=32, scale=(0.15, 0.48), offset=0.2)
    a = synth.generate(cfg, 8, np.random.default_rng(3))
    b = synth.generate(cfg, 8, 3)
    assert np.array_equal(a.targets, b.targets) and a.colours == b.colours


def test_file_names():
    spec = synth.PolygonSpec("star", "#1a2b3c", (26, 43, 60), (16.0, 16.0), 8.0, 0.0, 2)
    assert synth.file_names(12, spec) == ("00012_star.png", "00012_1a2b3c_star.png")
    assert synth.file_names(3, dataclasses.replace(spec, colour="red")) == ("00003_star.png", "00003_red_star.png")
