"""params.yaml parsed once into typed dataclasses.

Every stage calls `load_params()` and reads only its own section. Validation errors are one line that names the
key and the value (`train.lr must be > 0, got -1.0`), raised as ConfigError.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from polycolor.colours import SHAPES, resolve_colour
from polycolor.errors import ConfigError, PolycolorError
from polycolor.paths import repo_path

CONDITIONINGS = ("bottleneck", "input", "film")
COLOUR_ENCODINGS = ("embedding", "rgb")
HEADS = ("tanh", "composite")
FLOOD_FILL_MODES = ("off", "clean")  # paint.flood_fill
RESCALE_FACTORS = (0.5, 1.0, 2.0)  # train.rescale: a batch min-pooled to half, as is, or grown to twice its size
IMAGE_LOSS_TERMS = ("l1", "l2", "perceptual")  # loss terms on the painted image; `mask` needs the composite head


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
    antialias_fraction: float = 0.0  # outlines drawn anti-aliased: grey edge pixels (4x supersampled, box-averaged)
    vertex_gap_fraction: float = 0.0  # share of the gappy outlines whose gaps are cut at vertices (corners cut off)
    downscale_fraction: float = 0.0  # pairs drawn at a factor x the size, then min-pooled down (as the painter does)
    downscale_factors: tuple[int, ...] = (2, 4)  # the factor, one of these per sample

    def validate(self) -> None:
        _check(self.image_size >= 16, "ingest.image_size", self.image_size, "must be >= 16")
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
                    "jpeg_fraction", "antialias_fraction", "vertex_gap_fraction", "downscale_fraction"):
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

    def validate(self) -> None:
        _check(self.copies >= 0, "augment.copies", self.copies, "must be >= 0")
        _check(0.0 <= self.hflip <= 1.0, "augment.hflip", self.hflip, "must be in [0, 1]")
        _check(0.0 <= self.vflip <= 1.0, "augment.vflip", self.vflip, "must be in [0, 1]")
        _check(0.0 <= self.degrees <= 180.0, "augment.degrees", self.degrees, "must be in [0, 180]")
        _range(self.scale, "augment.scale", 0.1, 4.0)
        _check(0.0 <= self.translate <= 0.5, "augment.translate", self.translate, "must be in [0, 0.5]")


@dataclass(frozen=True)
class ModelConfig:
    widths: tuple[int, ...] = (16, 32, 64, 128)  # channels per encoder level; the last is the bottleneck
    conditioning: str = "bottleneck"  # bottleneck | input | film
    colour_encoding: str = "rgb"  # embedding | rgb
    embed_dim: int = 128  # size of the colour embedding
    attention: bool = False  # self-attention at the bottleneck
    head: str = "composite"  # tanh: free RGB; composite: a mask painted with the requested colour over white
    work_size: int = 0  # px the UNet runs at (inputs min-pooled or grown to it); 0 = the data's image size
    native_width: int = 0  # channels of the head at the input's own size (0: none, the mask comes at work_size)
    fill: bool = False  # the fill layer (nn/fill.py): regions the mask encloses are painted too
    fill_grad_steps: int = 16  # path steps the fill layer's backward gathers

    def validate(self) -> None:
        _check(len(self.widths) >= 2, "model.widths", self.widths, "needs at least 2 levels")
        _check(self.work_size >= 0 and self.work_size % 2 ** (len(self.widths) - 1) == 0, "model.work_size",
               self.work_size, f"must be 0 or a multiple of 2**{len(self.widths) - 1} (the UNet's levels)")
        _check(self.native_width >= 0, "model.native_width", self.native_width, "must be >= 0")
        _check(self.fill_grad_steps >= 0, "model.fill_grad_steps", self.fill_grad_steps, "must be >= 0")
        _check(self.head == "composite" or (not self.fill and not self.native_width), "model.head", self.head,
               "must be composite with model.fill or model.native_width (both work on the mask)")
        for w in self.widths:
            _check(w >= 1, "model.widths", self.widths, "must all be >= 1")
        _check(self.conditioning in CONDITIONINGS, "model.conditioning", self.conditioning,
               f"must be one of {', '.join(CONDITIONINGS)}")
        _check(self.colour_encoding in COLOUR_ENCODINGS, "model.colour_encoding", self.colour_encoding,
               f"must be one of {', '.join(COLOUR_ENCODINGS)}")
        _check(self.embed_dim >= 1, "model.embed_dim", self.embed_dim, "must be >= 1")
        _check(self.head in HEADS, "model.head", self.head, f"must be one of {', '.join(HEADS)}")


@dataclass(frozen=True)
class LossConfig:
    l1: float = 1.0  # weight of the L1 term
    l2: float = 0.5  # weight of the MSE term
    perceptual: float = 0.1  # weight of the perceptual term
    perceptual_net: str = "ssim"  # ssim (no weights) | vgg16 (weights from vgg16_weights)
    vgg16_weights: str = ""  # local path to torchvision VGG16 weights, used only with perceptual_net: vgg16
    mask: float = 1.0  # weight of the mask BCE term (composite head only)
    wall: float = 0.0  # weight of BCE on the mask before the fill layer (model.fill only)
    boundary: float = 0.0  # the mask BCE weighs the target's boundary pixels 1 + this

    def validate(self) -> None:
        _check(self.wall >= 0.0, "loss.wall", self.wall, "must be >= 0")
        _check(self.boundary >= 0.0, "loss.boundary", self.boundary, "must be >= 0")
        weights = {k: getattr(self, k) for k in (*IMAGE_LOSS_TERMS, "mask")}
        for key, v in weights.items():
            _check(v >= 0.0, f"loss.{key}", v, "must be >= 0")
        _check(self.perceptual_net in ("ssim", "vgg16"), "loss.perceptual_net", self.perceptual_net,
               "must be ssim or vgg16")
        # A loss with no term is no loss at all (the sum of nothing): nothing would train.
        _check(any(v > 0 for v in weights.values()), "loss", weights, "needs at least one weight above 0")

    def validate_for(self, head: str) -> None:
        """The tanh head has no mask, so there loss.mask is no term: some image term must be active."""
        image_terms = {k: getattr(self, k) for k in IMAGE_LOSS_TERMS}
        _check(head != "tanh" or any(v > 0 for v in image_terms.values()), "loss", image_terms,
               "needs l1, l2 or perceptual above 0 with model.head tanh (it has no mask for loss.mask)")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 3e-3
    batch_size: int = 16  # the global batch: each of the nproc processes takes batch_size / nproc of it
    epochs: int = 5
    weight_decay: float = 1e-4
    schedule: str = "plateau"  # plateau: ReduceLROnPlateau on val loss; cosine: per-step cosine decay to 0
    plateau_patience: int = 1  # epochs without val-loss improvement before the lr is cut
    plateau_factor: float = 0.5
    early_stopping_patience: int = 5  # epochs without improvement before stopping; 0 disables
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto (fp16 on CUDA, off on CPU) | true | false
    num_workers: int = 0  # DataLoader workers; the data sits in memory, so 0 is fastest on 2 cores
    threads: int = 0  # torch intra-op threads on CPU; 0 keeps torch's default
    channels_last: bool = True  # NHWC memory format: about 1.4x faster convolutions on these CPUs
    grid_samples: int = 4  # rows of the per-epoch sample grid logged to MLflow
    nproc: int = 1  # training processes per node; > 1 launches DDP ranks with torchrun (docs/scaling.md)
    rescale: tuple[float, ...] = (1.0,)  # each batch drawn at one of these factors (0.5: min-pooled, 2: grown)

    def validate(self) -> None:
        _check(self.lr > 0, "train.lr", self.lr, "must be > 0")
        _check(len(self.rescale) >= 1 and all(f in RESCALE_FACTORS for f in self.rescale), "train.rescale",
               self.rescale, f"must be a non-empty list of {', '.join(map(str, RESCALE_FACTORS))}")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "must be >= 1")
        _check(self.nproc >= 1, "train.nproc", self.nproc, "must be >= 1")
        _check(self.batch_size % self.nproc == 0, "train.batch_size", self.batch_size,
               f"must be divisible by train.nproc ({self.nproc}): it is the global batch, split over the processes")
        _check(self.epochs >= 1, "train.epochs", self.epochs, "must be >= 1")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "must be >= 0")
        _check(self.schedule in ("plateau", "cosine"), "train.schedule", self.schedule, "must be plateau or cosine")
        _check(self.plateau_patience >= 0, "train.plateau_patience", self.plateau_patience, "must be >= 0")
        _check(0 < self.plateau_factor < 1, "train.plateau_factor", self.plateau_factor, "must be in (0, 1)")
        _check(self.early_stopping_patience >= 0, "train.early_stopping_patience",
               self.early_stopping_patience, "must be >= 0")
        _check(self.device in ("auto", "cpu", "cuda"), "train.device", self.device, "must be auto, cpu or cuda")
        _check(self.amp in ("auto", "true", "false"), "train.amp", self.amp, "must be auto, true or false")
        _check(self.num_workers >= 0, "train.num_workers", self.num_workers, "must be >= 0")
        _check(self.threads >= 0, "train.threads", self.threads, "must be >= 0")
        _check(self.grid_samples >= 1, "train.grid_samples", self.grid_samples, "must be >= 1")


@dataclass(frozen=True)
class ExtraSet:
    path: str  # an Ayna-layout split folder (inputs/, outputs/, data.json)
    required: bool = False  # a missing optional set is skipped with a warning and recorded as skipped


@dataclass(frozen=True)
class EvaluateConfig:
    extra_sets: dict[str, ExtraSet] = field(default_factory=dict)
    ood_samples: int = 64  # freshly generated polygons beyond the training pose ranges; 0 disables
    ood_scale: tuple[float, float] = (0.15, 0.48)
    ood_offset: float = 0.2
    unseen_colour_samples: int = 64  # fresh polygons painted random #rrggbb colours no training sample had; 0 disables
    robust_samples: int = 64  # per generated robustness set (gappy, jpeg, native_*, ...: evaluation/sets.py); 0 = none
    thick_thin_width: tuple[int, int] = (1, 6)  # thick_thin: half the outlines this thin (px), half this thick
    native_sizes: tuple[int, ...] = (64, 256, 512)  # the native_<size> sets: the training geometry drawn at each size
    gappy_sizes: tuple[int, ...] = (256, 512)  # the gappy_<size> sets: gappy outlines drawn at these sizes
    jpeg_quality: int = 80  # the jpeg set: inputs JPEG-compressed at this quality
    behaviour_samples: int = 32  # validation samples the behavioural (invariance) shares are measured on; 0 disables
    grid_samples: int = 8  # rows of the qualitative grid
    batch_size: int = 4  # images per forward pass (painting.painter.BATCH_SIZE, chosen by `polycolor bench`)

    def validate(self) -> None:
        _check(self.ood_samples >= 0, "evaluate.ood_samples", self.ood_samples, "must be >= 0")
        _check(self.unseen_colour_samples >= 0, "evaluate.unseen_colour_samples", self.unseen_colour_samples,
               "must be >= 0")
        _check(self.robust_samples >= 0, "evaluate.robust_samples", self.robust_samples, "must be >= 0")
        _range(self.thick_thin_width, "evaluate.thick_thin_width", 1, 16)
        for size in self.native_sizes:
            _check(16 <= size <= 4096, "evaluate.native_sizes", list(self.native_sizes), "must each be in [16, 4096]")
        for size in self.gappy_sizes:
            _check(16 <= size <= 4096, "evaluate.gappy_sizes", list(self.gappy_sizes), "must each be in [16, 4096]")
        _check(1 <= self.jpeg_quality <= 100, "evaluate.jpeg_quality", self.jpeg_quality, "must be in [1, 100]")
        _check(self.behaviour_samples >= 0, "evaluate.behaviour_samples", self.behaviour_samples, "must be >= 0")
        _range(self.ood_scale, "evaluate.ood_scale", 0.05, 0.5)
        _check(0.0 <= self.ood_offset <= 0.4, "evaluate.ood_offset", self.ood_offset, "must be in [0, 0.4]")
        _check(self.grid_samples >= 1, "evaluate.grid_samples", self.grid_samples, "must be >= 1")
        _check(self.batch_size >= 1, "evaluate.batch_size", self.batch_size, "must be >= 1")


# When a post-processing step runs: never, only for an input that is not at the model's own size (the net runs on
# a resized copy), or always.
STEP_MODES = ("off", "resized", "always")
PAINTERS = ("net", "painted")  # the network alone | the full painter, with PaintConfig's post-processing


@dataclass(frozen=True)
class PaintConfig:
    """The painter's post-processing (polycolor.painting): each step switchable, every constant here. The package
    stage stores it with the model, so predict, serve and the demo paint as evaluation measured."""

    # The defaults are the steps that never lower a score on any evaluation set (docs/evaluation.md, measured with
    # docs/experiments/paint_steps.py): at the model's own size both cost quality on some sets, on resized inputs
    # they are what makes the painting exact.
    canonical: str = "resized"  # off | resized | always: paint the canonical form (crop to the ink, smallest pose)
    snap: str = "resized"  # off | resized | always: snap the net's mask to the input's own outline
    ink_threshold: int = 128  # a pixel is ink when its darkest channel is below this (0-255): more than half covered
    gap_px: int = 4  # px at the model's size: the outline grown by this bridges gaps up to ~2 gap_px long
    clear_share: float = 0.03  # a whole region is cleared only when the net paints at most this share of it
    snap_share: float = 0.25  # a region the net paints on <= this share is cleared, on >= 1 - this filled
    enclosed_share: float = 0.75  # a painted blob whose border is at least this much outline is an interior
    flood_fill: str = "clean"  # off | clean: on a clean, closed outline the net agrees with, paint the flood fill
    agree_iou: float = 0.98  # the least IoU of the net's mask and the flood fill's for the flood fill to be used
    noise_share: float = 0.005  # an input with more near-white (noisy) pixels than this share is not clean

    def __post_init__(self) -> None:
        # YAML reads an unquoted `off` as false (and `on` as true), which _coerce hands over as "false" / "true":
        # for these switches that is the mode the user wrote: off, or the one mode that is on.
        for key, on in (("canonical", "always"), ("snap", "always"), ("flood_fill", "clean")):
            if getattr(self, key) in ("true", "false"):
                object.__setattr__(self, key, on if getattr(self, key) == "true" else "off")

    def validate(self) -> None:
        _check(self.canonical in STEP_MODES, "paint.canonical", self.canonical,
               f"must be one of {', '.join(STEP_MODES)}")
        _check(self.snap in STEP_MODES, "paint.snap", self.snap, f"must be one of {', '.join(STEP_MODES)}")
        _check(1 <= self.ink_threshold <= 255, "paint.ink_threshold", self.ink_threshold, "must be in [1, 255]")
        _check(1 <= self.gap_px <= 64, "paint.gap_px", self.gap_px, "must be in [1, 64]")
        _check(0.0 <= self.snap_share < 0.5, "paint.snap_share", self.snap_share,
               "must be in [0, 0.5) (a region cannot be both filled and cleared)")
        _check(0.0 <= self.clear_share <= self.snap_share, "paint.clear_share", self.clear_share,
               f"must be in [0, paint.snap_share = {self.snap_share}]")
        _check(0.5 <= self.enclosed_share <= 1.0, "paint.enclosed_share", self.enclosed_share,
               "must be in [0.5, 1] (stray paint beside an outline is bordered by it about half way)")
        _check(self.flood_fill in FLOOD_FILL_MODES, "paint.flood_fill", self.flood_fill,
               f"must be one of {', '.join(FLOOD_FILL_MODES)}")
        _check(0.0 <= self.agree_iou <= 1.0, "paint.agree_iou", self.agree_iou, "must be in [0, 1]")
        _check(0.0 <= self.noise_share <= 1.0, "paint.noise_share", self.noise_share, "must be in [0, 1]")


@dataclass(frozen=True)
class Gate:
    metric: str  # key in metrics/eval.json, dotted (e.g. "val.net.psnr_mean")
    min: float | None = None
    max: float | None = None

    def validate(self, key: str) -> None:
        _check_metric_name(self.metric, f"{key}.metric")
        # A gate with no bound passes every model: it would only look like a safeguard.
        _check(self.min is not None or self.max is not None, key, self.metric, "needs a min or a max")
        if self.min is not None and self.max is not None:
            _check(self.min <= self.max, key, [self.min, self.max], "must have min <= max")


@dataclass(frozen=True)
class PromoteConfig:
    metric: str = "val.net.psnr_mean"  # the metric a candidate must beat the champion on
    higher_is_better: bool = True
    min_delta: float = 0.0  # the candidate must be better by more than this
    gates: tuple[Gate, ...] = ()

    def validate(self) -> None:
        _check_metric_name(self.metric, "promote.metric")
        _check(self.min_delta >= 0.0, "promote.min_delta", self.min_delta, "must be >= 0")
        for i, gate in enumerate(self.gates):
            gate.validate(f"promote.gates[{i}]")


@dataclass(frozen=True)
class ServingConfig:
    # Largest image `polycolor predict` and the scoring server decode, in pixels (width x height), checked from
    # the file's header before decoding. Measured peak RSS of `polycolor predict` (docs/reliability.md):
    # 4096 x 4096 (the default) 1.5 GB, 12000 x 12000 6.7 GB; refused, 0.15 GB.
    max_pixels: int = 4096 * 4096

    def validate(self) -> None:
        _check(self.max_pixels >= 1, "serving.max_pixels", self.max_pixels, "must be >= 1")


@dataclass(frozen=True)
class MlflowConfig:
    experiment: str = "polycolor"
    registered_model: str = "polycolor"

    def validate(self) -> None:
        _check(bool(self.experiment.strip()), "mlflow.experiment", self.experiment, "must not be empty")
        _check(bool(self.registered_model.strip()), "mlflow.registered_model", self.registered_model,
               "must not be empty")
        # MLflow's own rule for model names; `models:/<name>@<alias>` URIs could not name it either.
        _check(not any(c in self.registered_model for c in "/:"), "mlflow.registered_model",
               self.registered_model, "must not contain '/' or ':'")


@dataclass(frozen=True)
class Config:
    seed: int = 42
    ingest: IngestConfig = IngestConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    paint: PaintConfig = PaintConfig()
    promote: PromoteConfig = PromoteConfig()
    serving: ServingConfig = ServingConfig()
    mlflow: MlflowConfig = MlflowConfig()

    def validate(self) -> None:
        # numpy's SeedSequence (data generator, augmentation) rejects negative seeds
        _check(self.seed >= 0, "seed", self.seed, "must be >= 0")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if hasattr(v, "validate"):
                v.validate()
        self.loss.validate_for(self.model.head)
        # Across sections: each of the UNet's len(widths) - 1 poolings halves the side, and the decoder must
        # come back to it exactly (a 100 px input with 4 levels would be 100 -> 50 -> 25 -> 12 -> 24 != 25).
        factor = 2 ** (len(self.model.widths) - 1)
        _check(self.ingest.image_size % factor == 0, "ingest.image_size", self.ingest.image_size,
               f"must be divisible by {factor} (2^(levels-1) for the {len(self.model.widths)} levels of model.widths)")


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {why}, got {value!r}")


def _check_metric_name(name: str, key: str) -> None:
    """A metric as registry and promote read it: `<set>.<scorer>.<metric>`, e.g. val.net.psnr_mean."""
    parts = name.split(".")
    _check(len(parts) == 3 and all(p.strip() for p in parts), key, name,
           "must be <set>.<scorer>.<metric>, e.g. val.net.psnr_mean")


def _range(pair: tuple, key: str, lo: float, hi: float) -> None:
    _check(len(pair) == 2, key, pair, "must be a [low, high] pair")
    _check(lo <= pair[0] <= pair[1] <= hi, key, list(pair), f"must satisfy {lo} <= low <= high <= {hi}")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and convert lists to tuples; raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key} must have {len(args)} items, got {value!r}")
        return tuple(_coerce(a, v, key) for a, v in zip(args, value))
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return {str(k): _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):  # YAML's .inf / .nan pass every `>` check; no param can use them
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, bool):  # YAML and `dvc exp run -S train.amp=true` give a bool for "true"
            return "true" if value else "false"
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if isinstance(data, str) and cls is ExtraSet:  # shorthand: `name: path`
        data = {"path": data}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'params'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"{where} is not a known key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            key = f"{prefix}.{f.name}" if prefix else f.name
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], key)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field (no default) is missing
        raise ConfigError(f"{prefix}: {e}") from None


def parse_config(data: dict) -> Config:
    """Build and validate a Config from a params mapping (the content of params.yaml)."""
    cfg = _build(Config, data, "")
    cfg.validate()
    return cfg


def parse_paint(data: Any) -> PaintConfig:
    """A `paint` section stored apart from params.yaml (a model package's) as a validated PaintConfig; None (a
    package saved without one) gives the defaults. Errors are one-line ConfigErrors naming `paint.<key>`."""
    cfg = _build(PaintConfig, data, "paint")
    cfg.validate()
    return cfg


def load_params(path: str | Path = "params.yaml") -> Config:
    """Read and validate params.yaml; a missing file or bad YAML is a one-line ConfigError."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read params file {p}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    return parse_config(data)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Config as flat dotted keys (for MLflow params and model cards): {"train.lr": 0.003, ...}."""
    out: dict[str, Any] = {}
    items = dataclasses.asdict(cfg).items() if dataclasses.is_dataclass(cfg) else cfg.items()
    for k, v in items:
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out
