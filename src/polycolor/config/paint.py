"""The paint section: the painter's post-processing, each step switchable (polycolor.painting reads it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from polycolor.config.base import _build, _check

FLOOD_FILL_MODES = ("off", "clean")  # paint.flood_fill

# When a post-processing step runs: never, only for an input that is not at the model's own size (the net runs on
# a resized copy), or always.
STEP_MODES = ("off", "resized", "always")
PAINTERS = ("net", "painted")  # the network alone | the full painter, with PaintConfig's post-processing
# Images per forward pass of the painter, the default of painting.painter's batch_size and of evaluate.batch_size:
# `polycolor bench` found 4 at least as fast per image as 1 and 8, and larger batches slower (their activations
# outgrow the CPU caches); figures in docs/performance.md items 13 and 18.
BATCH_SIZE = 4


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
    agree_iou: float = 0.85  # the least IoU of the net's mask and the flood fill's for the flood fill to be used
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


def parse_paint(data: Any) -> PaintConfig:
    """A `paint` section stored apart from params.yaml (a model package's) as a validated PaintConfig; None (a
    package saved without one) gives the defaults. Errors are one-line ConfigErrors naming `paint.<key>`."""
    cfg = _build(PaintConfig, data, "paint")
    cfg.validate()
    return cfg

