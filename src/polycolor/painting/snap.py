"""Snapping the net's mask to the input's own outline: ink detection, regions and their shares, small enclosed
interiors, and the gap size at any image size. Every constant comes from PaintConfig (params.yaml `paint`)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from polycolor.config.paint import PaintConfig

FOUR = ndimage.generate_binary_structure(2, 1)  # white regions are 4-connected (paint cannot leak diagonally)
EIGHT = ndimage.generate_binary_structure(2, 2)  # an outline is one piece through diagonal steps too


def ink_mask(image: np.ndarray, threshold: int) -> np.ndarray:
    """The outline's pixels: uint8 (..., H, W, 3) -> (..., H, W) bool, True where the darkest channel is below
    `threshold` (PaintConfig.ink_threshold).

    Not images.painted_mask (< 240, the data's and the metrics' definition of painted): a painter reads inputs
    that are not two-valued. JPEG ringing leaves light grey pixels beside a line and anti-aliasing grey ones along
    its edges; at the midpoint (128) a pixel is ink when the line covers more than about half of it, so the noise
    is background and each edge pixel goes with the side that holds most of it (tests/test_painter.py).
    """
    return image.min(axis=-1) < threshold


def region_shares(region: np.ndarray, mask: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels (H, W) int, share (n + 1,)): the connected pieces of `region` and the share of each that `mask`
    covers (index 0, outside the region, is 0)."""
    labels, n = ndimage.label(region, structure)
    flat = labels.ravel()
    share = np.bincount(flat, weights=mask.ravel(), minlength=n + 1) / np.maximum(np.bincount(flat, minlength=n + 1), 1)
    share[0] = 0.0
    return labels, share


def enclosed_blobs(painted: np.ndarray, ink: np.ndarray, min_area: int, enclosed_share: float) -> np.ndarray:
    """(H, W) bool: the 4-connected blobs of `painted` (H, W) bool of at least min_area pixels whose border (the
    pixel edges between the blob and what is not the blob) runs along `ink` for at least `enclosed_share` of its
    length (PaintConfig.enclosed_share). Such a blob is the interior of a small polygon with a gap, which the net
    painted; stray paint beside an outline touches it on one side only (about half its border), or is a pixel or
    two in a concave corner."""
    labels, n = ndimage.label(painted, FOUR)
    if n == 0:
        return np.zeros_like(painted)
    on_ink, border = np.zeros(n + 1), np.zeros(n + 1)
    padded_labels, padded_ink = np.pad(labels, 1), np.pad(ink, 1)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        other = np.roll(padded_labels, (dy, dx), axis=(0, 1))[1:-1, 1:-1]  # the neighbour's blob, per pixel
        edge = (labels > 0) & (other != labels)  # (H, W) pixels whose neighbour this way is not their blob
        border += np.bincount(labels[edge], minlength=n + 1)
        on_ink += np.bincount(labels[edge], weights=np.roll(padded_ink, (dy, dx), axis=(0, 1))[1:-1, 1:-1][edge],
                              minlength=n + 1)
    area = np.bincount(labels.ravel(), minlength=n + 1)
    keep = (on_ink >= enclosed_share * np.maximum(border, 1)) & (area >= min_area)
    keep[0] = False
    return keep[labels]


def snap_to_outline(mask: np.ndarray, ink: np.ndarray, gap_px: int = PaintConfig.gap_px, resized: bool = False,
                    cfg: PaintConfig = PaintConfig()) -> np.ndarray:
    """The net's mask (H, W) bool, snapped to the input's own edges (ink (H, W) bool: the outline's pixels).

    White regions are the 4-connected pieces of ~ink; their *parts* are what is left of them farther than gap_px
    from the ink, which splits inside from outside wherever the outline has gaps up to ~2 gap_px long (a
    morphological closing would not: a disk touching a thin line from one side fits beside any gap).
    - A region that the net, and each of its parts, paints almost everywhere (share >= 1 - cfg.snap_share) is
      painted whole; one whose parts it paints almost nowhere (<= cfg.snap_share) and of which it paints at most
      cfg.clear_share is cleared whole (a region without parts, thinner than 2 gap_px, goes by its own share),
      except for the net's blobs in it that the outline encloses (enclosed_blobs): the small interior of a
      polygon with a gap, which has no part of its own and is a tiny share of the background it joins.
    - A region whose parts disagree is inside and outside joined through a gap: each part is filled (share >=
      1 - cfg.snap_share) or cleared (<= cfg.clear_share) by its own share, or else keeps the net's pixels; the
      pixels near the outline keep the net's value, or, when the mask was `resized` from the net's resolution (so
      its edges are blocky there), take the value of the nearest part, except that the net's paint stands where a
      closing of the outline by a gap_px disk bridges a gap (the nearest part alone would cut the stroke across
      the gap in half; docs/performance.md item 17).
    - Each 8-connected piece of outline the net paints at all (share >= cfg.snap_share) is painted whole: an
      outline belongs to its polygon, and a mask resized from another resolution may cover only its inner half.
    gap_px is the gap at this mask's size (gap_px_at); cfg gives the shares.
    This makes a mask computed at another resolution exact at the input's: the net decides which regions are
    inside, the input's pixels say where they end.
    """
    out = mask.copy()
    white = ~ink
    regions, region_share = region_shares(white, mask, FOUR)  # (H, W), (R + 1,)
    far = white & (ndimage.distance_transform_edt(white) > gap_px)
    parts, part_share = region_shares(far, mask, FOUR)  # (H, W), (P + 1,)
    # the region of each part (any of its pixels will do), and per region the lowest and highest part share
    part_region = np.zeros(len(part_share), dtype=np.int64)
    part_region[parts[far]] = regions[far]
    low, high = region_share.copy(), region_share.copy()
    has_parts = np.zeros(len(region_share), dtype=bool)
    has_parts[part_region[1:]] = True
    low[has_parts], high[has_parts] = 1.0, 0.0
    np.minimum.at(low, part_region[1:], part_share[1:])
    np.maximum.at(high, part_region[1:], part_share[1:])
    fill = (low >= 1.0 - cfg.snap_share) & (region_share >= 1.0 - cfg.snap_share)
    # Clearing a whole region also needs the net to paint almost none of it: a small interior joined to the
    # background through a gap may lie entirely near the outline (no part of its own), and must not be wiped.
    clear = (high <= cfg.snap_share) & (region_share <= cfg.clear_share)
    fill[0] = clear[0] = False
    out[fill[regions]] = True
    out[clear[regions]] = False
    out[enclosed_blobs(mask & clear[regions], ink, gap_px ** 2, cfg.enclosed_share)] = True
    mixed = ~(fill | clear)[part_region]  # (P + 1,) parts of regions that a gap joins
    mixed[0] = False
    out[(mixed & (part_share >= 1.0 - cfg.snap_share))[parts]] = True
    out[(mixed & (part_share <= cfg.clear_share))[parts]] = False  # a gap wider than 2 gap_px leaves one mixed part
    region_mixed = ~(fill | clear)
    region_mixed[0] = False
    band = white & ~far & region_mixed[regions]  # (H, W) near-outline pixels of regions a gap joins
    if resized and far.any() and band.any():
        nearest = ndimage.distance_transform_edt(~far, return_distances=False, return_indices=True)  # (2, H, W)
        out[band] = out[nearest[0][band], nearest[1][band]]
        grown = ndimage.distance_transform_edt(~ink) <= gap_px
        bridged = (ndimage.distance_transform_edt(grown) > gap_px) & ~ink  # what a closing by a disk adds
        out[band & bridged] |= mask[band & bridged]
    pieces, piece_share = region_shares(ink, mask, EIGHT)
    out[(piece_share >= cfg.snap_share)[pieces] & ink] = True
    return out


def gap_px_at(h: int, w: int, model_size: int, gap_px: int = PaintConfig.gap_px) -> int:
    """snap_to_outline's gap for an (h, w) input: `gap_px` (PaintConfig.gap_px) at the model's size, scaled with
    the image."""
    return max(2, round(gap_px * max(h, w) / model_size))
