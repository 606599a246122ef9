"""Traffic to watch: inputs drawn like the training data, and the shifts monitoring must notice. `polycolor bench
--monitor` and the tests send them to a real scoring server and run the report on what it logged.

Kinds (SHIFTS): `training` (the ingest section's own generator, every variation share as trained), `jpeg` (every
input JPEG-compressed), `thick` (pens thicker than any in training), `new_shapes` (hearts and crescents, a family
of curved shapes the generator never draws) and `large` (drawn at twice the size).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image, ImageDraw

from polycolor.config.data import IngestConfig
from polycolor.data.synth import at_image_size, generate

SHIFTS = ("jpeg", "thick", "new_shapes", "large")
KINDS = ("training", *SHIFTS)
THICK_WIDTH = (9, 14)  # px at 128: the training pens are ingest.outline_width, at most 6


def _heart(t: np.ndarray) -> np.ndarray:
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], axis=1) / 17.0


def _crescent(t: np.ndarray) -> np.ndarray:
    a = np.linspace(-0.6 * np.pi, 0.6 * np.pi, len(t) // 2)
    outer = np.stack([np.cos(a), np.sin(a)], axis=1)  # the outer arc, through the right
    inner = np.stack([0.2 + 0.5 * np.cos(a), 0.95 * np.sin(a)], axis=1)[::-1]  # a shallower arc back
    return np.concatenate([outer, inner])


def curved_shapes(n: int, size: int, width: tuple[int, int], rng: np.random.Generator) -> list[np.ndarray]:
    """n outlines uint8 (size, size, 3), black on white: hearts and crescents at random poses and pen widths."""
    t = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    out = []
    for i in range(n):
        unit = _heart(t) if i % 2 == 0 else _crescent(t)
        angle = rng.uniform(0, 2 * np.pi)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        radius = rng.uniform(0.25, 0.42) * size
        centre = size / 2 + rng.uniform(-0.1, 0.1, 2) * size
        pts = unit @ rot.T * radius + centre
        im = Image.new("RGB", (size, size), "white")
        ImageDraw.Draw(im).polygon([tuple(p) for p in pts], outline="black",
                                   width=int(rng.integers(width[0], width[1] + 1)))
        out.append(np.asarray(im))
    return out


def traffic(kind: str, n: int, ingest: IngestConfig, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """n inputs uint8 (H, W, 3) of `kind` (KINDS) and the colour each is requested in."""
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    if kind == "new_shapes":
        named = generate(ingest, n, rng)  # for its colours, requested as in training
        return curved_shapes(n, ingest.image_size, ingest.outline_width, rng), list(named.colours)
    cfg = {"training": ingest,
           "jpeg": replace(ingest, jpeg_fraction=1.0),
           "thick": replace(ingest, outline_width=THICK_WIDTH),
           "large": at_image_size(ingest, 2 * ingest.image_size)}[kind]
    data = generate(cfg, n, rng)
    return list(data.inputs), list(data.colours)
