"""The serving and promote sections: what predict and the scoring server accept, and when a model is promoted."""

from __future__ import annotations

from dataclasses import dataclass

from polycolor.config.base import _check


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


def _check_metric_name(name: str, key: str) -> None:
    """A metric as registry and promote read it: `<set>.<scorer>.<metric>`, e.g. val.net.psnr_mean."""
    parts = name.split(".")
    _check(len(parts) == 3 and all(p.strip() for p in parts), key, name,
           "must be <set>.<scorer>.<metric>, e.g. val.net.psnr_mean")
