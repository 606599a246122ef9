"""The whole of params.yaml as one Config: every section, validated together with the rules across sections.

The check stage reads it all before any stage runs; evaluate and package read their sections from it. The other
stages read only their part (config.data.DataParams, config.training.TrainingParams).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from polycolor.config.base import _build, _check, read_params, validate_sections
from polycolor.config.data import DEFAULT_SEED, AugmentConfig, IngestConfig, check_seed
from polycolor.config.evaluation import EvaluateConfig
from polycolor.config.monitoring import MonitorConfig
from polycolor.config.paint import PaintConfig
from polycolor.config.serving import PromoteConfig, ServingConfig
from polycolor.config.training import LossConfig, MlflowConfig, ModelConfig, TrainConfig


@dataclass(frozen=True)
class Config:
    seed: int = DEFAULT_SEED
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
    monitor: MonitorConfig = MonitorConfig()

    def validate(self) -> None:
        check_seed(self.seed)
        validate_sections(self)
        self.loss.validate_for(self.model.head)
        # Across sections: each of the UNet's len(widths) - 1 poolings halves the side, and the decoder must
        # come back to it exactly (a 100 px input with 4 levels would be 100 -> 50 -> 25 -> 12 -> 24 != 25).
        factor = 2 ** (len(self.model.widths) - 1)
        _check(self.ingest.image_size % factor == 0, "ingest.image_size", self.ingest.image_size,
               f"must be divisible by {factor} (2^(levels-1) for the {len(self.model.widths)} levels of model.widths)")


def parse_config(data: dict) -> Config:
    """Build and validate a Config from a params mapping (the content of params.yaml)."""
    cfg = _build(Config, data, "")
    cfg.validate()
    return cfg


def load_params(path: str | Path = "params.yaml") -> Config:
    """Read and validate params.yaml; a missing file or bad YAML is a one-line ConfigError."""
    return parse_config(read_params(path))
