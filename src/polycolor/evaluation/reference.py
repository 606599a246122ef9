"""The classical reference: fill the region an outline encloses with the requested colour, no learning.

Background = the white pixels connected to the image border (4-connected, so paint cannot leak out through a
diagonal gap in the outline); everything else (the outline and all it encloses) is painted the requested colour,
the rest stays white. It is scored by the same code as the model (polycolor.evaluation.metrics) and shows where the ceiling
is: on the real Ayna data it reproduces the targets exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from polycolor.colours import resolve_colour
from polycolor.errors import PolycolorError
from polycolor.images import WHITE, painted_mask


def enclosed_mask(outline: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 outline image -> (H, W) bool: pixels not reachable from the border through white pixels."""
    white = ~painted_mask(outline)  # (H, W)
    labels, _ = ndimage.label(white)  # default structure: 4-connectivity
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    background = np.isin(labels, np.unique(edge[edge > 0]))
    return ~background


def reference_fill(inputs: np.ndarray, colours: Sequence[str]) -> np.ndarray:
    """Paint each outline's enclosed region (outline included) with its colour on white.

    inputs: uint8 (N, H, W, 3); colours: N colour strings. Returns uint8 (N, H, W, 3). Same call shape as
    painting.painter.paint without the model, so evaluate scores both the same way.
    """
    if inputs.ndim != 4 or inputs.shape[-1] != 3:
        raise PolycolorError(f"inputs must be (N, H, W, 3) RGB images, got shape {inputs.shape}")
    if len(colours) != len(inputs):
        raise PolycolorError(f"{len(inputs)} images but {len(colours)} colours")
    out = np.full_like(inputs, WHITE)
    for i, (image, colour) in enumerate(zip(inputs, colours)):
        out[i][enclosed_mask(image)] = resolve_colour(colour)
    return out
