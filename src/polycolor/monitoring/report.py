"""The drift report: a window of the prediction log against its model version's reference profile, with Evidently.

Evidently (0.7 API: Report, Dataset, DataDefinition) compares per descriptor (DataDriftPreset, Wasserstein distance
in units of the reference's standard deviation), the embedding (EmbeddingsDrift: a classifier told to tell window
from reference, ROC AUC), and holds the tests that decide: at most monitor.max_drifted descriptors drifted, and the
embedding not drifted. `verdict` turns the result into words a person acts on. MLflow and the workspace are
`polycolor monitor`'s business (polycolor.monitor), not this module's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from polycolor.config.monitoring import MonitorConfig
from polycolor.monitoring.descriptors import INPUT_COLUMNS, OUTPUT_COLUMNS
from polycolor.monitoring.profile import embedding_columns

EMBEDDING = "embedding"  # the embedding's name in the DataDefinition

# What a drifted descriptor means, in words: (higher in the window, lower in the window).
MEANING = {
    "height": ("inputs are taller than in training", "inputs are shorter than in training"),
    "width": ("inputs are wider than in training", "inputs are narrower than in training"),
    "aspect": ("inputs are wider for their height than in training", "inputs are taller for their width"),
    "ink_share": ("inputs carry more ink than in training", "inputs carry less ink than in training"),
    "line_width": ("lines are thicker than in training (other pens)", "lines are thinner than in training"),
    "page_grey": ("pages are greyer than in training (scans, photos of paper)", "pages are whiter than in training"),
    "page_noise": ("pages are noisier than in training (grain, uneven light)", "pages are cleaner than in training"),
    "near_white": ("inputs are JPEG-compressed, scanned or photographed far more often than in training",
                   "inputs are compressed or photographed less often than in training"),
    "blockiness": ("inputs are JPEG-compressed far more often than in training",
                   "inputs are JPEG-compressed less often than in training"),
    "ink_saturation": ("pens are more colourful than in training", "pens are greyer than in training"),
    "closed": ("outlines are closed more often than in training", "outlines have gaps more often than in training"),
    "drawings": ("inputs hold more separate drawings than in training", "inputs hold fewer drawings"),
    "painted_share": ("the model paints more of each image than on its training data",
                      "the model paints less of each image than on its training data"),
    "confidence": ("the model is surer of itself than on its training data",
                   "the model is less sure of itself than on its training data"),
    "ff_agreement": ("the model agrees with the flood fill more often than in training",
                     "the model disagrees with the flood fill on closed outlines more often than in training"),
    "colour": ("other colours are requested than in training",) * 2,
}
DESCRIPTORS = (*INPUT_COLUMNS, *OUTPUT_COLUMNS)


@dataclass
class Drift:
    """What the report found: per descriptor its drift score and whether it drifted, the embedding's, the tests."""

    scores: dict[str, float]
    drifted: list[str]
    embedding_score: float
    embedding_drifted: bool
    tests: dict[str, bool]
    shifts: dict[str, float] = field(default_factory=dict)  # window mean - reference mean, per drifted descriptor

    @property
    def passed(self) -> bool:
        return all(self.tests.values())


def frames(window: pd.DataFrame, reference: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The columns both share, in one order: descriptors, colour, embedding columns."""
    emb = [c for c in embedding_columns(reference) if c in window.columns]
    cols = [c for c in DESCRIPTORS if c in reference.columns and c in window.columns]
    keep = [*cols, "colour", *emb]
    cur = window.reindex(columns=keep).copy()
    ref = reference.reindex(columns=keep).copy()
    for frame in (cur, ref):
        frame[cols + emb] = frame[cols + emb].astype(float)
        frame["colour"] = frame["colour"].astype(str)
    return cur, ref, emb


def run_report(window: pd.DataFrame, reference: pd.DataFrame, cfg: MonitorConfig) -> tuple[Any, Drift]:
    """Evidently's report of `window` against `reference` (both as monitoring.profile's frames) and its findings."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, EmbeddingsDrift
    from evidently.metrics.embeddings import ModelDriftMethod
    from evidently.presets import DataDriftPreset
    from evidently.tests import lte

    cur, ref, emb = frames(window, reference)
    numeric = [c for c in DESCRIPTORS if c in cur.columns]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=["colour"],
                                embeddings={EMBEDDING: emb} if emb else None)
    method = dict(num_method="wasserstein", num_threshold=cfg.drift_threshold)
    share = (cfg.max_drifted + 1) / (len(numeric) + 1)  # the preset's own "dataset drift" agrees with the test
    metrics: list[Any] = [
        DataDriftPreset(columns=[*numeric, "colour"], drift_share=share, **method),
        DriftedColumnsCount(columns=[*numeric, "colour"], **method, tests=[lte(cfg.max_drifted)]),
    ]
    if emb:
        metrics.append(EmbeddingsDrift(embeddings_name=EMBEDDING,
                                       drift_method=ModelDriftMethod(threshold=cfg.embedding_threshold),
                                       tests=[lte(cfg.embedding_threshold)]))
    snapshot = Report(metrics, include_tests=True).run(
        Dataset.from_pandas(cur, data_definition=definition), Dataset.from_pandas(ref, data_definition=definition))
    return snapshot, findings(snapshot.dict(), cur, ref, cfg)


def findings(result: dict[str, Any], cur: pd.DataFrame, ref: pd.DataFrame, cfg: MonitorConfig) -> Drift:
    """Read the snapshot's dict (its metrics and tests) into a Drift."""
    scores: dict[str, float] = {}
    emb_score = float("nan")
    for m in result.get("metrics", []):
        name = str(m.get("metric_name", ""))
        value = m.get("value")
        if name.startswith("ValueDrift(") and isinstance(value, (int, float)):
            column = name[len("ValueDrift(column="):].split(",")[0].rstrip(")")
            scores[column] = float(value)
        elif name.startswith("EmbeddingsDrift(") and isinstance(value, (int, float)):
            emb_score = float(value)
    tests = {str(t.get("name", "")) + f" #{i}": t.get("status") == "SUCCESS"
             for i, t in enumerate(result.get("tests", []))}
    drifted = [c for c, s in scores.items() if s > cfg.drift_threshold]
    shifts = {}
    for c in drifted:
        if c != "colour":
            shifts[c] = float(np.nanmean(cur[c]) - np.nanmean(ref[c]))
    return Drift(scores, drifted, emb_score, bool(emb_score > cfg.embedding_threshold), tests, shifts)


def verdict(drift: Drift) -> list[str]:
    """What drifted, in words, strongest first; empty when nothing did."""
    lines = []
    for c in sorted(drift.drifted, key=lambda c: -drift.scores[c]):
        up, down = MEANING.get(c, (f"{c} is higher than in training", f"{c} is lower than in training"))
        lines.append(f"{up if drift.shifts.get(c, 0.0) >= 0 else down} ({c}: drift {drift.scores[c]:.2f})")
    if drift.embedding_drifted:
        lines.append(f"the network sees inputs unlike its training data (embedding drift: ROC AUC "
                     f"{drift.embedding_score:.2f} telling them apart)")
    return lines
