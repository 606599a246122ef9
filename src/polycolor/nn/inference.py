"""Painting with a loaded model: the one function evaluate, the CLI and the MLflow pyfunc all call."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from polycolor.colours import canonical_colour, resolve_colour
from polycolor.errors import PolycolorError
from polycolor.images import images_to_tensor, tensor_to_images
from polycolor.nn.model import UNetOutput, composite
from polycolor.nn.modelio import LoadedModel


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


@torch.no_grad()
def paint(loaded: LoadedModel, inputs: np.ndarray, colours: list[str], batch_size: int = 32) -> np.ndarray:
    """Fill each outline with its colour.

    inputs: uint8 (N, H, W, 3) RGB outlines, any H, W; colours: N colour strings.
    Returns uint8 (N, H, W, 3). Inputs are resized (nearest) to the model's image size and predictions back to H, W,
    so the output always has the input's size. The composite head uses a hard mask (m > 0.5), so outputs are
    two-valued like the data.
    """
    if inputs.ndim != 4 or inputs.shape[-1] != 3:
        raise PolycolorError(f"inputs must be (N, H, W, 3) RGB images, got shape {inputs.shape}")
    if len(colours) != len(inputs):
        raise PolycolorError(f"{len(inputs)} images but {len(colours)} colours")
    model = loaded.model
    model.eval()
    device = next(model.parameters()).device
    idx, rgb = encode_colours(list(colours), loaded.vocab, loaded.config.colour_encoding)
    n, h, w, _ = inputs.shape
    size = loaded.image_size
    out = np.empty_like(inputs)
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        x = images_to_tensor(inputs[sl]).to(device)  # (b, 3, h, w)
        if (h, w) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="nearest")
        colour = rgb[sl].to(device)
        image = hard_image(model(x, idx[sl].to(device), colour), colour)
        if (h, w) != (size, size):
            image = F.interpolate(image, size=(h, w), mode="nearest")
        out[sl] = tensor_to_images(image)
    return out
