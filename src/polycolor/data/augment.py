"""Geometric augmentation of training pairs, applied identically to input and target.

Random horizontal and vertical flips, a random turn by a multiple of 90 degrees, then an affine rotate / scale /
translate (no shear) with nearest-neighbour sampling and white fill, the parameters drawn once per pair so input and
target move together and both stay two-valued. Colours are never touched. The steps mean what torchvision.transforms
.v2's RandomHorizontalFlip, RandomVerticalFlip, RandomAffine(degrees, translate, scale, NEAREST, fill=white) mean.

Same bytes on any CPU (docs/reproducibility.md): parameters come from numpy's PCG64 as exact 53-bit fractions
mapped with float64 arithmetic; flips and turns move pixels; the affine step computes, for every output pixel, the
input pixel it samples with element-wise float64 arithmetic snapped to a fixed grid and rounded half up
(polycolor.data.coords), then gathers it by numpy indexing. No torch float kernel, BLAS or matmul is on the way.

Each augmented copy is seeded on its own (from seed, sample index and copy number), so results are byte-identical
between runs and do not depend on the order, on any global random state, or on how many processes write them
(`augment.workers`, data.workers).

The affine step draws its translation (and, if needed, shrinks its scale) so that the polygon stays inside the
frame (in_frame_affine). A draw is still rejected and redrawn when it
- leaves a painted pixel on the image border (part of the polygon would be cut off), or
- opens a gap in the outline, so that the white inside of the polygon leaks into the outside: nearest resampling of
  a thin, rotated, shrunk line drops pixels (about a quarter of draws at the default ranges for 2 px outlines),
unless the original pair already had that property. The fill covering the outline holds by construction (the same
pixels are sampled in both images) and is checked too. After `max_tries` rejected draws the copy gets only the
exact steps (flips and 90-degree turns), which move pixels without resampling and so cannot break anything.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from skimage.measure import label

from polycolor.config.data import AugmentConfig
from polycolor.data import ayna
from polycolor.data.coords import nearest_pixel, rotate, snap
from polycolor.data.workers import ordered_map
from polycolor.images import WHITE, painted_mask, tile_grid

MAX_TRIES = 10
SPLIT = "training"  # only training data is augmented; validation is never touched
MARGIN = 1.5  # px kept between the painted pixels and the border: 1 px of white plus half a pixel of slack


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A uniform draw in [lo, hi]: an exact 53-bit fraction, mapped with Python float arithmetic (no FMA)."""
    return lo + (hi - lo) * float(rng.random())


@dataclass(frozen=True)
class Affine:
    """One affine draw, torchvision's convention: an input pixel at p (x, y; y down) lands at
    centre + translate + scale * R(angle) (p - centre), R turning clockwise on screen for a positive angle."""

    angle: float  # degrees
    scale: float
    translate: tuple[int, int]  # px (x, y)


def in_frame_affine(painted: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> Affine:
    """Draw an affine step for a (H, W) bool mask of painted pixels: angle in [-degrees, degrees], scale in
    cfg.scale, translation from the part of [-translate, translate] * side that keeps every painted pixel at least
    MARGIN px inside the frame; a scale too large for the frame is reduced until the painted region fits. A mask
    that is empty or already touches the border gets a translation from the whole range, as RandomAffine's."""
    height, width = painted.shape
    angle = _uniform(rng, -cfg.degrees, cfg.degrees)
    scale = _uniform(rng, *cfg.scale)
    u = np.array([rng.random(), rng.random()])  # (2,) exact fractions in [0, 1)
    size = np.array([width, height], dtype=np.float64)
    max_t = cfg.translate * size  # (2,) px
    rows = painted.any(axis=1)  # (H,)
    if not rows.any() or at_border(painted):
        t = np.floor(snap(-max_t + u * 2.0 * max_t) + 0.5)
        return Affine(angle, scale, (int(t[0]), int(t[1])))
    # The leftmost and rightmost painted pixel of each row span the same convex hull as all of them.
    ys = np.flatnonzero(rows)
    left = painted[ys].argmax(axis=1)
    right = width - 1 - painted[ys, ::-1].argmax(axis=1)
    pts = np.stack([np.concatenate([left, right]), np.concatenate([ys, ys])], axis=1).astype(np.float64)  # (P, 2)
    centre = (size - 1) / 2.0  # turned about the image centre
    pts = rotate(pts - centre, -angle)  # (P, 2) about the centre, unscaled
    lo, hi = MARGIN, size - 1 - MARGIN  # allowed coordinates per axis
    span = pts.max(axis=0) - pts.min(axis=0)
    scale = float(min(scale, *((hi - lo) / np.maximum(span, 1e-9))))
    ext_lo, ext_hi = centre + scale * pts.min(axis=0), centre + scale * pts.max(axis=0)
    t_lo = np.ceil(snap(np.maximum(-max_t, lo - ext_lo)))  # snapped: a last-ulp difference cannot move a bound
    t_hi = np.floor(snap(np.minimum(max_t, hi - ext_hi)))
    t_hi = np.maximum(t_hi, t_lo)
    t = np.floor(snap(t_lo + u * (t_hi - t_lo)) + 0.5)
    return Affine(angle, scale, (int(t[0]), int(t[1])))


def apply_affine(images: Sequence[np.ndarray], a: Affine, fill: int = WHITE) -> list[np.ndarray]:
    """Each image (H, W, C), all of one size, resampled by `a` with nearest neighbours; pixels from outside the
    frame get `fill`.

    Each output pixel q samples the input at centre + R(-angle) (q - centre - translate) / scale, snapped and
    rounded half up (coords.nearest_pixel): element-wise float64, the same bits on any CPU.
    """
    height, width = images[0].shape[:2]
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)  # (H, W) each
    q = np.stack([xs, ys], axis=-1) - centre - np.array(a.translate, dtype=np.float64)  # (H, W, 2)
    src = nearest_pixel(rotate(q, a.angle) / a.scale + centre)  # (H, W, 2) int: (x, y) of the sampled pixel
    inside = (src[..., 0] >= 0) & (src[..., 0] < width) & (src[..., 1] >= 0) & (src[..., 1] < height)  # (H, W)
    src_y, src_x = src[..., 1][inside], src[..., 0][inside]
    out = []
    for image in images:
        resampled = np.full_like(image, fill)
        resampled[inside] = image[src_y, src_x]
        out.append(resampled)
    return out


def at_border(mask: np.ndarray) -> bool:
    """Whether a (H, W) bool mask has a pixel on the outermost rows or columns."""
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def outline_closed(outline: np.ndarray, filled: np.ndarray) -> bool:
    """Whether an outline still separates the polygon's inside from the outside.

    outline: (H, W) bool, the input's painted pixels; filled: (H, W) bool, the target's. The outline is closed when
    no 4-connected group of white input pixels holds both a pixel inside the filled region and one outside it.
    """
    white = ~outline
    groups, n = label(white, connectivity=1, return_num=True)  # 4-connected: a diagonal outline step does not leak
    inside = np.zeros(n + 1, dtype=bool)
    inside[groups[white & filled]] = True
    outside = np.zeros(n + 1, dtype=bool)
    outside[groups[white & ~filled]] = True
    return not (inside[1:] & outside[1:]).any()


def pair_seed(seed: int, index: int, copy: int) -> int:
    """The seed of one augmented copy: independent streams from (seed, sample index, copy number)."""
    return int(np.random.SeedSequence([seed, index, copy]).generate_state(1, dtype=np.uint64)[0])


class Augmenter:
    """Joint geometric augmentation of (input, target) pairs, configured by an AugmentConfig."""

    def __init__(self, cfg: AugmentConfig, max_tries: int = MAX_TRIES) -> None:
        self.cfg = cfg
        self.max_tries = max_tries

    def exact(self, images: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        """The steps that move pixels and never resample: flips, then a turn by k * 90 degrees (the same for all
        images; each (H, W, 3)). Draws from rng in a fixed order: hflip, vflip, k."""
        hflip, vflip = rng.random() < self.cfg.hflip, rng.random() < self.cfg.vflip
        k = int(rng.integers(0, 4)) if self.cfg.rot90 else 0
        out = []
        for img in images:
            img = img[:, ::-1] if hflip else img
            img = img[::-1] if vflip else img
            out.append(np.ascontiguousarray(np.rot90(img, k)))  # counter-clockwise on screen
        return out

    def __call__(self, inp: np.ndarray, tgt: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """One augmented copy of a pair: (input, target, affine_used), arrays uint8 (H, W, 3).

        Draws until a result passes the checks in this module's docstring; after `max_tries` rejections applies
        only the exact steps (affine_used=False). No global random state is read or changed.
        """
        outline, filled = painted_mask(inp), painted_mask(tgt)  # (H, W)
        orig_border, orig_closed = at_border(filled), outline_closed(outline, filled)
        # JPEG noise beside the line is painted (< 240) outside the fill: such an input has uncovered pixels already
        orig_covered = not (outline & ~filled).any()
        rng = np.random.default_rng(seed)
        for _ in range(self.max_tries):
            x, y = self.exact([inp, tgt], rng)
            a = in_frame_affine(painted_mask(x) | painted_mask(y), self.cfg, rng)  # one draw for both images
            xa, ya = apply_affine([x, y], a)
            a_outline, a_filled = painted_mask(xa), painted_mask(ya)  # (H, W)
            if not orig_border and at_border(a_filled):
                continue
            if orig_covered and (a_outline & ~a_filled).any():  # the fill no longer covers the outline
                continue
            if orig_closed and not outline_closed(a_outline, a_filled):
                continue
            return xa, ya, True
        x, y = self.exact([inp, tgt], rng)
        return x, y, False


@dataclass(frozen=True)
class _Job:
    """One training sample's copies, for a worker: what it reads, where the copies go, and whether the grid shows
    them (then the first copy comes back as arrays; otherwise only names travel between processes)."""

    sample: ayna.Sample
    index: int
    cfg: AugmentConfig
    seed: int
    max_tries: int
    dst: Path
    shown: bool


def _augment_sample(job: _Job) -> tuple[list[tuple[int, str, str, bool]], list[np.ndarray] | None]:
    """Write every copy of one sample: ([(copy, input name, output name, affine used)], grid tiles or None). A pure
    function of the job (each copy seeded by pair_seed), run by any worker."""
    augmenter = Augmenter(job.cfg, job.max_tries)
    inp, tgt = ayna.load_image(job.sample.input_path), ayna.load_image(job.sample.output_path)
    written, tiles = [], None
    for k in range(1, job.cfg.copies + 1):
        a_inp, a_tgt, affine = augmenter(inp, tgt, pair_seed(job.seed, job.index, k))
        a_in, a_out = augmented_names(job.sample, job.index, k)
        ayna.write_png(job.dst / ayna.INPUTS / a_in, a_inp)
        ayna.write_png(job.dst / ayna.OUTPUTS / a_out, a_tgt)
        written.append((k, a_in, a_out, affine))
        if k == 1 and job.shown:
            tiles = [a_inp, a_tgt]
    return written, tiles


def augmented_names(sample: ayna.Sample, index: int, copy: int) -> tuple[str, str]:
    """(input, output) file names of an augmented copy; they keep the shape word so it can be guessed again."""
    prefix = f"aug{copy}_{index:05d}_"
    return prefix + sample.input_path.name, prefix + sample.output_path.name


@dataclass
class AugmentResult:
    manifest: pd.DataFrame  # one row per training sample written (originals first)
    grid: np.ndarray  # (H', W', 3) uint8 sample grid: original input, original target, augmented input, target
    affine_dropped: int  # copies for which no affine draw passed the checks (flips/90-degree turns only)


def augment_dataset(data_dir: str | Path, out_dir: str | Path, cfg: AugmentConfig, seed: int,
                    grid_rows: int = 8, max_tries: int = MAX_TRIES) -> AugmentResult:
    """Write `out_dir/training` (originals + augmented copies, Ayna layout) and `out_dir/manifest.csv`.

    data_dir is a dataset written by ingest (its `training/` split is read; validation is never augmented).
    out_dir is created and must not exist: use it inside fileio.atomic_output.
    """
    src = Path(data_dir) / SPLIT
    samples = ayna.read_split(src)
    dst = Path(out_dir) / SPLIT
    (dst / ayna.INPUTS).mkdir(parents=True)
    (dst / ayna.OUTPUTS).mkdir(parents=True)

    # Originals: copied byte for byte; inputs shared between entries are copied once.
    for s in samples:
        if not (dst / ayna.INPUTS / s.input_path.name).exists():
            shutil.copyfile(s.input_path, dst / ayna.INPUTS / s.input_path.name)
        shutil.copyfile(s.output_path, dst / ayna.OUTPUTS / s.output_path.name)
    in_names = [s.input_path.name for s in samples]
    out_names = [s.output_path.name for s in samples]
    colours = [s.colour for s in samples]
    rgb = np.array([s.rgb for s in samples], dtype=np.uint8).reshape(-1, 3)
    rows = [{**r, "copy": 0} for r in ayna.manifest_rows(SPLIT, colours, rgb, [s.shape for s in samples],
                                                         in_names, out_names)]

    show = set(np.linspace(0, len(samples) - 1, min(grid_rows, len(samples))).round().astype(int).tolist())
    grid_tiles: dict[int, list[np.ndarray]] = {}
    dropped = 0
    jobs = (_Job(s, j, cfg, seed, max_tries, dst, j in show) for j, s in enumerate(samples))
    for j, (written, tiles) in enumerate(ordered_map(_augment_sample, jobs, cfg.workers)):  # in the samples' order
        s = samples[j]
        for k, a_in, a_out, affine in written:
            in_names.append(a_in)
            out_names.append(a_out)
            colours.append(s.colour)
            row, = ayna.manifest_rows(SPLIT, [s.colour], rgb[j:j + 1], [s.shape], [a_in], [a_out])
            rows.append({**row, "copy": k})
            dropped += not affine
        if tiles is not None:
            grid_tiles[j] = tiles
    ayna.write_data_json(dst, colours, in_names, out_names)
    manifest = ayna.write_manifest(Path(out_dir) / ayna.MANIFEST, rows)

    grid_rows_list = []
    for j in sorted(show):
        originals = [ayna.load_image(samples[j].input_path), ayna.load_image(samples[j].output_path)]
        grid_rows_list.append(originals + grid_tiles.get(j, []))
    return AugmentResult(manifest, tile_grid(grid_rows_list), dropped)
