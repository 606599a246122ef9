"""The synthetic generator: it reproduces the real Ayna images, passes the shared format checker, and is
deterministic."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import format_problems

from polycolor.colours import AYNA_COLOURS, SHAPES
from polycolor.config.data import IngestConfig
from polycolor.data import ayna, synth
from polycolor.images import painted_mask


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
        assert format_problems(a.inputs[i], a.targets[i]) == [], f"sample {i} ({a.shapes[i]})"
        filled = painted_mask(a.targets[i])
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
        filled = painted_mask(a.targets[i])
        assert not (filled[0].any() or filled[-1].any() or filled[:, 0].any() or filled[:, -1].any())
        assert format_problems(a.inputs[i], a.targets[i]) == []


def test_a_generator_rng_and_its_seed_give_the_same_pairs():
    cfg = IngestConfig(image_size=32, scale=(0.15, 0.48), offset=0.2)
    a = synth.generate(cfg, 8, np.random.default_rng(3))
    b = synth.generate(cfg, 8, 3)
    assert np.array_equal(a.targets, b.targets) and a.colours == b.colours


def test_file_names():
    spec = synth.PolygonSpec("star", "#1a2b3c", (26, 43, 60), (16.0, 16.0), 8.0, 0.0, 2)
    assert synth.file_names(12, spec) == ("00012_star.png", "00012_1a2b3c_star.png")
    assert synth.file_names(3, dataclasses.replace(spec, colour="red")) == ("00003_star.png", "00003_red_star.png")


# --- variation beyond the Ayna look ----------------------------------------------------------------------------------

VARIED = IngestConfig(image_size=64, outline_width=(1, 3), random_colour_fraction=0.3, gap_fraction=0.4,
                      wobble_fraction=0.4, novel_shape_fraction=0.4, wide_pose_fraction=0.4)


def test_variation_shares_leave_the_other_draws_alone():
    """Turning the shares on changes no colour and no Ayna-shape sample's pose draws: they are drawn after all else."""
    plain = synth.sample_specs(dataclasses.replace(VARIED, gap_fraction=0.0, wobble_fraction=0.0,
                                                   novel_shape_fraction=0.0, wide_pose_fraction=0.0), 40, 3)
    varied = synth.sample_specs(VARIED, 40, 3)
    assert [s.colour for s in plain] == [s.colour for s in varied]
    assert all(not s.gaps and s.wobble == 0 and s.unit == () for s in plain)
    same = [(p, v) for p, v in zip(plain, varied) if v.unit == () and v.wobble == 0 and p.radius == v.radius]
    assert same and all(p.shape == v.shape and p.angle == v.angle and p.width == v.width for p, v in same)


def test_varied_pairs_are_deterministic_framed_and_pass_the_checker():
    a, b = synth.generate(VARIED, 48, 11), synth.generate(VARIED, 48, 11)
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.targets, b.targets) and a.shapes == b.shapes
    for i in range(len(a)):
        assert format_problems(a.inputs[i], a.targets[i]) == [], f"sample {i} ({a.shapes[i]})"
        filled = (a.targets[i] != 255).any(-1)
        assert not np.concatenate([filled[0], filled[-1], filled[:, 0], filled[:, -1]]).any(), f"sample {i}"


def test_a_gap_removes_outline_pixels_and_leaves_the_target_closed():
    cfg = IngestConfig(image_size=64, gap_fraction=1.0, gap_count=(1, 3), gap_length=(1, 6))
    for spec in synth.sample_specs(cfg, 24, 5):
        assert 1 <= len(spec.gaps) <= 3 and all(1 <= length <= 6 for _, length in spec.gaps)
        inp, tgt = synth.render(spec, 64)
        closed_inp, closed_tgt = synth.render(dataclasses.replace(spec, gaps=()), 64)
        assert np.array_equal(tgt, closed_tgt), "the target is the polygon as if closed"
        removed = (inp != closed_inp).any(-1)
        assert removed.any(), f"{spec.shape}: the gaps removed nothing"
        assert (closed_inp[removed] == 0).all() and (inp[removed] == 255).all(), "gaps only turn outline white"


def test_gaps_make_the_flood_fill_leak():
    from polycolor.evaluation.reference import reference_fill

    a = synth.generate(IngestConfig(image_size=64, gap_fraction=1.0, gap_length=(3, 6)), 16, 2)
    leaked = (reference_fill(a.inputs, a.colours) != a.targets).any(axis=(1, 2, 3))
    assert leaked.mean() > 0.8, f"only {leaked.mean():.0%} of gappy outlines leak"


def test_wobbly_edges_leave_the_straight_line_by_at_most_the_amplitude():
    cfg = IngestConfig(image_size=128, wobble_fraction=1.0, wobble_amplitude=3.0, shapes=("square",))
    for spec in synth.sample_specs(cfg, 8, 1):
        assert 1.5 <= spec.wobble <= 3.0
        wobbly, straight = synth.vertices(spec), synth.vertices(dataclasses.replace(spec, wobble=0.0))
        # distance of every wobbly point to the straight square's nearest edge line
        half = spec.radius / 2
        local = synth._rotate(wobbly - np.asarray(spec.centre), -spec.angle)
        off = np.abs(np.abs(local).max(axis=1) - half)
        assert off.max() <= 3.0 + 1e-6 and off.max() > 1.0, off.max()
        assert len(wobbly) > len(straight)
        inp, tgt = synth.render(spec, 128)
        assert format_problems(inp, tgt) == []


def test_novel_shapes_cover_every_kind():
    specs = synth.sample_specs(IngestConfig(image_size=64, novel_shape_fraction=1.0), 120, 0)
    names = {s.shape for s in specs}
    assert {"convex", "concave", "cross", "arrow"} <= names
    assert any(n.startswith("ngon") for n in names) and any(n.startswith("star") and n != "star" for n in names)
    assert all(s.unit for s in specs) and not names & set(SHAPES)
    ngons = sorted(int(n[4:]) for n in names if n.startswith("ngon"))
    assert ngons[0] >= 3 and ngons[-1] <= 12


def test_wide_poses_reach_small_large_and_the_border():
    cfg = IngestConfig(image_size=128, wide_pose_fraction=1.0, wide_scale=(0.08, 0.5), wide_offset=0.4)
    a = synth.generate(cfg, 64, 0)
    area = (a.targets != 255).any(-1).mean(axis=(1, 2))
    assert area.min() < 0.02 and area.max() > 0.4
    filled = (a.targets != 255).any(-1)
    near = [f[:6].any() or f[-6:].any() or f[:, :6].any() or f[:, -6:].any() for f in filled]
    assert np.mean(near) > 0.1, "some shapes come within 6 px of the border"


@pytest.mark.parametrize("key, value", [("gap_fraction", 1.5), ("gap_length", [0, 6]), ("wobble_amplitude", -1.0),
                                        ("novel_shape_fraction", -0.1), ("wide_scale", [0.3, 0.1]),
                                        ("jpeg_fraction", 1.5), ("jpeg_quality", [95, 60]), ("jpeg_quality", [5, 60]),
                                        ("antialias_fraction", -0.1), ("vertex_gap_fraction", 2.0),
                                        ("downscale_fraction", 1.1), ("downscale_factors", [1, 2]),
                                        ("downscale_factors", []), ("outline_width", [1, 17])])
def test_bad_variation_params_are_one_line_errors(key, value):
    from polycolor.config.params import parse_config
    from polycolor.errors import ConfigError

    with pytest.raises(ConfigError, match=f"ingest.{key}"):
        parse_config({"ingest": {key: value}})


def test_pixel_limits_grow_with_the_image_size():
    """A 512 px set may scale the 128 px widths and gaps by 4; a factor that would draw past 2048 px is refused."""
    from polycolor.config.params import parse_config
    from polycolor.errors import ConfigError

    parse_config({"ingest": {"image_size": 512, "outline_width": [4, 24], "gap_length": [4, 96],
                             "wobble_amplitude": 10.0}})
    with pytest.raises(ConfigError, match="ingest.downscale_factors"):
        parse_config({"ingest": {"image_size": 1024, "downscale_fraction": 0.5, "downscale_factors": [4]}})


# --- inputs as people feed a painter: JPEG, anti-aliasing, vertex gaps, downscaling ---------------------------------

FED = IngestConfig(image_size=64, outline_width=(1, 3), gap_fraction=0.4, wobble_fraction=0.3,
                   novel_shape_fraction=0.3, vertex_gap_fraction=0.5, antialias_fraction=0.25,
                   downscale_fraction=0.25, downscale_factors=(2, 4), jpeg_fraction=0.25, jpeg_quality=(60, 95))


def ink(image: np.ndarray) -> np.ndarray:
    """(H, W) bool: the input's ink as the painter reads it (images.painted_mask)."""
    return painted_mask(image)


def edge_is_ink(inp: np.ndarray, tgt: np.ndarray) -> bool:
    """The Ayna convention: every filled pixel with a 4-neighbour outside the fill is ink in the input (the fill's
    outer edge is the outline's outer edge)."""
    filled = painted_mask(tgt)
    padded = np.pad(filled, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return bool((ink(inp) | ~(filled & ~inner)).all())


def same_polygon(a: np.ndarray, b: np.ndarray, px: int = 2) -> bool:
    """Two (H, W) fills of one polygon drawn two ways (one PIL polygon at 1x, one drawn finer and pooled): they
    differ only within `px` pixels of a's edge, by how each rasterises the edge (PIL's 1x scanlines are off by up
    to a pixel on shallow edges, and a wobbly edge is sampled more finely when drawn larger)."""
    from scipy.ndimage import binary_dilation, binary_erosion

    near_edge = binary_dilation(a, iterations=px) & ~binary_erosion(a, iterations=px)
    return bool(((a != b) <= near_edge).all())


def two_valued(tgt: np.ndarray, rgb) -> bool:
    values = {tuple(v) for v in np.unique(tgt.reshape(-1, 3), axis=0).tolist()}
    return values == {(255, 255, 255), tuple(int(c) for c in rgb)}


def test_each_input_variation_appears_at_its_share():
    specs = synth.sample_specs(FED, 600, 0)
    gappy = [s for s in specs if s.gaps or s.vertex_gaps]
    shares = {
        "jpeg": np.mean([s.jpeg_quality > 0 for s in specs]),
        "antialias": np.mean([s.antialias for s in specs]),
        "downscale": np.mean([s.downscale > 1 for s in specs]),
        "vertex gaps among gappy": np.mean([bool(s.vertex_gaps) for s in gappy]),
        "gappy": len(gappy) / len(specs),
    }
    expected = {"jpeg": 0.25, "antialias": 0.25, "downscale": 0.25, "vertex gaps among gappy": 0.5, "gappy": 0.4}
    for key, share in shares.items():
        assert abs(share - expected[key]) < 0.07, f"{key}: {share:.2f}, expected {expected[key]}"
    assert {s.jpeg_quality for s in specs if s.jpeg_quality} <= set(range(60, 96))
    assert {s.downscale for s in specs} == {1, 2, 4}
    assert not any(s.gaps and s.vertex_gaps for s in specs), "a gappy outline has edge gaps or vertex gaps"


def test_input_variations_leave_the_other_draws_alone():
    """The new shares are drawn after everything else: with them on, every sample keeps its shape, colour, pose,
    width, wobble and (unless its gaps moved to vertices) its gaps."""
    plain = synth.sample_specs(synth.only(FED, gap_fraction=0.4, wobble_fraction=0.3, novel_shape_fraction=0.3), 80, 4)
    fed = synth.sample_specs(FED, 80, 4)
    for p, f in zip(plain, fed):
        assert (p.shape, p.colour, p.centre, p.radius, p.angle, p.width, p.unit, p.wobble) == \
               (f.shape, f.colour, f.centre, f.radius, f.angle, f.width, f.unit, f.wobble)
        if not f.vertex_gaps:
            assert p.gaps == f.gaps and p.wobble_seed == f.wobble_seed
    assert all(s.jpeg_quality == 0 and not s.antialias and s.downscale == 1 and not s.vertex_gaps for s in plain)


def test_jpeg_noises_the_input_only():
    cfg = synth.only(dataclasses.replace(FED, jpeg_quality=(60, 80)), jpeg_fraction=1.0)
    for spec in synth.sample_specs(cfg, 12, 1):
        inp, tgt = synth.render(spec, 64)
        clean_inp, clean_tgt = synth.render(dataclasses.replace(spec, jpeg_quality=0), 64)
        assert np.array_equal(tgt, clean_tgt) and two_valued(tgt, spec.rgb), "the target is the clean one"
        assert len(np.unique(inp)) > 10, "compression noise: many values, not two"
        diff = np.abs(inp.astype(int) - clean_inp.astype(int))
        assert diff.any() and diff.mean() < 12, f"noise, not another picture (mean {diff.mean():.1f})"
        assert (ink(clean_inp) & ~ink(inp)).sum() <= 0.02 * ink(clean_inp).sum(), "the outline stays dark"


def test_antialiased_outlines_have_grey_edges_and_the_fill_covers_them():
    cfg = synth.only(FED, antialias_fraction=1.0)
    for spec in synth.sample_specs(cfg, 16, 2):
        inp, tgt = synth.render(spec, 64)
        assert (inp[..., 0] == inp[..., 1]).all() and (inp[..., 0] == inp[..., 2]).all(), "grey, not coloured"
        grey = (inp[..., 0] > 0) & (inp[..., 0] < 255)
        assert grey.sum() > 0.2 * ink(inp).sum(), f"{spec.shape}: few grey edge pixels"
        assert two_valued(tgt, spec.rgb) and edge_is_ink(inp, tgt)
        assert not (ink(inp) & ~painted_mask(tgt)).any(), "every inked pixel is filled in the target"
        plain = painted_mask(synth.render(dataclasses.replace(spec, antialias=False), 64)[1])
        assert same_polygon(plain, painted_mask(tgt)), f"{spec.shape}: another polygon than the plain target"


def test_vertex_gaps_sit_on_vertices_and_open_the_outline():
    from polycolor.data.augment import outline_closed

    for size, widths in [(32, (1, 2)), (128, (1, 6))]:
        cfg = synth.only(dataclasses.replace(FED, image_size=size, outline_width=widths), gap_fraction=1.0,
                         vertex_gap_fraction=1.0, novel_shape_fraction=0.3, wobble_fraction=0.3)
        for spec in synth.sample_specs(cfg, 48, 3):
            assert spec.vertex_gaps and not spec.gaps
            inp, tgt = synth.render(spec, size)
            closed_inp, closed_tgt = synth.render(dataclasses.replace(spec, vertex_gaps=()), size)
            assert np.array_equal(tgt, closed_tgt), "the target is the polygon closed"
            removed = ink(closed_inp) & ~ink(inp)
            straight = synth.vertices(dataclasses.replace(spec, wobble=0.0))
            sines = synth.corner_sines(straight)
            yy, xx = np.nonzero(removed)
            near = np.zeros(len(yy), dtype=bool)
            for v, length in spec.vertex_gaps:
                r = synth.vertex_gap_radius(length, sines[v], spec.width, spec.wobble)
                at = ((xx - straight[v, 0]) ** 2 + (yy - straight[v, 1]) ** 2) <= r * r
                assert at.any(), f"{spec.shape}: the gap at vertex {v} removed nothing"
                near |= at
            assert near.all(), "pixels are removed only about the chosen vertices"
            assert not outline_closed(ink(inp), painted_mask(tgt)), f"{spec.shape} w{spec.width}: still closed"


@pytest.mark.parametrize("factor", [2, 4])
def test_downscaled_pairs_keep_an_unbroken_outline(factor):
    from polycolor.data.augment import outline_closed

    cfg = synth.only(dataclasses.replace(FED, downscale_factors=(factor,), outline_width=(1, 2)),
                     downscale_fraction=1.0, wobble_fraction=0.3, novel_shape_fraction=0.3)
    for spec in synth.sample_specs(cfg, 24, 5):
        assert spec.downscale == factor
        inp, tgt = synth.render(spec, 64)
        assert format_problems(inp, tgt) == [], f"{spec.shape}: {format_problems(inp, tgt)}"
        assert outline_closed(ink(inp), painted_mask(tgt)), f"{spec.shape}: the min pool broke the outline"
        assert edge_is_ink(inp, tgt)
        plain = painted_mask(synth.render(dataclasses.replace(spec, downscale=1), 64)[1])
        assert same_polygon(plain, painted_mask(tgt)), f"{spec.shape}: another polygon than the plain target"


def test_downscaling_is_a_min_pool_of_the_large_drawing():
    """The input is the darkest pixel of each block of the pair drawn `factor` x larger, widths and gaps scaled."""
    spec = synth.sample_specs(synth.only(FED, gap_fraction=1.0), 1, 6)[0]
    small_inp, _ = synth.render(dataclasses.replace(spec, downscale=4), 64)
    big = dataclasses.replace(spec, centre=(spec.centre[0] * 4 + 1.5, spec.centre[1] * 4 + 1.5),
                              radius=spec.radius * 4, width=spec.width * 4, wobble=spec.wobble * 4,
                              gaps=tuple((p, n * 4) for p, n in spec.gaps))
    big_inp, _ = synth.render(big, 256)
    assert np.array_equal(small_inp, big_inp.reshape(64, 4, 64, 4, 3).min(axis=(1, 3)))


def test_fed_pairs_are_framed_and_same_seed_gives_same_bytes():
    a, b = synth.generate(FED, 48, 9), synth.generate(FED, 48, 9)
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.targets, b.targets)
    assert not np.array_equal(a.inputs, synth.generate(FED, 48, 10).inputs)
    for i in range(len(a)):
        filled = painted_mask(a.targets[i])
        assert two_valued(a.targets[i], a.rgb[i]), f"sample {i}"
        assert not np.concatenate([filled[0], filled[-1], filled[:, 0], filled[:, -1]]).any(), f"sample {i}"


def test_jpeg_bytes_do_not_depend_on_libjpeg_turbos_simd_code(tmp_path):
    """libjpeg-turbo picks SIMD code per CPU; JSIMD_FORCENONE=1 makes it run its plain C code. Both give the same
    bytes, so ingest's JPEG inputs are the same on any CPU."""
    import hashlib
    import os
    import subprocess
    import sys

    code = ("import hashlib, numpy as np; from polycolor.config.data import IngestConfig; from polycolor.data import synth;"
            "a = synth.generate(IngestConfig(image_size=64, jpeg_fraction=1.0, antialias_fraction=0.5), 16, 0);"
            "print(hashlib.md5(a.inputs.tobytes()).hexdigest())")
    digests = set()
    for env in ({}, {"JSIMD_FORCENONE": "1"}):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                             check=True)
        digests.add(out.stdout.strip())
    here = synth.generate(IngestConfig(image_size=64, jpeg_fraction=1.0, antialias_fraction=0.5), 16, 0)
    digests.add(hashlib.md5(here.inputs.tobytes()).hexdigest())
    assert len(digests) == 1, digests


def test_only_and_at_image_size():
    cfg = synth.only(FED, jpeg_fraction=1.0)
    assert cfg.jpeg_fraction == 1.0 and all(getattr(cfg, k) == 0.0 for k in synth.SHARES if k != "jpeg_fraction")
    with pytest.raises(ValueError, match="not variation shares"):
        synth.only(FED, outline_width=2.0)
    big = synth.at_image_size(dataclasses.replace(FED, image_size=128, outline_width=(1, 6), gap_length=(1, 6),
                                                  wobble_amplitude=2.5), 512)
    assert (big.image_size, big.outline_width, big.gap_length, big.wobble_amplitude) == (512, (4, 24), (4, 24), 10.0)
    big.validate()
    a = synth.generate(synth.only(big, gap_fraction=1.0), 2, 0)
    assert a.inputs.shape == (2, 512, 512, 3)


def test_pens_and_paper_change_the_input_only_and_repeat_exactly():
    from dataclasses import replace as _replace

    from polycolor.data.synth import generate, on_paper

    grey = np.full((8, 8), 255, dtype=np.uint8)
    grey[2:5, 3] = 0
    assert np.array_equal(on_paper(grey, (0, 0, 0), 0), np.repeat(grey[..., None], 3, axis=2)), "white page, black pen"
    cfg = IngestConfig(image_size=64)
    plain = generate(cfg, 6, 11)
    for share in ("pen_fraction", "paper_fraction"):
        varied = generate(_replace(cfg, **{share: 1.0}), 6, 11)
        again = generate(_replace(cfg, **{share: 1.0}), 6, 11)
        assert np.array_equal(varied.inputs, again.inputs), f"{share}: same config and seed, same bytes"
        assert np.array_equal(varied.targets, plain.targets), f"{share}: the target is the plain polygon's"
        assert not np.array_equal(varied.inputs, plain.inputs), share
    paper = generate(_replace(cfg, paper_fraction=1.0), 6, 11)
    corners = paper.inputs[:, :2, :2].reshape(6, -1)
    assert (corners < 255).any(axis=1).all() and (corners > 150).all(), "a tinted, lit page, not white, not ink"
    pens = generate(_replace(cfg, pen_fraction=1.0), 6, 11)
    ink = pens.inputs[plain.inputs.min(axis=-1) == 0]
    assert ink.max() <= 110 and (ink.max(axis=-1) != ink.min(axis=-1)).any(), "dark pens of some hue"


@pytest.mark.parametrize("factor", sorted({2, 4, *IngestConfig().downscale_factors}))
def test_generator_min_pool_is_the_painters_to_size(factor: int):
    """Downscaled pairs imitate how the painter brings a large drawing to the model's size, so synth.min_pool (numpy:
    the generator must not depend on torch) and nn.model.to_size (torch, on the signed scale the painter feeds it)
    give the same bytes on uint8 images: random values, and a generated outline drawn at factor x the size."""
    import torch

    from polycolor.images import images_to_tensor, tensor_to_images
    from polycolor.nn.model import to_size

    size = 32
    rng = np.random.default_rng(factor)
    noise = rng.integers(0, 256, (size * factor, size * factor, 3), dtype=np.uint8)
    ink, _ = synth.draw_masks(synth._scaled(synth.sample_specs(IngestConfig(image_size=size), 1, 0)[0], factor),
                              size * factor)
    drawing = np.repeat(np.where(ink, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    for name, big in (("noise", noise), ("drawing", drawing)):
        with torch.no_grad():
            torch_pooled = tensor_to_images(to_size(images_to_tensor(big[None]), size))[0]
        numpy_pooled = synth.min_pool(big, factor)
        assert numpy_pooled.shape == torch_pooled.shape == (size, size, 3), name
        assert np.array_equal(numpy_pooled, torch_pooled), f"{name} at factor {factor}: numpy and torch min-pools differ"
