"""What a person would say about an input and its painting, as numbers: the descriptors that monitoring logs for every
painted image and compares with the training data (profile, report).

Evidently has no image descriptors; these are the field's usual ones for drawings (size, ink, line width, page tone
and noise, compression blockiness, closed or not, how many drawings), plus the output's painted share, the net's
confidence and its agreement with the flood fill where that one is exact. Pure numpy / scipy / scikit-image: no
model, no I/O.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

from polycolor.images import painted_mask
from polycolor.painting.floodfill import enclosed_mask, near_white_share

INK = 128  # a pixel is ink when its darkest channel is below this (more than half covered), as paint.ink_threshold
MAX_SIDE = 256  # descriptors of shape are taken on the image min-pooled to at most this side: cost bounded per image
BLOCK = 8  # JPEG's block side
FAINT = 48  # blockiness counts steps up to this (0-255): compression's, not the drawing's edges
MIN_DRAWING_PX = 4  # an ink component smaller than this (at MAX_SIDE) is a speck, not a drawing

INPUT_COLUMNS = ("height", "width", "aspect", "ink_share", "line_width", "page_grey", "page_noise", "near_white",
                 "blockiness", "ink_saturation", "closed", "drawings")
OUTPUT_COLUMNS = ("painted_share", "confidence", "ff_agreement")


def _pooled(darkest: np.ndarray) -> tuple[np.ndarray, float]:
    """The darkest channel (H, W) min-pooled so that its longest side is at most MAX_SIDE, and the pooling factor."""
    h, w = darkest.shape
    f = math.ceil(max(h, w) / MAX_SIDE)
    if f <= 1:
        return darkest, 1.0
    ph, pw = -h % f, -w % f
    padded = np.pad(darkest, ((0, ph), (0, pw)), constant_values=255)
    return padded.reshape((h + ph) // f, f, (w + pw) // f, f).min(axis=(1, 3)), float(f)


def blockiness(grey: np.ndarray) -> float:
    """How much of the image's faint horizontal and vertical change sits on JPEG's 8 px block borders, relative to
    change spread evenly: 1.0 for a drawing that was never compressed (it has no faint change), well above 1 after
    JPEG, which quantises each 8 x 8 block on its own. Only steps of at most FAINT count, so a drawing's own edges,
    wherever they fall, do not. grey: (H, W) any numeric."""
    g = grey.astype(np.float32)
    ratios = []
    for d in (np.abs(np.diff(g, axis=1)), np.abs(np.diff(g, axis=0)).T):  # (H, W-1): the change at x | x+1
        d = np.where(d <= FAINT, d, 0.0)
        total = float(d.sum())
        if total <= 0 or d.shape[1] < 2 * BLOCK:
            continue
        on_border = float(d[:, BLOCK - 1::BLOCK].sum())
        ratios.append(on_border / total * BLOCK)  # 1.0 when change is spread evenly over the 8 positions
    return float(np.mean(ratios)) if ratios else 1.0


def describe_input(image: np.ndarray) -> dict[str, float]:
    """Descriptors of one input uint8 (H, W, 3) (INPUT_COLUMNS):
    - height, width (px) and aspect (width / height);
    - ink_share: share of ink pixels (darkest channel < INK); line_width: ink area over skeleton length (px);
    - page_grey (255 - the median of the page's darkest channel) and page_noise (its standard deviation), the page
      being every non-ink pixel: 0 and 0 for a drawing app's white;
    - near_white: share of near-white pixels (floodfill.near_white_share), the trace of JPEG, scans and photos;
    - blockiness (JPEG); ink_saturation: mean max-min channel spread of the ink (0 for a black pen);
    - closed: 1 when a flood fill from the border leaves some page enclosed, else 0;
    - drawings: separate ink components (8-connected, specks left out)."""
    h, w = image.shape[:2]
    darkest = image.min(axis=-1)  # (H, W)
    ink = darkest < INK
    page = darkest[~ink]
    small, f = _pooled(darkest)
    small_ink = small < INK
    skeleton = int(skeletonize(small_ink).sum()) if small_ink.any() else 0
    labels, count = ndimage.label(small_ink, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel())[1:] if count else np.zeros(0, int)
    spread = image.max(axis=-1).astype(np.int16) - darkest  # (H, W)
    closed = small_ink.any() and bool((enclosed_mask(np.repeat(small[..., None], 3, axis=2))
                                       & ~painted_mask(np.repeat(small[..., None], 3, axis=2))).any())
    return {
        "height": float(h), "width": float(w), "aspect": w / h,
        "ink_share": float(ink.mean()),
        "line_width": float(small_ink.sum()) / skeleton * f if skeleton else 0.0,
        "page_grey": float(255 - np.median(page)) if page.size else 255.0,
        "page_noise": float(page.std()) if page.size else 0.0,
        "near_white": near_white_share(image),
        "blockiness": blockiness(darkest),
        "ink_saturation": float(spread[ink].mean()) if ink.any() else 0.0,
        "closed": float(closed),
        "drawings": float((sizes >= MIN_DRAWING_PX).sum()),
    }


def describe_output(image: np.ndarray, painted: np.ndarray, confidence: float) -> dict[str, float]:
    """Descriptors of one painting (OUTPUT_COLUMNS): the painted share of `painted` uint8 (H, W, 3); the net's
    confidence (mean |mask logit|, NaN for a head without a mask); ff_agreement: the IoU of the painting with the
    flood fill of the input `image` (H, W, 3) where that one is exact (a clean, closed outline), else NaN: a quality
    signal without labels."""
    paint = painted_mask(painted)  # (H, W)
    agreement = math.nan
    if near_white_share(image) == 0.0:  # clean: the flood fill paints no noise as outline
        ff = enclosed_mask(image)
        if (ff & ~painted_mask(image)).any():  # closed
            union = int((ff | paint).sum())
            agreement = float((ff & paint).sum() / union) if union else 1.0
    return {"painted_share": float(paint.mean()), "confidence": float(confidence), "ff_agreement": agreement}
