"""The classical reference: fill the region an outline encloses with the requested colour, no learning.

The enclosed mask (painting.floodfill.enclosed_mask: the outline and all it encloses) is painted the requested
colour, the rest stays white. It is scored by the same code as the model (polycolor.evaluation.metrics) and shows where the ceiling
is: on the real Ayna data it reproduces the targets exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from polycolor.colours import resolve_colour
from polycolor.errors import PolycolorError
from polycolor.images import WHITE
from polycolor.painting.floodfill import enclosed_mask


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
