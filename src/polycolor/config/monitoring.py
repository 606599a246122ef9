"""The monitor section: what the prediction log keeps, and when `polycolor monitor` raises an alarm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from polycolor.config.base import _build, _check


@dataclass(frozen=True)
class MonitorConfig:
    # The log (monitoring.log); these travel with the package, so every face of a version logs alike.
    sample_share: float = 0.0  # share of painted inputs kept as PNG for later labelling (0: no image is kept)
    sample_cap_mb: float = 200.0  # the kept inputs stop here
    rotate_mb: float = 64.0  # the log file is rotated past this size
    # The report (monitoring.report):
    window: int = 500  # the last this many records of a version are compared with its reference
    min_records: int = 100  # fewer in the window: no verdict
    # A descriptor drifts when the Wasserstein distance between window and reference, in units of the reference's
    # standard deviation, exceeds this (Evidently's normed Wasserstein, its default for numbers); the figures that
    # chose it are in docs/monitoring.md.
    drift_threshold: float = 0.25
    max_drifted: int = 0  # the test passes while at most this many descriptors drift
    embedding_threshold: float = 0.6  # the embedding drifts when a classifier tells window from reference (ROC AUC)
    reference_samples: int = 1000  # training pairs profiled at package time (all validation pairs are added)

    def validate(self) -> None:
        _check(0.0 <= self.sample_share <= 1.0, "monitor.sample_share", self.sample_share, "must be in [0, 1]")
        _check(self.sample_cap_mb >= 0, "monitor.sample_cap_mb", self.sample_cap_mb, "must be >= 0")
        _check(self.rotate_mb > 0, "monitor.rotate_mb", self.rotate_mb, "must be > 0")
        _check(self.window >= 1, "monitor.window", self.window, "must be >= 1")
        _check(1 <= self.min_records <= self.window, "monitor.min_records", self.min_records,
               "must be in [1, monitor.window]")
        _check(self.drift_threshold > 0, "monitor.drift_threshold", self.drift_threshold, "must be > 0")
        _check(self.max_drifted >= 0, "monitor.max_drifted", self.max_drifted, "must be >= 0")
        _check(0.5 < self.embedding_threshold < 1.0, "monitor.embedding_threshold", self.embedding_threshold,
               "must be in (0.5, 1)")
        _check(self.reference_samples >= 1, "monitor.reference_samples", self.reference_samples, "must be >= 1")


def parse_monitor(data: Any) -> MonitorConfig:
    """The monitor section as a package stores it in its model_config (None: the defaults), validated."""
    cfg = _build(MonitorConfig, data or {}, "monitor")
    cfg.validate()
    return cfg
