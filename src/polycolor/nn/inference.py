"""Painting with a loaded model: the one function evaluate, the CLI and the MLflow pyfunc all call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from polycolor.colours import canonical_colour, resolve_colour
from polycolor.errors import PolycolorError
from polycolor.images import images_to_tensor, painted_mask, tensor_to_images
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


# Images per forward pass. Measured with `polycolor bench` (infer_images_per_s: 64 images of 128 px, median of 5
# warm runs; NHWC weights): batch 1 / 4 / 8 / 16 / 32 / 64 painted 129 / 165 / 168 / 167 / 116 / 83 images/s; larger
# batches outgrow the CPU caches. 4 is at least as fast per image as 1 and 8. See docs/performance.md items 13, 18.
BATCH_SIZE = 4
GAP_PX = 4  # px at the model's size: the outline grown by this bridges the gaps the generator draws (<= 6 px)
CLEAR_SHARE = 0.03  # ... and a whole region is cleared only when the net paints at most this share of it
SNAP_SHARE = 0.25  # a region the net paints on <= this share of its pixels is cleared, on >= 1 - this filled
FOUR = ndimage.generate_binary_structure(2, 1)  # white regions are 4-connected (paint cannot leak diagonally)
EIGHT = ndimage.generate_binary_structure(2, 2)  # an outline is one piece through diagonal steps too


def _region_shares(region: np.ndarray, mask: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels (H, W) int, share (n + 1,)): the connected pieces of `region` and the share of each that `mask`
    covers (index 0, outside the region, is 0)."""
    labels, n = ndimage.label(region, structure)
    flat = labels.ravel()
    share = np.bincount(flat, weights=mask.ravel(), minlength=n + 1) / np.maximum(np.bincount(flat, minlength=n + 1), 1)
    share[0] = 0.0
    return labels, share


ENCLOSED_SHARE = 0.75  # a painted blob whose border is at least this much outline is an interior, not stray paint


def enclosed_blobs(painted: np.ndarray, ink: np.ndarray, min_area: int) -> np.ndarray:
    """(H, W) bool: the 4-connected blobs of `painted` (H, W) bool of at least min_area pixels whose border (the
    pixel edges between the blob and what is not the blob) runs along `ink` for at least ENCLOSED_SHARE of its
    length. Such a blob is the interior of a small polygon with a gap, which the net painted; stray paint beside an
    outline touches it on one side only (about half its border), or is a pixel or two in a concave corner."""
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
    keep = (on_ink >= ENCLOSED_SHARE * np.maximum(border, 1)) & (np.bincount(labels.ravel(), minlength=n + 1) >= min_area)
    keep[0] = False
    return keep[labels]


def snap_to_outline(mask: np.ndarray, ink: np.ndarray, gap_px: int = 4, resized: bool = False) -> np.ndarray:
    """The net's mask (H, W) bool, snapped to the input's own edges (ink (H, W) bool: the outline's pixels).

    White regions are the 4-connected pieces of ~ink; their *parts* are what is left of them farther than gap_px
    from the ink, which splits inside from outside wherever the outline has gaps up to ~2 gap_px long (a
    morphological closing would not: a disk touching a thin line from one side fits beside any gap).
    - A region that the net, and each of its parts, paints almost everywhere (share >= 1 - SNAP_SHARE) is painted
      whole; one whose parts it paints almost nowhere (<= SNAP_SHARE) and of which it paints at most CLEAR_SHARE
      is cleared whole (a region without parts, thinner than 2 gap_px, goes by its own share), except for the
      net's blobs in it that the outline encloses (enclosed_blobs): the small interior of a polygon with a gap,
      which has no part of its own and is a tiny share of the background it joins.
    - A region whose parts disagree is inside and outside joined through a gap: each part is filled (share >=
      1 - SNAP_SHARE) or cleared (<= CLEAR_SHARE) by its own share, or else keeps the net's pixels; the pixels
      near the outline keep the net's value, or, when the mask was `resized` from the net's resolution (so its
      edges are blocky there), take the value of the nearest part, except that the net's paint stands where a
      closing of the outline by a gap_px disk bridges a gap (the nearest part alone would cut the stroke across
      the gap in half: gappy 256 / 512 px, 32 samples: 38.6 / 35.3 -> 43.9 / 42.8 dB mean).
    - Each 8-connected piece of outline the net paints at all (share >= SNAP_SHARE) is painted whole: an outline
      belongs to its polygon, and a mask resized from another resolution may cover only its inner half.
    This makes a mask computed at another resolution exact at the input's: the net decides which regions are
    inside, the input's pixels say where they end.
    """
    out = mask.copy()
    white = ~ink
    regions, region_share = _region_shares(white, mask, FOUR)  # (H, W), (R + 1,)
    far = white & (ndimage.distance_transform_edt(white) > gap_px)
    parts, part_share = _region_shares(far, mask, FOUR)  # (H, W), (P + 1,)
    # the region of each part (any of its pixels will do), and per region the lowest and highest part share
    part_region = np.zeros(len(part_share), dtype=np.int64)
    part_region[parts[far]] = regions[far]
    low, high = region_share.copy(), region_share.copy()
    has_parts = np.zeros(len(region_share), dtype=bool)
    has_parts[part_region[1:]] = True
    low[has_parts], high[has_parts] = 1.0, 0.0
    np.minimum.at(low, part_region[1:], part_share[1:])
    np.maximum.at(high, part_region[1:], part_share[1:])
    fill = (low >= 1.0 - SNAP_SHARE) & (region_share >= 1.0 - SNAP_SHARE)
    # Clearing a whole region also needs the net to paint almost none of it: a small interior joined to the
    # background through a gap may lie entirely near the outline (no part of its own), and must not be wiped.
    clear = (high <= SNAP_SHARE) & (region_share <= CLEAR_SHARE)
    fill[0] = clear[0] = False
    out[fill[regions]] = True
    out[clear[regions]] = False
    out[enclosed_blobs(mask & clear[regions], ink, gap_px ** 2)] = True
    mixed = ~(fill | clear)[part_region]  # (P + 1,) parts of regions that a gap joins
    mixed[0] = False
    out[(mixed & (part_share >= 1.0 - SNAP_SHARE))[parts]] = True
    out[(mixed & (part_share <= CLEAR_SHARE))[parts]] = False  # a gap wider than 2 gap_px leaves one mixed part
    region_mixed = ~(fill | clear)
    region_mixed[0] = False
    band = white & ~far & region_mixed[regions]  # (H, W) near-outline pixels of regions a gap joins
    if resized and far.any() and band.any():
        nearest = ndimage.distance_transform_edt(~far, return_distances=False, return_indices=True)  # (2, H, W)
        out[band] = out[nearest[0][band], nearest[1][band]]
        grown = ndimage.distance_transform_edt(~ink) <= gap_px
        bridged = (ndimage.distance_transform_edt(grown) > gap_px) & ~ink  # what a closing by a disk adds
        out[band & bridged] |= mask[band & bridged]
    pieces, piece_share = _region_shares(ink, mask, EIGHT)
    out[(piece_share >= SNAP_SHARE)[pieces] & ink] = True
    return out


def gap_px_at(h: int, w: int, model_size: int) -> int:
    """snap_to_outline's gap_px for an (h, w) input: GAP_PX at the model's size, scaled with the image."""
    return max(2, round(GAP_PX * max(h, w) / model_size))


def to_model_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, h, w) in [-1, 1] -> (B, 3, size, size). Shrinking takes the darkest pixel of each window (a min pool),
    so a thin outline stays unbroken instead of losing the pixels nearest sampling skips; growing is nearest."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if h >= size and w >= size:
        return -F.adaptive_max_pool2d(-x, (size, size))
    return F.interpolate(x, size=(size, size), mode="nearest")


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


def canonicalise(image: np.ndarray, model_size: int) -> Canonical:
    """The canonical form of an (H, W, 3) uint8 input: the crop to its ink (images.painted_mask), turned into the
    smallest of its 8 poses (by the ink's pixels, then by all of the crop's), centred on a white canvas.

    A turned, flipped or shifted input has the same canonical form, so painting that and carrying the paint back
    (restore) is exactly equivariant to turns, flips and shifts that keep the ink inside the frame: the net, which
    is only approximately so (its pooling grid and zero padding are fixed to the frame), always sees one and the
    same image ("canonicalisation", Kaba et al. 2023). Pixels outside the crop are read as white.
    The canvas is the model's own (model_size, model_size) whenever the crop and its margin fit in it, so a small
    drawing, in an image of any size, is painted at its own scale with no resizing at all; a larger one goes on a
    canvas of the input's size (turned with it), which paint resizes to the model's (to_model_size).
    """
    ink = painted_mask(image)  # (H, W)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    native_margin = 2 * GAP_PX
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
        canvas, margin = np.full_like(turn(image, poses[0]), 255), 2 * gap_px_at(*image.shape[:2], model_size)
    at = ((canvas.shape[0] - turned.shape[0]) // 2, (canvas.shape[1] - turned.shape[1]) // 2)
    canvas[at[0]:at[0] + turned.shape[0], at[1]:at[1] + turned.shape[1]] = turned
    return Canonical(canvas, poses, (int(top), int(left), int(height), int(width)), at, margin)


def restore(painted: np.ndarray, c: Canonical, shape: tuple[int, int], blank: int) -> np.ndarray:
    """The paint of c.image, (H', W') bool masks or (H', W', 3) uint8 images, carried back to the input's (H, W)
    frame: the crop with its margin is turned back into place and everything else is `blank` (False / white). For
    a symmetric crop, which several poses reach, a mask is painted where at least half of its turns back paint and
    an image is the rounded integer mean of them: rules that do not depend on the order of the poses, so the
    result stays equivariant. An input without ink paints nothing: there is no outline to fill."""
    out = np.full(shape + painted.shape[2:], blank, dtype=painted.dtype)
    top, left, height, width = c.box
    if height == 0:
        return out
    m = c.margin
    h, w = (width, height) if c.poses[0][0] % 2 else (height, width)  # the crop's size in its canonical pose
    padded = np.pad(painted, ((m, m), (m, m)) + ((0, 0),) * (painted.ndim - 2), constant_values=blank)
    window = padded[c.at[0]:c.at[0] + h + 2 * m, c.at[1]:c.at[1] + w + 2 * m]  # the turned crop and its margin
    back = sum(unturn(window, p).astype(np.int32) for p in c.poses)  # (height + 2m, width + 2m[, 3])
    n = len(c.poses)
    back = 2 * back >= n if painted.dtype == bool else ((back + n // 2) // n).astype(painted.dtype)
    # the window's place in the input, clipped to the frame
    r0, c0 = top - m, left - m
    rs, cs = slice(max(r0, 0), min(r0 + height + 2 * m, shape[0])), slice(max(c0, 0), min(c0 + width + 2 * m, shape[1]))
    out[rs, cs] = back[rs.start - r0:rs.stop - r0, cs.start - c0:cs.stop - c0]
    return out


def _paint_net(loaded: LoadedModel, batch: np.ndarray, idx: torch.Tensor, rgb: torch.Tensor) -> np.ndarray:
    """The net on one batch of same-size images, uint8 (b, h, w, 3) -> for the composite head the snapped masks
    (b, h, w) bool, for the tanh head its images uint8 (b, h, w, 3)."""
    model = loaded.model
    device = next(model.parameters()).device
    h, w = batch.shape[1:3]
    x = to_model_size(images_to_tensor(batch).to(device), loaded.image_size)  # (b, 3, size, size)
    pred = model(x.contiguous(memory_format=torch.channels_last), idx.to(device), rgb.to(device))
    if pred.mask_logits is None:
        image = pred.image if pred.image.shape[-2:] == (h, w) else F.interpolate(pred.image, size=(h, w),
                                                                                  mode="nearest")
        return tensor_to_images(image)
    logits = pred.mask_logits  # (b, 1, size, size)
    if logits.shape[-2:] != (h, w):
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    masks = (logits[:, 0] > 0).cpu().numpy()  # (b, h, w)
    ink = painted_mask(batch)  # (b, h, w) the outline
    gap_px, resized = gap_px_at(h, w, loaded.image_size), (h, w) != (loaded.image_size,) * 2
    return np.stack([snap_to_outline(m, k, gap_px, resized) for m, k in zip(masks, ink)])


@torch.no_grad()
def paint(loaded: LoadedModel, inputs: np.ndarray, colours: list[str], batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Fill each outline with its colour.

    inputs: uint8 (N, H, W, 3) RGB outlines, any H, W; colours: N colour strings.
    Returns uint8 (N, H, W, 3), two-valued like the data. Each image is painted in its canonical form
    (canonicalise) and the paint carried back (restore), so turning, flipping or shifting an input turns, flips or
    shifts its paint exactly, and only the ink's surroundings are painted. The net
    runs at its own image size (to_model_size). For the composite head its mask logits are resized back bilinearly,
    thresholded at 0 (sigmoid 0.5) and snapped to the input's own edges (snap_to_outline), at every size, so the
    output is exact at the input's resolution; the tanh head's image is resized back (nearest).
    """
    if inputs.ndim != 4 or inputs.shape[-1] != 3:
        raise PolycolorError(f"inputs must be (N, H, W, 3) RGB images, got shape {inputs.shape}")
    if len(colours) != len(inputs):
        raise PolycolorError(f"{len(inputs)} images but {len(colours)} colours")
    loaded.model.eval()
    idx, rgb = encode_colours(list(colours), loaded.vocab, loaded.config.colour_encoding)
    n, h, w, _ = inputs.shape
    canon = [canonicalise(x, loaded.image_size) for x in inputs]
    composite_head = loaded.config.head == "composite"
    masks = np.empty((n, h, w), dtype=bool)
    out = np.empty_like(inputs)
    # a turn of a non-square image is (W, H): the net takes each shape in batches of its own
    for shape in dict.fromkeys(c.image.shape for c in canon):
        members = [i for i in range(n) if canon[i].image.shape == shape]
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            painted = _paint_net(loaded, np.stack([canon[i].image for i in chunk]), idx[chunk], rgb[chunk])
            for j, i in enumerate(chunk):
                if composite_head:
                    masks[i] = restore(painted[j], canon[i], (h, w), False)
                else:
                    out[i] = restore(painted[j], canon[i], (h, w), 255)
    if composite_head:
        for start in range(0, n, batch_size):
            sl = slice(start, start + batch_size)
            out[sl] = tensor_to_images(composite(torch.from_numpy(masks[sl])[:, None].float(), rgb[sl]))
    return out
