"""The qualitative grid of the evaluate stage: a labelled row of tiles per sample, one column per image, so a person
sees what the network paints beside what the full painter makes of it. Pure: arrays in, an image array out."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

COLUMNS = ("input", "target", "net", "painted", "|painted - target|")


class GridRow(NamedTuple):
    label: str  # e.g. "val #3 red"
    input: np.ndarray  # (H, W, 3) uint8
    target: np.ndarray  # (H, W, 3) uint8
    net: np.ndarray  # (H, W, 3) uint8: the network alone
    painted: np.ndarray  # (H, W, 3) uint8: the full painter


def error_map(target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 grey image of max-over-channels |target - pred|: black = exact, white = off by 255."""
    err = np.abs(target.astype(np.int16) - pred.astype(np.int16)).max(axis=-1).astype(np.uint8)  # (H, W)
    return np.repeat(err[..., None], 3, axis=-1)


def labelled_grid(rows: list[GridRow], gap: int = 2, label: int = 12) -> np.ndarray:
    """(H, W, 3) uint8 grid: a header naming the COLUMNS, then per row a label line and its tiles.

    Cells are as large as the largest image; smaller images are scaled up with NEAREST.
    """
    cell = max((r.input.shape[0] for r in rows), default=32)
    step = label + cell + gap  # height of one row with its label line
    width = len(COLUMNS) * (cell + gap) + gap
    canvas = Image.new("RGB", (width, label + len(rows) * step + gap), (160, 160, 160))
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(COLUMNS):
        draw.text((gap + c * (cell + gap) + 2, 0), title, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        top = label + r * step
        draw.text((gap + 2, top + 1), row.label, fill=(255, 255, 255))
        tiles = (row.input, row.target, row.net, row.painted, error_map(row.target, row.painted))
        for c, tile in enumerate(tiles):
            im = Image.fromarray(tile, "RGB")
            if im.size != (cell, cell):
                im = im.resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(im, (gap + c * (cell + gap), top + label))
    return np.asarray(canvas, dtype=np.uint8).copy()
