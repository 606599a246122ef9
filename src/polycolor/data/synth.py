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

Variation beyond the Ayna look (IngestConfig's *_fraction keys, each for a share of the samples): gaps cut out of
the outline (input only: the target is the polygon as if closed), wobbly hand-drawn edges (both images follow the
wobbly polygon), NOVEL_KINDS shapes, and wide poses (wide_scale, wide_offset).

Inputs as people feed a painter (render_varied; the target stays two-valued, the geometry that of the spec):
- vertex gaps: a gap centred on a vertex cuts the corner off (a disc around it, at least as wide as it takes to
  break the outline there), for a share of the gappy outlines;
- anti-aliased outlines: drawn SUPERSAMPLE x larger and box-averaged in exact integers, so edge pixels are grey;
- downscaled pairs: drawn at a factor x the size with every length scaled and brought down the way the painter
  brings a large drawing to the model's size (the darkest pixel of each factor x factor block);
- pens: the outline in a dark colour of any hue instead of black;
- paper: the drawing as a scan or a phone photo of paper shows it: an off-white, tinted page, lit unevenly (a
  linear gradient), the pen in a dark colour, softened by a binomial blur and grainy with noise;
- JPEG: the input compressed and decoded with PIL (libjpeg-turbo's integer DCT, the same bytes with or without its
  SIMD code), last.
Every step is numpy integer or element-wise float64 arithmetic or PIL, never torch or BLAS, so the bytes do not
depend on the CPU.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from skimage import draw as skdraw

from polycolor.colours import (
    SHAPES,
    canonical_colour,
    resolve_colour,
    rgb_to_hex,
)
from polycolor.config.data import IngestConfig
from polycolor.data.ayna import SplitArrays
from polycolor.data.coords import rotate

MARGIN = 2  # px of white kept between the polygon and the image border
NEAR_WHITE = 64  # a random colour needs some channel at least this far below 255, so the fill stays visible
SUPERSAMPLE = 4  # anti-aliasing draws at 4x and averages 4x4 blocks: 17 grey levels, and any ink reads below 240
MIN_CORNER_SINE = 0.25  # vertex gaps go to corners of at least ~29 degrees (sin(angle / 2) >= this), which a
# disc of a few outline widths can cut through; sharper spikes would lose most of the spike


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


# Shapes beyond the 8 Ayna ones, drawn for a share `ingest.novel_shape_fraction` of samples; each kind makes its
# unit vertices (circumradius about 1) from the sample's own random stream. Names as written to file names and the
# manifest: ngon3..ngon12, star3..star8, convex, concave, cross, arrow.
NOVEL_KINDS = ("ngon", "star", "convex", "concave", "cross", "arrow")


def novel_shape(kind: str, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """(name, unit vertices (V, 2)) of one shape of `kind`, drawn with rng."""
    if kind == "ngon":
        n = int(rng.integers(3, 13))
        return f"ngon{n}", _regular(n, 1.0, float(rng.uniform(0, 360)))
    if kind == "star":
        points = int(rng.choice([3, 4, 6, 7, 8]))
        return f"star{points}", _star(points, float(rng.uniform(0.3, 0.6)))
    if kind in ("convex", "concave"):
        # Vertices at sorted angles around the centre never cross, so both are simple polygons; on one ellipse they
        # are convex, with random radii concave (star-shaped about the centre).
        k = int(rng.integers(4, 10)) if kind == "convex" else int(rng.integers(5, 13))
        t = np.sort(rng.uniform(0, 2 * np.pi, k))
        r = np.ones(k) if kind == "convex" else rng.uniform(0.35, 1.0, k)
        squash = float(rng.uniform(0.5, 1.0)) if kind == "convex" else 1.0
        return kind, np.stack([r * np.cos(t), squash * r * np.sin(t)], axis=1)
    if kind == "cross":
        h = float(rng.uniform(0.2, 0.4))  # half-width of an arm
        return kind, np.array([[-h, -1], [h, -1], [h, -h], [1, -h], [1, h], [h, h], [h, 1], [-h, 1], [-h, h],
                               [-1, h], [-1, -h], [-h, -h]])
    if kind == "arrow":
        shaft, head, neck = float(rng.uniform(0.12, 0.3)), float(rng.uniform(0.45, 0.8)), float(rng.uniform(0, 0.4))
        return kind, np.array([[-1, -shaft], [neck, -shaft], [neck, -head], [1, 0], [neck, head], [neck, shaft],
                               [-1, shaft]])
    raise ValueError(f"unknown novel shape kind {kind!r}")


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
    unit: tuple[tuple[float, float], ...] = ()  # vertices in units of R; () = UNIT_VERTICES[shape]
    wobble: float = 0.0  # px: hand-drawn edges wander up to this far off the straight line; 0 = straight
    wobble_seed: int = 0  # seeds the wobble's smooth noise
    gaps: tuple[tuple[float, float], ...] = ()  # (position along the perimeter in [0, 1), length in px) per gap
    vertex_gaps: tuple[tuple[int, float], ...] = ()  # (vertex index of the straight polygon, length in px) per gap
    antialias: bool = False  # outline drawn anti-aliased: grey edge pixels (render_varied)
    downscale: int = 1  # drawn at downscale x the size, every length scaled, then pooled back (render_varied); 1 = off
    jpeg_quality: int = 0  # the input JPEG-compressed at this quality and decoded again; 0 = off
    pen: tuple[int, int, int] = (0, 0, 0)  # the outline's colour (render_varied when not black)
    paper_seed: int = 0  # seeds the page's look (paper): tone, light, blur, grain; 0 = a white page


def vertices(spec: PolygonSpec) -> np.ndarray:
    """(V, 2) float pixel coordinates (x, y) of the spec's polygon (wobbly edges included).

    Not snapped to coords.GRID: PIL truncates polygon vertices to whole pixels, so only a vertex crossing an integer
    moves a pixel, and the canonical poses put vertices on integers to within float noise that the real Ayna images
    record (snapping to any grid changes 14-34 outline pixels of the circle, octagon and hexagon; tests/test_synth.py).
    The float maths is kept the same on every CPU instead: element-wise, no BLAS (docs/reproducibility.md)."""
    unit = np.asarray(spec.unit, dtype=np.float64) if spec.unit else UNIT_VERTICES[spec.shape]
    pts = _place(unit, spec.radius, spec.angle, spec.centre)
    return _wobble(pts, spec.wobble, spec.wobble_seed) if spec.wobble > 0 else pts


def _rotate(unit: np.ndarray, angle_deg: float) -> np.ndarray:
    return rotate(unit, angle_deg)  # counter-clockwise on screen (y down); element-wise, no BLAS


def _place(unit: np.ndarray, radius: float, angle: float, centre: tuple[float, float]) -> np.ndarray:
    return _rotate(unit, angle) * radius + np.asarray(centre, dtype=np.float64)


def _wobble(pts: np.ndarray, amplitude: float, seed: int) -> np.ndarray:
    """A hand-drawn version of the closed polygon pts (V, 2): edges cut into ~3 px steps, each point moved along the
    local normal by a smooth periodic noise (3 sines, whole periods over the perimeter) of at most `amplitude` px."""
    rng = np.random.default_rng(seed)
    nxt = np.roll(pts, -1, axis=0)
    steps = np.maximum(1, np.ceil(np.linalg.norm(nxt - pts, axis=1) / 3.0)).astype(int)  # (V,)
    dense = np.concatenate([p + (q - p) * (np.arange(k)[:, None] / k) for p, q, k in zip(pts, nxt, steps)])  # (D, 2)
    seg = np.linalg.norm(np.roll(dense, -1, axis=0) - dense, axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)[:-1]]) / seg.sum()  # (D,) arc length in [0, 1)
    cycles = rng.integers(2, 9, 3)
    noise = sum(rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * (c * s + rng.uniform())) for c in cycles)
    noise *= amplitude / max(np.abs(noise).max(), 1e-9)
    tangent = np.roll(dense, -1, axis=0) - np.roll(dense, 1, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1) / np.maximum(
        np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    return dense + normal * noise[:, None]


def _gap_mask(pts: np.ndarray, gaps: tuple[tuple[float, float], ...], width: int, image_size: int) -> np.ndarray:
    """(H, W) bool: pixels a gap removes from the outline. Each gap is a rectangle `length` px along the edge at
    its perimeter position and wide enough across it (width + 2 px each way) to cut through the outline."""
    cut = np.zeros((image_size, image_size), dtype=bool)
    nxt = np.roll(pts, -1, axis=0)
    lengths = np.linalg.norm(nxt - pts, axis=1)  # (V,)
    ends = np.cumsum(lengths)
    for pos, length in gaps:
        at = pos * ends[-1]
        e = min(int(np.searchsorted(ends, at, side="right")), len(pts) - 1)
        t = (nxt[e] - pts[e]) / max(lengths[e], 1e-9)  # unit tangent of that edge
        n = np.array([-t[1], t[0]])
        p = pts[e] + t * (at - (ends[e] - lengths[e]))
        a, b = t * length / 2.0, n * (width + 2.0)
        corners = np.array([p - a - b, p + a - b, p + a + b, p - a + b])  # (4, 2) x, y
        rr, cc = skdraw.polygon(corners[:, 1], corners[:, 0], shape=cut.shape)
        cut[rr, cc] = True
    return cut


def render(spec: PolygonSpec, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one pair: (input, target), each uint8 (H, W, 3) with H = W = image_size, exactly two values each.

    A gap removes outline pixels from the input only: the target is the polygon as if its outline were closed.
    A spec with anti-aliasing, downscaling or JPEG is drawn by render_varied (the input then holds grey values).
    """
    if spec.antialias or spec.downscale > 1 or spec.jpeg_quality or spec.pen != (0, 0, 0) or spec.paper_seed:
        return render_varied(spec, image_size)
    drawn, filled = draw_masks(spec, image_size)
    inp = np.full((image_size, image_size, 3), 255, dtype=np.uint8)
    inp[drawn] = 0
    tgt = np.full((image_size, image_size, 3), 255, dtype=np.uint8)
    tgt[filled] = spec.rgb
    return inp, tgt


def draw_masks(spec: PolygonSpec, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(drawn, filled), (H, W) bool each: the outline as drawn in the input (gaps cut) and the target's fill (the
    polygon as if closed). Only the spec's geometry is drawn, not its anti-aliasing, downscaling or JPEG."""
    v = vertices(spec)
    pts = [(float(x), float(y)) for x, y in v]
    outline_im = Image.new("L", (image_size, image_size), 0)
    ImageDraw.Draw(outline_im).polygon(pts, outline=1, width=spec.width)
    fill_im = Image.new("L", (image_size, image_size), 0)
    ImageDraw.Draw(fill_im).polygon(pts, fill=1)
    outline = np.asarray(outline_im, dtype=bool)  # (H, W)
    filled = np.asarray(fill_im, dtype=bool) | outline  # the fill covers the outline, by construction
    drawn = outline & ~_gap_mask(v, spec.gaps, spec.width, image_size) if spec.gaps else outline
    if spec.vertex_gaps:
        drawn = drawn & ~_vertex_gap_mask(spec, image_size)
    return drawn, filled


def corner_sines(pts: np.ndarray) -> np.ndarray:
    """(V,) sin(a / 2) of the corner angle a at each vertex of the closed polygon pts (V, 2), a in (0, 180] degrees
    between the two edges (the same for the interior angle and its reflex complement). |u - w| = 2 sin(a / 2) for
    the unit edge directions u, w: square roots only, no trigonometric functions whose last bit depends on the CPU."""
    to_prev = np.roll(pts, 1, axis=0) - pts
    to_next = np.roll(pts, -1, axis=0) - pts
    u = to_prev / np.maximum(np.sqrt((to_prev ** 2).sum(axis=1, keepdims=True)), 1e-12)
    w = to_next / np.maximum(np.sqrt((to_next ** 2).sum(axis=1, keepdims=True)), 1e-12)
    return np.sqrt(((u - w) ** 2).sum(axis=1)) / 2.0


def vertex_gap_radius(length: float, sine: float, width: int, wobble: float = 0.0) -> float:
    """Radius in px of the disc a vertex gap cuts: half the gap's length, but at least enough to cut through the
    outline at that corner. A `width` px outline inside the polygon has its inner corner width / sine px from the
    vertex, so a disc a little wider than that leaves the two edges unjoined (a radius of (width - 0.5) / sine left
    4 to 7% of outlines closed; tests/test_synth.py checks that this one leaves none); a wobbly vertex may sit up to
    `wobble` px off the straight one."""
    return max(length / 2.0, (width + 0.5) / max(sine, 1e-3) + 0.5) + wobble


def _vertex_gap_mask(spec: PolygonSpec, image_size: int) -> np.ndarray:
    """(H, W) bool: pixels the spec's vertex gaps remove, a disc (vertex_gap_radius) about each straight vertex."""
    straight = vertices(dataclasses.replace(spec, wobble=0.0))  # (V, 2) the polygon's own vertices
    sines = corner_sines(straight)
    yy, xx = np.ogrid[:image_size, :image_size]
    cut = np.zeros((image_size, image_size), dtype=bool)
    for index, length in spec.vertex_gaps:
        r = vertex_gap_radius(length, float(sines[index]), spec.width, spec.wobble)
        x, y = straight[index]
        cut |= (xx - x) ** 2 + (yy - y) ** 2 <= r * r
    return cut


def _draw_vertex_gaps(unit: np.ndarray, count: tuple[int, int], length: tuple[int, int],
                      rng: np.random.Generator) -> tuple[tuple[int, float], ...]:
    """Vertex gaps for one outline: gap_count distinct corners of at least MIN_CORNER_SINE (the widest corner when
    none is that wide), each with a gap_length."""
    sines = corner_sines(unit)  # rotation and scale do not change a corner's angle
    ok = np.flatnonzero(sines >= MIN_CORNER_SINE)
    if len(ok) == 0:
        ok = np.array([int(np.argmax(sines))])
    k = min(int(rng.integers(count[0], count[1] + 1)), len(ok))
    chosen = np.sort(rng.choice(ok, size=k, replace=False))
    return tuple((int(v), float(rng.integers(length[0], length[1] + 1))) for v in chosen)


def _scaled(spec: PolygonSpec, factor: int) -> PolygonSpec:
    """The spec drawn `factor` x larger: pixel (x, y) becomes the block [fx, fx + f) x [fy, fy + f), so a point at
    u (pixel centres at integers) goes to f u + (f - 1) / 2; radius, outline width, gap lengths and wobble are
    multiplied by f. Only the plain geometry is kept (no anti-aliasing, downscaling or JPEG)."""
    shift = (factor - 1) / 2.0
    return dataclasses.replace(
        spec, centre=(spec.centre[0] * factor + shift, spec.centre[1] * factor + shift),
        radius=spec.radius * factor, width=spec.width * factor, wobble=spec.wobble * factor,
        gaps=tuple((pos, length * factor) for pos, length in spec.gaps),
        vertex_gaps=tuple((v, length * factor) for v, length in spec.vertex_gaps),
        antialias=False, downscale=1, jpeg_quality=0)


def _pool(image: np.ndarray, k: int, combine) -> np.ndarray:
    """(kH, kW) -> (H, W): `combine` (a binary ufunc: np.add, np.minimum, np.logical_or) folded over each k x k
    block, rows first, then columns. Strided slices with element-wise ufuncs: exact for integers and bools, and
    much faster than a reduction over the block axes of a reshaped array."""
    rows = image[0::k]
    for i in range(1, k):
        rows = combine(rows, image[i::k])
    out = rows[:, 0::k]
    for j in range(1, k):
        out = combine(out, rows[:, j::k])
    return out


def box_grey(ink: np.ndarray, k: int) -> np.ndarray:
    """(kH, kW) bool ink -> (H, W) uint8 grey: 255 minus the block's ink coverage on the 0..255 scale, rounded half
    up, in exact integers: 255 - (255 c + k^2 // 2) // k^2 for c inked pixels of k^2. With k = 4 one inked
    sub-pixel gives 239, so any ink is painted at images.WHITE_MIN = 240."""
    c = _pool(ink.astype(np.int32), k, np.add)  # (H, W) in 0..k^2
    return (255 - (255 * c + (k * k) // 2) // (k * k)).astype(np.uint8)


def min_pool(image: np.ndarray, k: int) -> np.ndarray:
    """(kH, kW) uint8 -> (H, W): the darkest value of each k x k block, so a thin line is never lost."""
    return _pool(image, k, np.minimum)


def any_pool(mask: np.ndarray, k: int) -> np.ndarray:
    """(kH, kW) bool -> (H, W): True where the k x k block holds any True."""
    return _pool(mask, k, np.logical_or)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """(H, W, 3) uint8 -> the same image JPEG-encoded at `quality` (4:2:0 chroma, as cameras and browsers save)
    and decoded, by PIL's libjpeg-turbo with its default integer DCT, whose SIMD and plain C code agree bit for bit."""
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="JPEG", quality=int(quality), subsampling="4:2:0")
    buf.seek(0)
    with Image.open(buf) as im:
        return np.array(im.convert("RGB"), dtype=np.uint8)


PAPER_TONE = (200, 252)  # the page's brightest channel, before the light falls off
PAPER_TINT = 14  # the other channels up to this much below it (yellowish, bluish, grey paper)
PAPER_LIGHT = 0.25  # the light falls off by up to this share across the page
PAPER_GRAIN = 8  # noise up to +- this (the sum of two uniform draws, so mostly smaller)
PEN_DARKEST = 110  # a pen colour's brightest channel is at most this: dark enough to read as ink on any page


def pen_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A dark colour of any hue (blue, red, green, brown, grey ink): every channel <= PEN_DARKEST."""
    return tuple(int(v) for v in rng.integers(0, PEN_DARKEST + 1, 3))


def _binomial_blur(img: np.ndarray, times: int) -> np.ndarray:
    """(H, W, C) int64 smoothed `times` times by the [1, 2, 1] kernel along each axis (edges repeated), exact
    integers (x16 per pass, divided back with rounding)."""
    for _ in range(times):
        p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
        v = p[:-2] + 2 * p[1:-1] + p[2:]
        img = (v[:, :-2] + 2 * v[:, 1:-1] + v[:, 2:] + 8) // 16
    return img


def on_paper(ink: np.ndarray, pen: tuple[int, int, int], paper_seed: int) -> np.ndarray:
    """An ink coverage (H, W) uint8, 0 = full ink, 255 = none, as a pen of colour `pen` on a page: uint8 (H, W, 3).
    paper_seed 0 is a white page, unlit, sharp and clean; otherwise the page's tone, tint, light gradient, blur
    (0-2 binomial passes) and grain are drawn from it. Integer arithmetic only, so the bytes are the same on any
    CPU."""
    h, w = ink.shape
    cover = 255 - ink.astype(np.int64)  # (H, W) in [0, 255]: how much of the pixel the pen covers
    page = np.full((h, w, 3), 255, dtype=np.int64)
    rng = np.random.default_rng(paper_seed) if paper_seed else None
    if rng is not None:
        top = int(rng.integers(PAPER_TONE[0], PAPER_TONE[1] + 1))
        tone = np.array([top - int(rng.integers(0, PAPER_TINT + 1)) for _ in range(3)], dtype=np.int64)
        # light: 1000ths of the tone kept, falling linearly along a random direction
        dy, dx = (int(v) for v in rng.integers(-1000, 1001, 2))
        fall = int(rng.integers(0, int(PAPER_LIGHT * 1000) + 1))
        yy, xx = np.mgrid[0:h, 0:w]
        ramp = (yy * dy + xx * dx) - min(0, dy) * (h - 1) - min(0, dx) * (w - 1)  # >= 0
        span = max(1, abs(dy) * (h - 1) + abs(dx) * (w - 1))
        light = 1000 - fall * ramp // span  # (H, W) in [1000 - fall, 1000]
        page = tone[None, None, :] * light[..., None] // 1000
    pen_a = np.asarray(pen, dtype=np.int64)
    img = (page * (255 - cover[..., None]) + pen_a[None, None, :] * cover[..., None] + 127) // 255
    if rng is not None:
        img = _binomial_blur(img, int(rng.integers(0, 3)))
        grain = rng.integers(-PAPER_GRAIN // 2, PAPER_GRAIN // 2 + 1, (2, h, w, 3)).sum(axis=0)
        img = img + grain
    return np.clip(img, 0, 255).astype(np.uint8)


def render_varied(spec: PolygonSpec, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one pair with the spec's anti-aliasing, downscaling and JPEG: (input, target), uint8 (H, W, 3).

    The plain pair (draw_masks) is drawn at F = downscale x (SUPERSAMPLE if antialias) times the size with every length
    scaled (_scaled); then, in exact integers:
    - anti-aliasing: input = box_grey of the outline over SUPERSAMPLE x SUPERSAMPLE blocks;
    - downscaling: input = min_pool over downscale x downscale blocks, the darkest pixel, as the painter brings a
      large drawing to the model's size;
    - pen and paper: input = on_paper(input, pen, paper_seed), the ink in the pen's colour on the page;
    - JPEG, last: input = jpeg(input).
    The target is painted where its block of the large fill holds any filled pixel (any_pool, for both reductions).
    The large fill covers the large outline, so the target covers every pixel with ink in the input and its outer edge
    is the input's outer edge, the Ayna convention that native pairs follow; where a gap opened the outline it is
    the polygon as if closed. (A majority vote would leave the outer ring of pooled ink uncoloured, and the network
    cannot tell a pooled drawing from a native one, so it must not be taught another convention.) Under JPEG the
    target is that of the clean input: compression noise is not ink.
    """
    k = SUPERSAMPLE if spec.antialias else 1
    factor = spec.downscale * k
    ink, filled = draw_masks(_scaled(spec, factor), image_size * factor)  # (FH, FW) each
    grey = box_grey(ink, k) if k > 1 else np.where(ink, 0, 255).astype(np.uint8)
    filled = any_pool(filled, k) if k > 1 else filled
    if spec.downscale > 1:
        grey, filled = min_pool(grey, spec.downscale), any_pool(filled, spec.downscale)
    if spec.pen != (0, 0, 0) or spec.paper_seed:
        inp = on_paper(grey, spec.pen, spec.paper_seed)  # (H, W, 3)
    else:
        inp = np.repeat(grey[..., None], 3, axis=2)  # (H, W, 3)
    if spec.jpeg_quality:
        inp = jpeg(inp, spec.jpeg_quality)
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

    # The variation shares are drawn after everything above, so with every share at 0 the specs are those of a
    # generator without them. Per-sample extras (a novel shape's vertices, gaps, wobble) come from the sample's own
    # stream, so one sample's draws never shift another's.
    is_wide = rng.random(n) < cfg.wide_pose_fraction
    wide_radius = rng.uniform(cfg.wide_scale[0], cfg.wide_scale[1], n) * image_size
    is_novel = rng.random(n) < cfg.novel_shape_fraction
    is_gappy = rng.random(n) < cfg.gap_fraction
    is_wobbly = rng.random(n) < cfg.wobble_fraction
    own_seed = rng.integers(0, 2**63, n)
    # Inputs as people feed a painter, drawn after all of the above so that they leave its draws alone.
    is_vertex_gap = rng.random(n) < cfg.vertex_gap_fraction  # applies to gappy outlines only
    is_antialiased = rng.random(n) < cfg.antialias_fraction
    is_downscaled = rng.random(n) < cfg.downscale_fraction
    factor = np.asarray(cfg.downscale_factors, dtype=np.int64)[rng.integers(0, len(cfg.downscale_factors), n)]
    is_jpeg = rng.random(n) < cfg.jpeg_fraction
    quality = rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1, n)
    # Pens and paper, drawn last of all for the same reason.
    is_pen = rng.random(n) < cfg.pen_fraction
    is_paper = rng.random(n) < cfg.paper_fraction
    pen_seed = rng.integers(0, 2**63, n)
    paper_seed = rng.integers(1, 2**31, n)

    half = image_size / 2.0
    specs = []
    for i in range(n):
        own = np.random.default_rng(int(own_seed[i]))
        shape, unit = shapes[shape_idx[i]], ()
        if is_novel[i]:
            shape, u = novel_shape(NOVEL_KINDS[int(own.integers(len(NOVEL_KINDS)))], own)
            unit = tuple((float(x), float(y)) for x, y in u)
        wobble = float(own.uniform(0.5, 1.0) * cfg.wobble_amplitude) if is_wobbly[i] else 0.0
        gaps, vertex_gaps = (), ()
        if is_gappy[i] and is_vertex_gap[i]:
            vertex_gaps = _draw_vertex_gaps(np.asarray(unit) if unit else UNIT_VERTICES[shape], cfg.gap_count,
                                            cfg.gap_length, own)
        elif is_gappy[i]:
            k = int(own.integers(cfg.gap_count[0], cfg.gap_count[1] + 1))
            gaps = tuple((float(own.random()), float(own.integers(cfg.gap_length[0], cfg.gap_length[1] + 1)))
                         for _ in range(k))
        margin = MARGIN + wobble  # a wobbly edge may leave the straight polygon by `wobble` px
        lo, hi = margin, image_size - 1 - margin  # allowed pixel coordinates of any vertex
        rot = _rotate(np.asarray(unit) if unit else UNIT_VERTICES[shape], angle[i])  # (V, 2) in units of R
        r = float(wide_radius[i] if is_wide[i] else radius[i])
        span = (rot.max(axis=0) - rot.min(axis=0)) * r
        if span.max() > hi - lo:  # too big for the frame: shrink to fit
            r *= (hi - lo) / span.max()
        # The centre may move where every vertex stays in [lo, hi], intersected with the offset range.
        max_off = (cfg.wide_offset if is_wide[i] else cfg.offset) * image_size
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
                                 int(width[i]), unit, wobble, int(own.integers(0, 2**31)), gaps, vertex_gaps,
                                 antialias=bool(is_antialiased[i]),
                                 downscale=int(factor[i]) if is_downscaled[i] else 1,
                                 jpeg_quality=int(quality[i]) if is_jpeg[i] else 0,
                                 pen=pen_colour(np.random.default_rng(int(pen_seed[i]))) if is_pen[i] or is_paper[i]
                                 else (0, 0, 0),
                                 paper_seed=int(paper_seed[i]) if is_paper[i] else 0))
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


# IngestConfig's variation shares: each turns one kind of sample on for a share of the pairs (0 = off).
SHARES = ("gap_fraction", "wobble_fraction", "novel_shape_fraction", "wide_pose_fraction", "vertex_gap_fraction",
          "antialias_fraction", "downscale_fraction", "jpeg_fraction", "pen_fraction", "paper_fraction")


def only(cfg: IngestConfig, **shares: float) -> IngestConfig:
    """cfg with every variation share (SHARES) off except those given, e.g. only(cfg, jpeg_fraction=1.0) for a set
    of plain polygons that are all JPEG-compressed."""
    unknown = set(shares) - set(SHARES)
    if unknown:
        raise ValueError(f"not variation shares: {sorted(unknown)} (known: {', '.join(SHARES)})")
    return dataclasses.replace(cfg, **{key: float(shares.get(key, 0.0)) for key in SHARES})


def at_image_size(cfg: IngestConfig, image_size: int) -> IngestConfig:
    """cfg drawn at image_size px with its pixel lengths scaled by image_size / cfg.image_size: outline_width,
    gap_length (rounded, at least 1) and wobble_amplitude, so a 512 px set looks like the 128 px one drawn 4 x finer.
    Relative settings (scale, offset, shares) stay as they are."""
    f = image_size / cfg.image_size

    def px(pair: tuple[int, int]) -> tuple[int, int]:
        return max(1, round(pair[0] * f)), max(1, round(pair[1] * f))

    return dataclasses.replace(cfg, image_size=image_size, outline_width=px(cfg.outline_width),
                               gap_length=px(cfg.gap_length), wobble_amplitude=cfg.wobble_amplitude * f)


def file_names(index: int, spec: PolygonSpec) -> tuple[str, str]:
    """(input name, output name) of a synthetic sample: `00012_star.png`, `00012_red_star.png` or
    `00012_1a2b3c_star.png` (a #rrggbb colour without its #)."""
    colour = spec.colour.lstrip("#").replace(" ", "")
    return f"{index:05d}_{spec.shape}.png", f"{index:05d}_{colour}_{spec.shape}.png"
