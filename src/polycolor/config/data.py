"""The data sections: how ingest makes the data set and how augment grows it, and the seed both draw from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from polycolor.colours import SHAPES, resolve_colour
from polycolor.config.base import StageParams, _check, _range, validate_sections
from polycolor.errors import ConfigError, PolycolorError
from polycolor.paths import repo_path

DEFAULT_SEED = 42  # params.yaml's top-level `seed`: the data generator's, augmentation's and the generated sets'


def check_seed(seed: int) -> None:
    # numpy's SeedSequence (data generator, augmentation) rejects negative seeds
    _check(seed >= 0, "seed", seed, "must be >= 0")


@dataclass(frozen=True)
class IngestConfig:
    source: str = "synthetic"  # "synthetic" or a path to an Ayna-layout folder or .zip
    image_size: int = 128  # square side in pixels
    train_samples: int = 2000  # synthetic training pairs
    val_samples: int = 200  # synthetic validation pairs
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "cyan", "magenta", "orange", "purple")
    random_colour_fraction: float = 0.0  # share of samples painted a random #rrggbb instead of a named colour
    scale: tuple[float, float] = (0.25, 0.42)  # nominal radius (a circle's radius) / image side; see synth.py
    rotation: tuple[float, float] = (0.0, 360.0)  # degrees
    offset: float = 0.12  # max centre offset from the image centre, as a fraction of the side
    outline_width: tuple[int, int] = (2, 3)  # pixels, inclusive range
    # Variation beyond the Ayna look, each for a share of the samples (0 = off; shares combine independently).
    gap_fraction: float = 0.0  # outlines with gaps; the target is the polygon as if closed
    gap_count: tuple[int, int] = (1, 3)  # gaps per gappy outline, inclusive range
    gap_length: tuple[int, int] = (1, 6)  # pixels along the edge, inclusive range
    wobble_fraction: float = 0.0  # hand-drawn outlines whose edges wobble; the target fills the wobbly polygon
    wobble_amplitude: float = 2.0  # pixels: the most a wobbly edge leaves the straight line
    novel_shape_fraction: float = 0.0  # shapes beyond the 8 (synth.NOVEL_KINDS: N-gons, stars, random, cross, arrow)
    wide_pose_fraction: float = 0.0  # poses from wide_scale and wide_offset instead of scale and offset
    wide_scale: tuple[float, float] = (0.08, 0.5)  # smaller and larger shapes
    wide_offset: float = 0.4  # up to the border (synth keeps a 2 px margin)
    # Inputs as people feed a painter (synth.py): the target stays two-valued.
    jpeg_fraction: float = 0.0  # inputs JPEG-compressed (PIL, libjpeg-turbo integer DCT) and decoded again
    jpeg_quality: tuple[int, int] = (60, 95)  # JPEG quality, inclusive range
    pen_fraction: float = 0.0  # outlines in a dark pen colour of any hue instead of black
    paper_fraction: float = 0.0  # drawings as a scan or photo of paper shows them: tinted page, uneven light, grain
    antialias_fraction: float = 0.0  # outlines drawn anti-aliased: grey edge pixels (4x supersampled, box-averaged)
    vertex_gap_fraction: float = 0.0  # share of the gappy outlines whose gaps are cut at vertices (corners cut off)
    downscale_fraction: float = 0.0  # pairs drawn at a factor x the size, then min-pooled down (as the painter does)
    downscale_factors: tuple[int, ...] = (2, 4)  # the factor, one of these per sample
    workers: int = 0  # processes drawing the synthetic pairs (0: every core); the bytes are the same for any

    def validate(self) -> None:
        _check(self.image_size >= 16, "ingest.image_size", self.image_size, "must be >= 16")
        _check(self.workers >= 0, "ingest.workers", self.workers, "must be >= 0 (0: every core)")
        _check(self.train_samples >= 1, "ingest.train_samples", self.train_samples, "must be >= 1")
        _check(self.val_samples >= 1, "ingest.val_samples", self.val_samples, "must be >= 1")
        _check(len(self.shapes) > 0, "ingest.shapes", self.shapes, "must name at least one shape")
        for s in self.shapes:
            _check(s in SHAPES, "ingest.shapes", s, f"is not a known shape ({', '.join(SHAPES)})")
        _check(len(self.colours) > 0, "ingest.colours", self.colours, "must name at least one colour")
        for c in self.colours:
            try:
                resolve_colour(c)
            except PolycolorError as e:
                raise ConfigError(f"ingest.colours: {e}") from None
        _check(0.0 <= self.random_colour_fraction <= 1.0, "ingest.random_colour_fraction",
               self.random_colour_fraction, "must be in [0, 1]")
        _range(self.scale, "ingest.scale", 0.05, 0.5)
        _range(self.rotation, "ingest.rotation", -3600.0, 3600.0)
        _check(0.0 <= self.offset <= 0.4, "ingest.offset", self.offset, "must be in [0, 0.4]")
        # Pixel-valued limits grow with the image above 128 px, so a 512 px set can scale its widths and gaps by 4.
        px = max(1.0, self.image_size / 128)
        _range(self.outline_width, "ingest.outline_width", 1, int(16 * px))
        for key in ("gap_fraction", "wobble_fraction", "novel_shape_fraction", "wide_pose_fraction",
                    "jpeg_fraction", "antialias_fraction", "vertex_gap_fraction", "downscale_fraction",
                    "pen_fraction", "paper_fraction"):
            v = getattr(self, key)
            _check(0.0 <= v <= 1.0, f"ingest.{key}", v, "must be in [0, 1]")
        _range(self.gap_count, "ingest.gap_count", 1, 10)
        _range(self.gap_length, "ingest.gap_length", 1, int(64 * px))
        _check(0.0 <= self.wobble_amplitude <= 8.0 * px, "ingest.wobble_amplitude", self.wobble_amplitude,
               f"must be in [0, {8.0 * px:g}]")
        _range(self.jpeg_quality, "ingest.jpeg_quality", 10, 100)
        _check(len(self.downscale_factors) > 0 and all(2 <= f <= 8 for f in self.downscale_factors),
               "ingest.downscale_factors", list(self.downscale_factors), "must be a non-empty list of integers 2..8")
        _check(self.downscale_fraction == 0 or self.image_size * max(self.downscale_factors) <= 2048,
               "ingest.downscale_factors", list(self.downscale_factors),
               f"times image_size {self.image_size} must be <= 2048 px (the size a pair is drawn at)")
        _range(self.wide_scale, "ingest.wide_scale", 0.03, 0.5)
        _check(0.0 <= self.wide_offset <= 0.5, "ingest.wide_offset", self.wide_offset, "must be in [0, 0.5]")

    def source_path(self) -> Path:
        """`source` as a path, resolved against the project root (see paths.repo_path)."""
        return repo_path(self.source)


@dataclass(frozen=True)
class AugmentConfig:
    copies: int = 1  # augmented copies written per training sample (the originals are kept too)
    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.5  # probability of a vertical flip
    rot90: bool = True  # random multiple of 90 degrees
    degrees: float = 30.0  # affine rotation range +-degrees
    scale: tuple[float, float] = (0.8, 1.15)  # affine scale range
    translate: float = 0.1  # affine translation, fraction of the side
    workers: int = 0  # processes augmenting (0: every core); the bytes are the same for any

    def validate(self) -> None:
        _check(self.copies >= 0, "augment.copies", self.copies, "must be >= 0")
        _check(0.0 <= self.hflip <= 1.0, "augment.hflip", self.hflip, "must be in [0, 1]")
        _check(0.0 <= self.vflip <= 1.0, "augment.vflip", self.vflip, "must be in [0, 1]")
        _check(0.0 <= self.degrees <= 180.0, "augment.degrees", self.degrees, "must be in [0, 180]")
        _range(self.scale, "augment.scale", 0.1, 4.0)
        _check(0.0 <= self.translate <= 0.5, "augment.translate", self.translate, "must be in [0, 0.5]")
        _check(self.workers >= 0, "augment.workers", self.workers, "must be >= 0 (0: every core)")


@dataclass(frozen=True)
class DataParams(StageParams):
    """What the ingest and augment stages read of params.yaml: the seed and their own sections."""

    seed: int = DEFAULT_SEED
    ingest: IngestConfig = IngestConfig()
    augment: AugmentConfig = AugmentConfig()

    def validate(self) -> None:
        check_seed(self.seed)
        validate_sections(self)
