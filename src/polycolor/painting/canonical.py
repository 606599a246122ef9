"""The canonical form of an input: every turn, flip and shift of a drawing is painted as one and the same image,
and the paint carried back, so painting is exactly equivariant to them (PaintConfig.canonical)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from polycolor.config.paint import PaintConfig
from polycolor.painting.snap import gap_px_at, ink_mask

# The dihedral group of the square as (quarter turns k, flip left-right first): the 8 ways to turn or flip an image
# onto its own grid, which move pixels without resampling.
Pose = tuple[int, bool]
POSES: tuple[Pose, ...] = tuple((k, flip) for flip in (False, True) for k in range(4))


def turn(a: np.ndarray, pose: Pose) -> np.ndarray:
    """a (H, W, ...) flipped left-right if pose says so, then turned k quarter turns (np.rot90)."""
    k, flip = pose
    return np.rot90(a[:, ::-1] if flip else a, k)


def unturn(a: np.ndarray, pose: Pose) -> np.ndarray:
    """The inverse of turn: unturn(turn(a, p), p) == a."""
    k, flip = pose
    a = np.rot90(a, -k)
    return a[:, ::-1] if flip else a


@dataclass(frozen=True)
class Canonical:
    """An input's canonical form, which every turn, flip and shift of the input shares, and how to carry its paint
    back to the input."""

    image: np.ndarray  # (H', W', 3) uint8: the crop to the input's ink, in its canonical pose, centred on white
    poses: tuple[Pose, ...]  # the poses that turn the input's crop into the canonical one (> 1: a symmetric crop)
    box: tuple[int, int, int, int]  # the crop in the input: top, left, height, width (height 0: no ink at all)
    at: tuple[int, int]  # the turned crop's top-left in `image`
    margin: int  # px around the crop that are carried back too (a gap may cut a vertex off the ink)


def _key(a: np.ndarray) -> tuple[tuple[int, ...], bytes]:
    """An order on arrays: by shape, then bytes (bool arrays packed 8 to a byte, so comparing them is cheap)."""
    a = np.ascontiguousarray(a)
    return a.shape, (np.packbits(a) if a.dtype == bool else a).tobytes()


def canonicalise(image: np.ndarray, model_size: int, cfg: PaintConfig = PaintConfig()) -> Canonical:
    """The canonical form of an (H, W, 3) uint8 input: the crop to its ink (snap.ink_mask), turned into the
    smallest of its 8 poses (by the ink's pixels, then by all of the crop's), centred on a white canvas.

    A turned, flipped or shifted input has the same canonical form, so painting that and carrying the paint back
    (restore) is exactly equivariant to turns, flips and shifts that keep the ink inside the frame: the net, which
    is only approximately so (its pooling grid and zero padding are fixed to the frame), always sees one and the
    same image ("canonicalisation", Kaba et al. 2023). Pixels outside the crop are read as white.
    The canvas is the model's own (model_size, model_size) whenever the crop and its margin fit in it, so a small
    drawing, in an image of any size, is painted at its own scale with no resizing at all; a larger one goes on a
    canvas of the input's size (turned with it), which paint gives the net as painter.net_input says.
    cfg gives the ink threshold and the gap (the margin carried back is two gaps).
    """
    ink = ink_mask(image, cfg.ink_threshold)  # (H, W)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    native_margin = 2 * cfg.gap_px
    if len(rows) == 0:
        blank = np.full((model_size, model_size, 3), 255, dtype=np.uint8)
        return Canonical(blank, POSES, (0, 0, 0, 0), (0, 0), native_margin)
    top, left, height, width = rows[0], cols[0], rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]
    crop = image[top:top + height, left:left + width]
    poses: tuple[Pose, ...] = POSES
    for a in (ink[top:top + height, left:left + width], crop):  # the ink decides, unless it is symmetric
        keys = [_key(turn(a, p)) for p in poses]
        poses = tuple(p for p, k in zip(poses, keys) if k == min(keys))
        if len(poses) == 1:
            break
    turned = turn(crop, poses[0])  # (h, w, 3)
    if max(turned.shape[:2]) + 2 * native_margin <= model_size:
        canvas, margin = np.full((model_size, model_size, 3), 255, dtype=np.uint8), native_margin
    else:  # the input's frame, turned; gap_px and so the margin scale with it
        canvas = np.full_like(turn(image, poses[0]), 255)
        margin = 2 * gap_px_at(*image.shape[:2], model_size, cfg.gap_px)
    at = ((canvas.shape[0] - turned.shape[0]) // 2, (canvas.shape[1] - turned.shape[1]) // 2)
    canvas[at[0]:at[0] + turned.shape[0], at[1]:at[1] + turned.shape[1]] = turned
    return Canonical(canvas, poses, (int(top), int(left), int(height), int(width)), at, margin)


def _margins(c: Canonical, pose: Pose, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The margins (top, bottom, left, right) around the crop, in `pose`, of the part of the crop's window (the crop
    and c.margin px around it) that lies inside the input's (H, W) frame: the input's own margins, clipped to the
    frame, turned as the crop is (a quarter turn moves the right margin to the top, ...)."""
    top, left, height, width = c.box
    m = c.margin
    sizes = np.array([[min(m, top), height, min(m, shape[0] - top - height)],   # rows: above, crop, below
                      [min(m, left), width, min(m, shape[1] - left - width)]])  # cols: left of, crop, right of
    grid = np.stack(np.meshgrid(sizes[0], sizes[1], indexing="ij"), axis=-1)    # (3, 3, 2): each block's (h, w)
    turned = turn(grid, pose)                                                   # the blocks, turned
    rows, cols = (1, 0) if pose[0] % 2 else (0, 1)                              # a quarter turn swaps h and w
    return (int(turned[0, 1, rows]), int(turned[2, 1, rows]), int(turned[1, 0, cols]), int(turned[1, 2, cols]))


def _take(a: np.ndarray, r0: int, r1: int, c0: int, c1: int, blank: int) -> np.ndarray:
    """a[r0:r1, c0:c1] where the rectangle may reach past a's edges: what lies outside is `blank`."""
    out = np.full((r1 - r0, c1 - c0) + a.shape[2:], blank, dtype=a.dtype)
    rs, cs = slice(max(r0, 0), min(r1, a.shape[0])), slice(max(c0, 0), min(c1, a.shape[1]))
    if rs.start < rs.stop and cs.start < cs.stop:
        out[rs.start - r0:rs.stop - r0, cs.start - c0:cs.stop - c0] = a[rs, cs]
    return out


def restore(painted: np.ndarray, c: Canonical, shape: tuple[int, int], blank: int) -> np.ndarray:
    """The paint of c.image, (H', W') bool masks or (H', W', 3) uint8 images, carried back to the input's (H, W)
    frame: the crop with its margin is turned back into place and everything else is `blank` (False / white). For
    a symmetric crop, which several poses reach, a mask is painted where at least half of its turns back paint and
    an image is the rounded integer mean of them: rules that do not depend on the order of the poses, so the
    result stays equivariant. An input without ink paints nothing: there is no outline to fill.

    Only the part of the window inside the input's frame is cut out of `painted`, so memory and time stay within
    a few arrays of the input's size (H x W): the margin, two gaps scaled with the longest side, would make the
    whole window of a 1 x 100000 px input 50001 x 150000 px."""
    out = np.full(shape + painted.shape[2:], blank, dtype=painted.dtype)
    top, left, height, width = c.box
    if height == 0:
        return out
    back = None
    for p in c.poses:
        above, below, before, after = _margins(c, p, shape)
        h, w = (width, height) if p[0] % 2 else (height, width)  # the crop's size in this pose
        window = _take(painted, c.at[0] - above, c.at[0] + h + below, c.at[1] - before, c.at[1] + w + after, blank)
        turned_back = unturn(window, p).astype(np.int32)  # the window's part inside the input's frame
        back = turned_back if back is None else back + turned_back
    n = len(c.poses)
    back = 2 * back >= n if painted.dtype == bool else ((back + n // 2) // n).astype(painted.dtype)
    m = c.margin
    r0, c0 = max(top - m, 0), max(left - m, 0)
    out[r0:r0 + back.shape[0], c0:c0 + back.shape[1]] = back
    return out
