"""A deterministic generator of Ayna-style pairs: a black polygon outline on white, and the same polygon filled.

The geometry is measured from the real Ayna images, which this module reproduces pixel for pixel at the canonical
pose (128 px, centre (64, 64), nominal radius R = 40 px, rotation 0, outline 2 px; see tests/test_synth.py):

- everything is drawn with PIL ImageDraw.polygon without antialiasing; the outline (`width` > 1) lies inside the
  polygon, so the fill of the same polygon covers every outline pixel (target = fill UNION outline, by construction);
- circle: a 36-gon of radius R; pentagon (vertex up), hexagon and octagon (vertex right): circumradius R;
- star: 5 points, outer radius R, inner radius 0.4 R, a point up;
- diamond: half-height R, half-width 0.7 R;
- square: side R (axis-aligned at rotation 0), triangle: equilateral, side R, apex up. These two are smaller than
  the others in the real data, so `scale` is the nominal radius R / image side (0.3125 in the real data), not the
  circumradius of every shape.

Pose: R = scale * side, rotation about the shape's centre, and a centre offset drawn uniformly from the part of
[-offset, offset] * side that keeps the whole polygon at least `MARGIN` px inside the frame (a polygon too big for
the frame is shrunk to fit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from polycolor.colours import (
    SHAPES,
    canonical_colour,
    resolve_colour,
    rgb_to_hex,
)
from polycolor.config import IngestConfig
from polycolor.data.ayna import SplitArrays

MARGIN = 2  # px of white kept between the polygon and the image border
NEAR_WHITE = 64  # a random colour needs some channel at least this far below 255, so the fill stays visible


def _regular(n: int, radius: float, start_deg: float) -> np.ndarray:
    t = np.deg2rad(start_deg) + 2.0 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _star(points: int, inner: float) -> np.ndarray:
    t = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


# Vertices in units of the nominal radius R, centred on (0, 0), image axes (x right, y down).
UNIT_VERTICES: dict[str, np.ndarray] = {
    "triangle": _regular(3, 1.0 / np.sqrt(3.0), -90.0),  # side 1, apex up
    "square": np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]),  # side 1
    "pentagon": _regular(5, 1.0, -90.0),
    "hexagon": _regular(6, 1.0, 0.0),
    "octagon": _regular(8, 1.0, 0.0),
    "circle": _regular(36, 1.0, 0.0),
    "star": _star(5, 0.4),
    "diamond": np.array([[0.0, -1.0], [0.7, 0.0], [0.0, 1.0], [-0.7, 0.0]]),
}
assert set(UNIT_VERTICES) == set(SHAPES)


@dataclass(frozen=True)
class PolygonSpec:
    """Everything needed to draw one pair."""

    shape: str
    colour: str  # a colour name or #rrggbb, as written to data.json
    rgb: tuple[int, int, int]
    centre: tuple[float, float]  # (x, y) in pixels
    radius: float  # nominal radius R in pixels
    angle: float  # degrees, counter-clockwise on screen
    width: int  # outline width in pixels


def vertices(spec: PolygonSpec) -> np.ndarray:
    """(V, 2) float pixel coordinates (x, y) of the spec's polygon."""
    return _place(UNIT_VERTICES[spec.shape], spec.radius, spec.angle, spec.centre)


def _rotate(unit: np.ndarray, angle_deg: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    # y points down, so this matrix turns the shape counter-clockwise as seen on screen.
    return unit @ np.array([[c, -s], [s, c]])


def _place(unit: np.ndarray, radius: float, angle: float, centre: tuple[float, float]) -> np.ndarray:
    return _rotate(unit, angle) * radius + np.asarray(centre, dtype=np.float64)


def render(spec: PolygonSpec, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one pair: (input, target), each uint8 (H, W, 3) with H = W = image_size, exactly two values each."""
    pts = [(float(x), float(y)) for x, y in vertices(spec)]
    outline_im = Image.new("L", (image_size, image_size), 0)
    ImageDraw.Draw(outline_im).polygon(pts, outline=1, width=spec.width)
    fill_im = Image.new("L", (image_size, image_size), 0)
    ImageDraw.Draw(fill_im).polygon(pts, fill=1)
    outline = np.asarray(outline_im, dtype=bool)  # (H, W)
    filled = np.asarray(fill_im, dtype=bool) | outline  # the fill covers the outline, by construction
    inp = np.full((image_size, image_size, 3), 255, dtype=np.uint8)
    inp[outline] = 0
    tgt = np.full((image_size, image_size, 3), 255, dtype=np.uint8)
    tgt[filled] = spec.rgb
    return inp, tgt


def _balanced(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """n indices into k classes, as equal in count as n allows, in random order."""
    return rng.permutation(np.arange(n) % k)


def sample_specs(cfg: IngestConfig, n: int, seed: int | np.random.Generator) -> list[PolygonSpec]:
    """Draw n pair specs with the generator settings of `cfg` (shapes, colours, poses, outline widths; its sample
    counts and source are not used). Shapes and named colours are balanced (counts differ by at most one).

    A share `cfg.random_colour_fraction` of samples gets a random `#rrggbb` colour instead of a name, never near
    white (some channel <= 255 - NEAR_WHITE). Same config and seed, same specs. Other settings (evaluate's
    out-of-distribution poses, another image size) come from `dataclasses.replace(cfg, ...)`.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    shapes, image_size = cfg.shapes, cfg.image_size
    for s in shapes:
        if s not in UNIT_VERTICES:
            raise ValueError(f"unknown shape {s!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    names = [canonical_colour(c) for c in cfg.colours]
    named_rgb = [resolve_colour(c) for c in names]
    # Every draw happens here, vectorised and in a fixed order, so a spec depends only on (config, seed).
    shape_idx = _balanced(n, len(shapes), rng)
    colour_idx = _balanced(n, len(names), rng)
    is_random = rng.random(n) < cfg.random_colour_fraction
    rand_rgb = rng.integers(0, 256, size=(n, 3))
    while True:  # redraw near-white colours (about 1/16 of draws) until none is left
        bad = rand_rgb.min(axis=1) > 255 - NEAR_WHITE
        if not bad.any():
            break
        rand_rgb[bad] = rng.integers(0, 256, size=(int(bad.sum()), 3))
    radius = rng.uniform(cfg.scale[0], cfg.scale[1], n) * image_size
    angle = rng.uniform(cfg.rotation[0], cfg.rotation[1], n)
    u_xy = rng.random((n, 2))
    width = rng.integers(cfg.outline_width[0], cfg.outline_width[1] + 1, n)

    half = image_size / 2.0
    lo, hi = float(MARGIN), float(image_size - 1 - MARGIN)  # allowed pixel coordinates of any vertex
    max_off = cfg.offset * image_size
    specs = []
    for i in range(n):
        shape = shapes[shape_idx[i]]
        rot = _rotate(UNIT_VERTICES[shape], angle[i])  # (V, 2) in units of R
        r = float(radius[i])
        span = (rot.max(axis=0) - rot.min(axis=0)) * r
        if span.max() > hi - lo:  # too big for the frame: shrink to fit
            r *= (hi - lo) / span.max()
        # The centre may move where every vertex stays in [lo, hi], intersected with the offset range.
        c_lo = np.maximum(half - max_off, lo - rot.min(axis=0) * r)
        c_hi = np.minimum(half + max_off, hi - rot.max(axis=0) * r)
        c_hi = np.maximum(c_hi, c_lo)
        centre = c_lo + u_xy[i] * (c_hi - c_lo)
        if is_random[i]:
            rgb = tuple(int(v) for v in rand_rgb[i])
            colour = rgb_to_hex(rgb)
        else:
            rgb, colour = named_rgb[colour_idx[i]], names[colour_idx[i]]
        specs.append(PolygonSpec(shape, colour, rgb, (float(centre[0]), float(centre[1])), r, float(angle[i]),
                                 int(width[i])))
    return specs


def render_specs(specs: Sequence[PolygonSpec], image_size: int) -> SplitArrays:
    """Render specs into a SplitArrays (inputs, targets (N, H, W, 3) uint8)."""
    n = len(specs)
    inputs = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    targets = np.empty_like(inputs)
    for i, spec in enumerate(specs):
        inputs[i], targets[i] = render(spec, image_size)
    return SplitArrays(inputs=inputs, targets=targets, colours=[s.colour for s in specs],
                       rgb=np.array([s.rgb for s in specs], dtype=np.uint8).reshape(-1, 3),
                       shapes=[s.shape for s in specs])


def generate(cfg: IngestConfig, n: int, seed: int | np.random.Generator) -> SplitArrays:
    """n synthetic pairs in memory: inputs/targets (n, cfg.image_size, cfg.image_size, 3) uint8, colours, rgb,
    shapes. Deterministic in (cfg, seed). Ingest writes the same specs to files; evaluate generates its extra sets
    from `dataclasses.replace(cfg, ...)`."""
    return render_specs(sample_specs(cfg, n, seed), cfg.image_size)


def file_names(index: int, spec: PolygonSpec) -> tuple[str, str]:
    """(input name, output name) of a synthetic sample: `00012_star.png`, `00012_red_star.png` or
    `00012_1a2b3c_star.png` (a #rrggbb colour without its #)."""
    colour = spec.colour.lstrip("#").replace(" ", "")
    return f"{index:05d}_{spec.shape}.png", f"{index:05d}_{colour}_{spec.shape}.png"
