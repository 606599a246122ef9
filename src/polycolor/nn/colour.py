"""Colour conditioning and the hard output: how colour strings reach the network and what it outputs, which
training and painting share (painting's post-processing lives in polycolor.painting)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from polycolor.colours import canonical_colour, resolve_colour
from polycolor.errors import PolycolorError
from polycolor.nn.model import UNetOutput, composite


def encode_colours(colours: list[str], vocab: tuple[str, ...], encoding: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour strings -> (idx (N,) long, rgb (N, 3) float in [0, 1]).

    With the embedding encoding a colour must be in the model's vocabulary; with rgb any resolvable colour works.
    """
    rgb = torch.tensor([resolve_colour(c) for c in colours], dtype=torch.float32).reshape(-1, 3) / 255.0
    if encoding != "embedding":
        return torch.zeros(len(colours), dtype=torch.long), rgb
    index = {c: i for i, c in enumerate(vocab)}
    idx = []
    for c in colours:
        key = canonical_colour(c)
        if key not in index:
            shown = ", ".join(v for v in vocab if not v.startswith("#")) or ", ".join(vocab[:8])
            raise PolycolorError(
                f"colour {c!r} is not in this model's vocabulary (embedding encoding; it knows: {shown})"
            )
        idx.append(index[key])
    return torch.tensor(idx, dtype=torch.long), rgb


def paintable(colours: Sequence[str], vocab: Sequence[str], encoding: str) -> np.ndarray:
    """Indices (K,) int of the colours a model can paint: all of them with the rgb encoding; with the embedding
    encoding only those in its vocabulary (its table knows the training colours and nothing else)."""
    if encoding != "embedding":
        return np.arange(len(colours))
    known = set(vocab)
    return np.array([i for i, c in enumerate(colours) if canonical_colour(c) in known], dtype=int)


def hard_image(pred: UNetOutput, colour_rgb: torch.Tensor) -> torch.Tensor:
    """What inference outputs, (B, 3, H, W) in [-1, 1]: for the composite head the mask thresholded at 0.5
    (sigmoid(logit) > 0.5), so images are two-valued like the data; the tanh head's image as it is."""
    if pred.mask_logits is None:
        return pred.image
    return composite((pred.mask_logits > 0).float(), colour_rgb)
