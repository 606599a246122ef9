"""The painters: `net`, the network alone at its own size, and `painted`, the full painter that predict, serve and
the demo output (the network plus the post-processing PaintConfig switches on: canonical form, snapping).

Both are scored by evaluate, so a reader sees what the network does and what the post-processing adds.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from polycolor.config.paint import BATCH_SIZE, PAINTERS, PaintConfig
from polycolor.errors import PolycolorError
from polycolor.images import Predictor, images_to_tensor, tensor_to_images
from polycolor.nn.colour import encode_colours
from polycolor.nn.model import composite, to_size
from polycolor.nn.modelio import LoadedModel
from polycolor.painting.canonical import canonicalise, restore
from polycolor.painting.floodfill import flood_fill_wins
from polycolor.painting.snap import gap_px_at, ink_mask, snap_to_outline

NET_ONLY = PaintConfig(canonical="off", snap="off", flood_fill="off")  # every step off: the `net` painter


# A net that paints at the input's size (model.native_width) is given at most this side: larger inputs are min-pooled
# to it and the logits resized back, so the head's activations stay within memory at serving's max_pixels.
MAX_NATIVE_SIDE = 1024


def net_input(x: torch.Tensor, model: torch.nn.Module, image_size: int) -> torch.Tensor:
    """What the net is given for x (b, 3, h, w): x itself for a net that paints at any size (min-pooled to
    MAX_NATIVE_SIDE when a side is longer), else x at the model's image size (nn.model.to_size)."""
    if not getattr(model, "paints_at_input_size", False):
        return to_size(x, image_size)
    h, w = x.shape[-2:]
    if max(h, w) <= MAX_NATIVE_SIDE:
        return x
    f = max(h, w) / MAX_NATIVE_SIDE
    return -F.adaptive_max_pool2d(-x, (max(1, round(h / f)), max(1, round(w / f))))


def runs_resized(loaded: LoadedModel, h: int, w: int) -> bool:
    """Whether the net paints an (h, w) input at another size than its own (net_input), the case the `resized`
    post-processing modes are for."""
    if getattr(loaded.model, "paints_at_input_size", False):
        return max(h, w) > MAX_NATIVE_SIDE
    return (h, w) != (loaded.image_size, loaded.image_size)


def _net(loaded: LoadedModel, batch: np.ndarray, idx: torch.Tensor, rgb: torch.Tensor) -> np.ndarray:
    """The net on one batch of same-size images uint8 (b, h, w, 3) (net_input): for the composite head its masks
    (b, h, w) bool (logits resized back bilinearly where the net ran at another size, thresholded at 0, i.e.
    sigmoid 0.5), for the tanh head its images uint8 (b, h, w, 3) (resized back, nearest)."""
    model = loaded.model
    device = next(model.parameters()).device
    h, w = batch.shape[1:3]
    x = net_input(images_to_tensor(batch).to(device), model, loaded.image_size)  # (b, 3, h', w')
    pred = model(x.contiguous(memory_format=torch.channels_last), idx.to(device), rgb.to(device))
    if pred.mask_logits is None:
        image = pred.image if pred.image.shape[-2:] == (h, w) else F.interpolate(pred.image, size=(h, w),
                                                                                  mode="nearest")
        return tensor_to_images(image)
    logits = pred.mask_logits  # (b, 1, size, size)
    if logits.shape[-2:] != (h, w):
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return (logits[:, 0] > 0).cpu().numpy()  # (b, h, w)


def _step_on(mode: str, resized: bool) -> bool:
    """Whether a post-processing step set to `mode` (off | resized | always: paint.canonical, paint.snap) runs on an
    input the net paints at another size (`resized`, runs_resized) or at its own."""
    return mode == "always" or (mode == "resized" and resized)


def _snapped(masks: np.ndarray, batch: np.ndarray, loaded: LoadedModel, cfg: PaintConfig) -> np.ndarray:
    """The net's masks (b, h, w) bool snapped to the outlines of `batch` uint8 (b, h, w, 3) as cfg.snap says:
    always, only when the net ran at another size than the batch's (`resized`), or never."""
    h, w = batch.shape[1:3]
    resized = runs_resized(loaded, h, w)
    if not _step_on(cfg.snap, resized):
        return masks
    ink = ink_mask(batch, cfg.ink_threshold)  # (b, h, w)
    gap_px = gap_px_at(h, w, loaded.image_size, cfg.gap_px)
    return np.stack([snap_to_outline(m, k, gap_px, resized, cfg) for m, k in zip(masks, ink)])


def shows_the_net_the_input(loaded: LoadedModel, h: int, w: int, cfg: PaintConfig) -> bool:
    """Whether, at (h, w), `cfg` paints with the net's own masks of the input as it is: no canonical form and no
    snapping at this size, so the only step after the net is the flood fill's choice."""
    resized = runs_resized(loaded, h, w)
    return not _step_on(cfg.canonical, resized) and not _step_on(cfg.snap, resized)


@torch.no_grad()
def paint(loaded: LoadedModel, inputs: np.ndarray, colours: list[str], cfg: PaintConfig = PaintConfig(),
          batch_size: int = BATCH_SIZE, net_masks: np.ndarray | None = None) -> np.ndarray:
    """Fill each outline with its colour: the `painted` painter.

    inputs: uint8 (N, H, W, 3) RGB outlines, any H, W; colours: N colour strings. Returns uint8 (N, H, W, 3).
    The net runs as net_input says (_net). As cfg says:
    - canonical ("always", or "resized": only when the net paints the input at another size, runs_resized): each image is painted
      in its canonical form (canonicalise) and the paint carried back (restore),
      so turning, flipping or shifting an input turns, flips or shifts its paint exactly, and only the ink's
      surroundings are painted;
    - snap: the composite head's masks are snapped to the input's own outline (snap_to_outline), which makes a
      mask resized from the model's size exact at the input's; the tanh head's images are never snapped;
    - flood_fill ("clean"): on a clean, closed outline that the net's mask agrees with, the flood fill's exact mask
      replaces the net's (floodfill.flood_fill_wins); elsewhere the net's stays.
    With both off this is paint_net. The composite head's output is two-valued, white and the colour.
    `net_masks`: the net's masks of these inputs (net_masks(), the `net` painter's), (N, H, W) bool, reused instead
    of running the net again where the net is shown the inputs as they are (shows_the_net_the_input); the result is
    the same bytes.
    """
    if inputs.ndim != 4 or inputs.shape[-1] != 3:
        raise PolycolorError(f"inputs must be (N, H, W, 3) RGB images, got shape {inputs.shape}")
    if len(colours) != len(inputs):
        raise PolycolorError(f"{len(inputs)} images but {len(colours)} colours")
    loaded.model.eval()
    idx, rgb = encode_colours(list(colours), loaded.vocab, loaded.config.colour_encoding)
    n, h, w, _ = inputs.shape
    composite_head = loaded.config.head == "composite"
    if composite_head and net_masks is not None and shows_the_net_the_input(loaded, h, w, cfg):
        masks = net_masks.copy()
    else:
        masks, out = _paint_with_net(loaded, inputs, idx, rgb, cfg, batch_size)
        if not composite_head:
            return out
    for i in range(n):
        ff = flood_fill_wins(inputs[i], masks[i], cfg)
        if ff is not None:
            masks[i] = ff
    return composited(masks, rgb, batch_size)


def composited(masks: np.ndarray, rgb: torch.Tensor, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """The colours rgb (N, 3) painted over white through masks (N, H, W) bool: uint8 (N, H, W, 3)."""
    out = np.empty((*masks.shape, 3), dtype=np.uint8)
    for start in range(0, len(masks), batch_size):
        sl = slice(start, start + batch_size)
        out[sl] = tensor_to_images(composite(torch.from_numpy(masks[sl])[:, None].float(), rgb[sl]))
    return out


def _paint_with_net(loaded: LoadedModel, inputs: np.ndarray, idx: torch.Tensor, rgb: torch.Tensor, cfg: PaintConfig,
                    batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The net's part of paint, canonical form and snapping included: (masks (N, H, W) bool, images uint8
    (N, H, W, 3)); the composite head fills the masks, the tanh head the images."""
    n, h, w, _ = inputs.shape
    use_canonical = _step_on(cfg.canonical, runs_resized(loaded, h, w))
    canon = [canonicalise(x, loaded.image_size, cfg) for x in inputs] if use_canonical else None
    images = [c.image for c in canon] if canon is not None else list(inputs)  # what the net is shown
    composite_head = loaded.config.head == "composite"
    masks = np.empty((n, h, w), dtype=bool)
    out = np.empty_like(inputs)
    # a turn of a non-square image is (W, H): the net takes each shape in batches of its own
    for shape in dict.fromkeys(im.shape for im in images):
        members = [i for i in range(n) if images[i].shape == shape]
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            batch = np.stack([images[i] for i in chunk])  # (b, h', w', 3)
            painted = _net(loaded, batch, idx[chunk], rgb[chunk])
            if composite_head:
                painted = _snapped(painted, batch, loaded, cfg)
            for j, i in enumerate(chunk):
                back = painted[j] if canon is None else restore(painted[j], canon[i], (h, w),
                                                                False if composite_head else 255)
                if composite_head:
                    masks[i] = back
                else:
                    out[i] = back
    return masks, out


@torch.no_grad()
def net_masks(loaded: LoadedModel, inputs: np.ndarray, colours: list[str],
              batch_size: int = BATCH_SIZE) -> np.ndarray:
    """The composite head's masks (N, H, W) bool as the `net` painter paints them: paint_net's images are these
    composited. For scoring both painters with one run of the net (paint's net_masks)."""
    if loaded.config.head != "composite":
        raise PolycolorError("net_masks needs the composite head (the tanh head paints images, not masks)")
    idx, rgb = encode_colours(list(colours), loaded.vocab, loaded.config.colour_encoding)
    loaded.model.eval()
    return _paint_with_net(loaded, inputs, idx, rgb, NET_ONLY, batch_size)[0]


def paint_net(loaded: LoadedModel, inputs: np.ndarray, colours: list[str], batch_size: int = BATCH_SIZE) -> np.ndarray:
    """The `net` painter: the network and nothing else. The input is given as net_input says; the composite head's mask logits are resized back bilinearly and thresholded at 0, the tanh
    head's image resized back (nearest). uint8 (N, H, W, 3) in, uint8 (N, H, W, 3) out."""
    return paint(loaded, inputs, colours, NET_ONLY, batch_size)


def painter(name: str, loaded: LoadedModel, cfg: PaintConfig, batch_size: int = BATCH_SIZE) -> Predictor:
    """A painter by name (PAINTERS) as a Predictor (inputs, colours) -> images: "net" is paint_net, "painted" is
    paint with `cfg`."""
    if name == "net":
        return functools.partial(paint_net, loaded, batch_size=batch_size)
    if name == "painted":
        return functools.partial(paint, loaded, cfg=cfg, batch_size=batch_size)
    raise PolycolorError(f"painter must be one of {', '.join(PAINTERS)}, got {name!r}")
