"""Painting while watching: the one function every face that paints calls (the pyfunc behind `mlflow models serve`,
`polycolor predict`, the demo), so each painted image leaves one record in the prediction log (monitoring.log).

What the net itself says about an input is taken with forward hooks, in the same forward pass that paints it:
- the embedding: the deepest encoder level's features, averaged over space, (B, widths[-1]), projected to a few
  dozen numbers by the version's Projection (monitoring.profile);
- the confidence: the mean |mask logit| of each image.
The model and the painter are not changed, so a model watched paints exactly what an unwatched one paints.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polycolor.config.paint import PaintConfig
from polycolor.monitoring.descriptors import describe_input, describe_output
from polycolor.nn import modelio


PROJECTION = "projection.npz"  # the projection's file in a reference profile folder (monitoring.profile)
EMB_PREFIX = "emb_"  # the embedding's columns: emb_0 ... emb_k-1


@dataclass(frozen=True)
class Projection:
    mean: np.ndarray  # (C,)
    components: np.ndarray  # (k, C), orthonormal rows

    def project(self, emb: np.ndarray) -> np.ndarray:
        """(n, C) pooled features -> (n, k)."""
        return (emb - self.mean) @ self.components.T

    def columns(self, emb: np.ndarray) -> list[dict[str, float]]:
        """(n, C) -> n records {emb_0: ..., emb_k-1: ...}."""
        return [{f"{EMB_PREFIX}{j}": round(float(v), 5) for j, v in enumerate(row)} for row in self.project(emb)]

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean.astype(np.float32), components=self.components.astype(np.float32))

    @staticmethod
    def load(path: Path) -> Projection:
        with np.load(path) as z:
            return Projection(z["mean"].astype(np.float64), z["components"].astype(np.float64))


@dataclass(frozen=True)
class ModelIdentity:
    """Which model painted: registered name, version (empty where the face does not know it, e.g. a package
    folder) and the model file's content hash, the key monitoring matches records and references on."""

    name: str
    version: str
    sha256: str


@dataclass
class Capture:
    """What the hooks saw, one entry per forward pass: pooled embeddings (b, C) and per-image confidences (b,)."""

    embeddings: list[np.ndarray] = field(default_factory=list)
    confidences: list[np.ndarray] = field(default_factory=list)


@contextmanager
def captured(model: torch.nn.Module) -> Iterator[Capture]:
    """Forward hooks on `model` (a ConditionalUNet) for as long as the context lasts."""
    cap = Capture()

    def on_bottleneck(_m: Any, _i: Any, out: torch.Tensor) -> None:
        cap.embeddings.append(out.detach().float().mean(dim=(2, 3)).cpu().numpy())  # (b, C)

    def on_output(_m: Any, _i: Any, out: Any) -> None:
        logits = getattr(out, "mask_logits", None)
        if logits is None:
            cap.confidences.append(np.full(out[0].shape[0], np.nan))
        else:
            cap.confidences.append(logits.detach().float().abs().mean(dim=(1, 2, 3)).cpu().numpy())  # (b,)

    handles = [model.down[-1].register_forward_hook(on_bottleneck), model.register_forward_hook(on_output)]
    try:
        yield cap
    finally:
        for h in handles:
            h.remove()


def colour_kind(colour: str) -> str:
    """The requested colour as a category: its name, or `rgb` for any #rrggbb / rgb() / hsl() value."""
    c = colour.strip().lower()
    return c if c.isalpha() else "rgb"


@dataclass
class Watch:
    """A face's view of the prediction log for one model: which face, which model, the version's projection of
    the embedding (None for a model packaged without a reference profile: the record then has no embedding) and
    the log it appends to."""

    face: str
    identity: ModelIdentity
    projection: Any | None
    log: Any  # monitoring.log.PredictionLog

    def paint(self, loaded: modelio.LoadedModel, images: list[np.ndarray], colours: list[str], cfg: PaintConfig,
              painter_name: str) -> list[np.ndarray]:
        """Paint like serving.predict.paint_images (the painter `painter_name`, each image at its own size) and
        append one record per image to the log. Each image is
        painted alone, so the hooks' capture is its own (on these CPUs a batch is no faster per image than one,
        `polycolor bench`). The record (see `record`) is built on the log's thread, after the painting returned;
        a failing log never fails the painting (PredictionLog counts it)."""
        from polycolor.painting.painter import painter

        predict = painter(painter_name, loaded, cfg)
        out = []
        for image, colour in zip(images, colours):
            start = time.perf_counter()
            with captured(loaded.model) as cap:
                (painted,) = predict(image[None], [colour])
            latency_ms = (time.perf_counter() - start) * 1000.0
            out.append(painted)
            self.log.append(functools.partial(record, image, painted, cap, colour, latency_ms, face=self.face,
                                              identity=self.identity, projection=self.projection), image=image,
                            colour=colour)
        return out


def watch_for(face: str, name: str, version: str, sha256: str, reference: Any | None,
              cfg: Any | None = None) -> Watch | None:
    """The Watch for a model (its name, registered version, content hash and reference folder), on the log that
    monitoring.log.location() names; None when logging is off. One PredictionLog per folder and process."""
    from polycolor.config.monitoring import MonitorConfig
    from polycolor.monitoring.log import location, shared_log
    root = location()
    if root is None:
        return None
    projection = None
    if reference is not None and (reference / PROJECTION).is_file():
        projection = Projection.load(reference / PROJECTION)
    return Watch(face, ModelIdentity(name, version, sha256), projection, shared_log(root, cfg or MonitorConfig()))


def record(image: np.ndarray, painted: np.ndarray, cap: Capture, colour: str, latency_ms: float, *, face: str,
           identity: ModelIdentity, projection: Any | None) -> dict[str, Any]:
    """One log record (a flat JSON object) for an image painted under `cap`."""
    emb = np.concatenate(cap.embeddings).mean(axis=0) if cap.embeddings else None  # (C,)
    conf = float(np.nanmean(np.concatenate(cap.confidences))) if cap.confidences else float("nan")
    rec: dict[str, Any] = {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "face": face, "model": identity.name, "version": identity.version, "model_sha256": identity.sha256,
        "latency_ms": round(latency_ms, 3), "colour": colour_kind(colour),
        **describe_input(image), **describe_output(image, painted, conf),
    }
    if emb is not None and projection is not None:
        rec.update(projection.columns(emb[None])[0])
    return rec
