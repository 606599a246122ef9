"""The flood fill, one definition for the classical reference (evaluation.reference) and the painter's choice
between it and the network (painting.painter): everything an outline encloses, outline included.

Background = the white pixels connected to the image border (4-connected, so paint cannot leak out through a
diagonal gap in the outline); everything else is the enclosed mask. Exact on a closed, clean outline; an outline
with a gap leaks, and compression noise beside the outline is painted as outline.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from polycolor.config.paint import PaintConfig
from polycolor.images import WHITE_MIN, painted_mask


def enclosed_mask(outline: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 outline image -> (H, W) bool: pixels not reachable from the border through white pixels."""
    white = ~painted_mask(outline)  # (H, W)
    labels, _ = ndimage.label(white)  # default structure: 4-connectivity
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    background = np.isin(labels, np.unique(edge[edge > 0]))
    return ~background


def near_white_share(image: np.ndarray) -> float:
    """Share of the pixels of an (H, W, 3) uint8 image that are white but not pure white (darkest channel in
    [WHITE_MIN, 255)): the trace of JPEG compression, a scanner or a photo. A drawn or anti-aliased outline on a
    white page has none."""
    darkest = image.min(axis=-1)
    return float(((darkest >= WHITE_MIN) & (darkest < 255)).mean())


def flood_fill_wins(image: np.ndarray, net_mask: np.ndarray, cfg: PaintConfig) -> np.ndarray | None:
    """The flood fill's mask (H, W) bool where it replaces the net's mask `net_mask` (H, W) bool for the input
    `image` (H, W, 3) uint8, else None. With cfg.flood_fill "clean", it does when
      - the input is clean: at most cfg.noise_share of its pixels near-white (near_white_share), so the flood fill
        paints no noise as outline;
      - the outline is closed: the flood fill encloses background, not only the ink;
      - the net agrees: IoU of the two masks >= cfg.agree_iou, so a region the net paints and the flood fill
        cannot close (a gap) keeps the net's paint.
    On a closed, clean outline the flood fill is exact and the net at best equal; elsewhere the net decides."""
    if cfg.flood_fill == "off" or near_white_share(image) > cfg.noise_share:
        return None
    ff = enclosed_mask(image)
    if not (ff & ~painted_mask(image)).any():  # open: only the ink itself is "enclosed"
        return None
    union = (ff | net_mask).sum()
    iou = (ff & net_mask).sum() / union if union else 1.0
    return ff if iou >= cfg.agree_iou else None
