"""The evaluate section: the extra sets, the generated sets and how the evaluation scores them."""

from __future__ import annotations

from dataclasses import dataclass, field

from polycolor.config.base import _check, _range
from polycolor.config.paint import BATCH_SIZE


@dataclass(frozen=True)
class ExtraSet:
    SHORTHAND = "path"  # `name: <folder>` in params.yaml stands for `name: {path: <folder>}`

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
    batch_size: int = BATCH_SIZE  # images per forward pass (config.paint.BATCH_SIZE, chosen by `polycolor bench`)

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
