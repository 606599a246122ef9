"""Geometric augmentation of training pairs, applied identically to input and target.

One torchvision.transforms.v2 pipeline (flips, random 90-degree turns, affine rotate/scale/translate with NEAREST
interpolation and white fill) is called once on the pair (two tv_tensors.Image), so both get the same parameters
and both stay two-valued. Colours are never touched.

Each augmented copy is seeded on its own (from seed, sample index and copy number), so results are byte-identical
between runs and do not depend on the order or on anything else that uses torch's global random state.

The affine step draws its translation (and, if needed, shrinks its scale) so that the polygon stays inside the
frame (InFrameAffine). A draw is still rejected and redrawn when it
- leaves a painted pixel on the image border (part of the polygon would be cut off), or
- opens a gap in the outline, so that the white inside of the polygon leaks into the outside: nearest resampling of
  a thin, rotated, shrunk line drops pixels (about a quarter of draws at the default ranges for 2 px outlines),
unless the original pair already had that property. The fill covering the outline holds by construction (the same
pixels are sampled in both images) and is checked too. After `max_tries` rejected draws the copy gets only the
exact steps (flips and 90-degree turns), which move pixels without resampling and so cannot break anything.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from skimage.measure import label
from torchvision import tv_tensors
from torchvision.transforms import v2

from polycolor.config import AugmentConfig
from polycolor.data import ayna
from polycolor.images import WHITE, painted_mask

MAX_TRIES = 10
SPLIT = "training"  # only training data is augmented; validation is never touched


class RandomRot90(v2.Transform):
    """Turn by a random multiple of 90 degrees (exact: pixels are moved, never resampled)."""

    def make_params(self, flat_inputs: list) -> dict:
        return {"k": int(torch.randint(0, 4, ()).item())}

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        if params["k"] == 0:
            return inpt
        out = torch.rot90(inpt.as_subclass(torch.Tensor), params["k"], dims=(-2, -1))  # (..., C, W, H) turned
        return tv_tensors.wrap(out, like=inpt)


class InFrameAffine(v2.RandomAffine):
    """v2.RandomAffine (no shear) whose translation is drawn only from the part of [-translate, translate] * side
    that keeps every painted pixel of the inputs inside the frame, with a 1 px white margin.

    Rotation and scale are drawn as in RandomAffine; a scale too large for the frame is reduced until the painted
    region fits. Inputs that already touch the border are transformed as by RandomAffine.
    """

    MARGIN = 1.5  # px; 1 px of white plus half a pixel of slack for nearest resampling

    def make_params(self, flat_inputs: list) -> dict:
        images = [x for x in flat_inputs if isinstance(x, tv_tensors.Image)]
        height, width = images[0].shape[-2:]
        painted = torch.zeros((height, width), dtype=torch.bool)
        for img in images:
            painted |= painted_mask(img, channel_axis=-3).reshape(-1, height, width).any(dim=0)  # (H, W)
        rows = painted.any(dim=1)  # (H,)
        if not rows.any() or at_border(painted):
            return super().make_params(flat_inputs)
        # The leftmost and rightmost painted pixel of each row span the same convex hull as all of them.
        ys = torch.nonzero(rows).flatten()
        left = painted[ys].to(torch.uint8).argmax(dim=1)
        right = width - 1 - painted[ys].flip(1).to(torch.uint8).argmax(dim=1)
        xs, ys = torch.cat([left, right]), torch.cat([ys, ys])
        angle = float(torch.empty(1).uniform_(self.degrees[0], self.degrees[1]).item())
        scale = float(torch.empty(1).uniform_(*self.scale).item()) if self.scale is not None else 1.0
        u = torch.rand(2).numpy()
        size = np.array([width, height], dtype=np.float64)
        centre = (size - 1) / 2.0  # torchvision turns about the image centre
        a = np.deg2rad(angle)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])  # (out x, y) = rot @ (in x, y), y down
        pts = (np.stack([xs.numpy(), ys.numpy()], axis=1) - centre) @ rot.T  # (P, 2) about the centre, unscaled
        lo, hi = self.MARGIN, size - 1 - self.MARGIN  # allowed coordinates per axis
        span = pts.max(axis=0) - pts.min(axis=0)
        scale = float(min(scale, *((hi - lo) / np.maximum(span, 1e-9))))
        ext_lo, ext_hi = centre + scale * pts.min(axis=0), centre + scale * pts.max(axis=0)
        max_t = np.array(self.translate if self.translate is not None else (0.0, 0.0)) * size
        t_lo = np.ceil(np.maximum(-max_t, lo - ext_lo))
        t_hi = np.floor(np.minimum(max_t, hi - ext_hi))
        t_hi = np.maximum(t_hi, t_lo)
        translate = np.round(t_lo + u * (t_hi - t_lo)).astype(int)
        return dict(angle=angle, translate=(int(translate[0]), int(translate[1])), scale=scale, shear=(0.0, 0.0))


def at_border(mask: np.ndarray | torch.Tensor) -> bool:
    """Whether a (H, W) bool mask (numpy or torch) has a pixel on the outermost rows or columns."""
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
    """The torch seed of one augmented copy: independent streams from (seed, sample index, copy number)."""
    return int(np.random.SeedSequence([seed, index, copy]).generate_state(1, dtype=np.uint64)[0])


class Augmenter:
    """Joint geometric augmentation of (input, target) pairs, configured by an AugmentConfig."""

    def __init__(self, cfg: AugmentConfig, max_tries: int = MAX_TRIES) -> None:
        exact: list[v2.Transform] = [v2.RandomHorizontalFlip(cfg.hflip), v2.RandomVerticalFlip(cfg.vflip)]
        if cfg.rot90:
            exact.append(RandomRot90())
        self.exact = v2.Compose(exact)  # moves pixels, never resamples
        self.affine = InFrameAffine(
            degrees=cfg.degrees,
            translate=(cfg.translate, cfg.translate) if cfg.translate > 0 else None,
            scale=cfg.scale,
            interpolation=v2.InterpolationMode.NEAREST,  # keeps both images two-valued
            fill=WHITE,  # the Ayna background
        )
        self.transform = v2.Compose([self.exact, self.affine])
        self.max_tries = max_tries

    def __call__(self, inp: np.ndarray, tgt: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """One augmented copy of a pair: (input, target, affine_used), arrays uint8 (H, W, 3).

        Draws until a result passes the checks in this module's docstring; after `max_tries` rejections applies
        only the exact steps (affine_used=False). torch's global random state is left as it was.
        """
        x = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(inp)).permute(2, 0, 1))  # (3, H, W)
        y = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(tgt)).permute(2, 0, 1))  # (3, H, W)
        outline, filled = painted_mask(x.numpy(), channel_axis=0), painted_mask(y.numpy(), channel_axis=0)  # (H, W)
        orig_border, orig_closed = at_border(filled), outline_closed(outline, filled)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed also queues CUDA/XPU seeding
            for _ in range(self.max_tries):
                xa, ya = self.transform(x, y)  # one call: both images get the same parameters
                a_outline, a_filled = painted_mask(xa.numpy(), 0), painted_mask(ya.numpy(), 0)  # (H, W)
                if not orig_border and at_border(a_filled):
                    continue
                if (a_outline & ~a_filled).any():  # an outline pixel left uncovered (cannot happen; checked anyway)
                    continue
                if orig_closed and not outline_closed(a_outline, a_filled):
                    continue
                return _hwc(xa), _hwc(ya), True
            xa, ya = self.exact(x, y)
            return _hwc(xa), _hwc(ya), False


def _hwc(chw: torch.Tensor) -> np.ndarray:
    return chw.permute(1, 2, 0).numpy().copy()  # (3, H, W) -> (H, W, 3), owning its memory


@dataclass
class AugmentedPair:
    index: int  # the source sample's entry in data.json
    copy: int  # 1..copies
    input: np.ndarray  # (H, W, 3) uint8
    target: np.ndarray  # (H, W, 3) uint8
    affine: bool  # False when every affine draw failed the checks and only flips/90-degree turns were applied


def iter_augmented(samples: Sequence[ayna.Sample], cfg: AugmentConfig, seed: int,
                   max_tries: int = MAX_TRIES) -> Iterator[AugmentedPair]:
    """Decode each sample and yield its `cfg.copies` augmented copies, one pair at a time (memory stays small)."""
    augmenter = Augmenter(cfg, max_tries)
    for j, s in enumerate(samples):
        inp, tgt = ayna.load_image(s.input_path), ayna.load_image(s.output_path)
        for k in range(1, cfg.copies + 1):
            a_inp, a_tgt, affine = augmenter(inp, tgt, pair_seed(seed, j, k))
            yield AugmentedPair(j, k, a_inp, a_tgt, affine)


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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny per-pair ops: extra intra-op threads only add overhead (and fight other jobs)
    try:
        for pair in iter_augmented(samples, cfg, seed, max_tries):
            s = samples[pair.index]
            a_in, a_out = augmented_names(s, pair.index, pair.copy)
            ayna.write_png(dst / ayna.INPUTS / a_in, pair.input)
            ayna.write_png(dst / ayna.OUTPUTS / a_out, pair.target)
            in_names.append(a_in)
            out_names.append(a_out)
            colours.append(s.colour)
            row, = ayna.manifest_rows(SPLIT, [s.colour], rgb[pair.index:pair.index + 1], [s.shape], [a_in], [a_out])
            rows.append({**row, "copy": pair.copy})
            dropped += not pair.affine
            if pair.copy == 1 and pair.index in show:
                grid_tiles[pair.index] = [pair.input, pair.target]
    finally:
        torch.set_num_threads(threads)
    ayna.write_data_json(dst, colours, in_names, out_names)
    manifest = ayna.write_manifest(Path(out_dir) / ayna.MANIFEST, rows)

    grid_rows_list = []
    for j in sorted(show):
        originals = [ayna.load_image(samples[j].input_path), ayna.load_image(samples[j].output_path)]
        grid_rows_list.append(originals + grid_tiles.get(j, []))
    return AugmentResult(manifest, tile_grid(grid_rows_list), dropped)


def tile_grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 4, gap_value: int = 160) -> np.ndarray:
    """Tile rows of equally sized (H, W, 3) uint8 images into one image, separated by grey gaps."""
    n_cols = max(len(r) for r in rows)
    h, w, _ = rows[0][0].shape
    grid = np.full((len(rows) * (h + gap) + gap, n_cols * (w + gap) + gap, 3), gap_value, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            y, x = gap + i * (h + gap), gap + j * (w + gap)
            grid[y:y + h, x:x + w] = tile
    return grid
