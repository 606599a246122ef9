"""Image conventions, each defined once: the two value scales, converting between them, and what a painted pixel is.

Two scales:
  uint8   0..255, the files' values: (N, H, W, 3) numpy arrays (or uint8 tensors, any layout). White (255) is the
          Ayna background.
  signed  float in [-1, 1], what the network reads and writes: v / 127.5 - 1, so white is exactly 1.0.
Plumbing: numpy and torch only, nothing else of the package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

WHITE = 255  # the background value on the uint8 scale, every channel

# A pixel is *painted* when some channel is below WHITE_MIN on the uint8 scale, otherwise it is *white*.
# Why 240 and not "!= 255":
# - The data is exactly two-valued: white, and a colour with some channel <= 191 (each of the 8 Ayna colours has a
#   channel at 0; synth redraws random colours whose darkest channel is above 255 - NEAR_WHITE = 191). So on inputs,
#   targets and augmented copies any threshold in (191, 255] gives the same mask, and the older definitions (`!= 255`
#   in augment and ayna, `< 0.999` in the loss, i.e. below 254.9) agree with this one pixel for pixel: augmentation
#   and training are unchanged (tests/test_images.py checks it on generated data).
# - Predictions are not always two-valued: the tanh head's free RGB leaves near-white noise (250, 252, ...) on the
#   background, which must not count as paint or bleeding. Evaluation has always used 240, so its figures stay.
# On the signed scale the same rule reads: a value is painted when the uint8 value it converts to (to_uint8:
# round((x + 1) * 127.5)) is below 240, i.e. x < (239.5 / 127.5) - 1, so a tensor and its uint8 image always agree.
WHITE_MIN = 240
SIGNED_WHITE_MIN = (WHITE_MIN - 0.5) / 127.5 - 1.0  # ~0.8784
PSNR_CAP = 100.0  # dB; the PSNR of identical images (and the ceiling of every PSNR)

ImageLike = np.ndarray | torch.Tensor
# A painter: what evaluation scores and serving calls.
Predictor = Callable[[np.ndarray, list[str]], np.ndarray]  # (N, H, W, 3) uint8 + N colours -> (N, H, W, 3) uint8


def _is_float(image: ImageLike) -> bool:
    if isinstance(image, torch.Tensor):
        return image.is_floating_point()
    return bool(np.issubdtype(image.dtype, np.floating))


def painted_mask(image: ImageLike, channel_axis: int = -1) -> ImageLike:
    """Bool mask of painted pixels: `image` without its channel axis, True where some channel is below white.

    Integer images are read on the uint8 scale (some channel < WHITE_MIN), floating-point ones on the signed scale
    (some channel < SIGNED_WHITE_MIN). Works on numpy arrays and torch tensors alike, e.g. (H, W, 3) -> (H, W) with
    the default axis, (B, 3, H, W) -> (B, H, W) with channel_axis=1.
    """
    threshold = SIGNED_WHITE_MIN if _is_float(image) else WHITE_MIN
    return (image < threshold).any(channel_axis)


def to_signed(x: torch.Tensor) -> torch.Tensor:
    """uint8 tensor (any shape) -> float32 in [-1, 1], same shape: v / 127.5 - 1."""
    return x.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Signed float tensor (any shape) -> uint8, same shape: clamped to [-1, 1], scaled to [0, 255], rounded."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) numpy -> float (N, 3, H, W) in [-1, 1]."""
    return to_signed(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))


def tensor_to_images(t: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3) numpy, rounded."""
    return to_uint8(t).permute(0, 2, 3, 1).cpu().numpy()


def psnr_per_image(target: ImageLike, pred: ImageLike) -> list[float]:
    """PSNR in dB of each image of a uint8 batch (N, ...), numpy or torch (any device), on the uint8 values with
    MAX = 255: 10 log10(255^2 / MSE), the MSE taken in float64 (exact sums of integers). Identical images (MSE 0)
    and anything above the cap give PSNR_CAP (100 dB). The one definition: training's val PSNR and evaluation's
    per-sample PSNR both call it, so the two agree to the bit on the same uint8 images."""
    t, p = (x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in (target, pred))
    mses = ((t.astype(np.float64) - p.astype(np.float64)) ** 2).reshape(len(t), -1).mean(1)
    return [PSNR_CAP if mse == 0.0 else min(PSNR_CAP, 10.0 * float(np.log10(255.0**2 / mse))) for mse in mses.tolist()]


def tile_grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 4, gap_value: int = 160) -> np.ndarray:
    """Tile rows of equally sized (H, W, 3) uint8 images into one (R (H + gap) + gap, C (W + gap) + gap, 3) image,
    separated by `gap` px of grey (gap 0: the tiles side by side). The augment stage's sample grid and the trainer's
    per-epoch grid."""
    n_cols = max(len(r) for r in rows)
    h, w, _ = rows[0][0].shape
    grid = np.full((len(rows) * (h + gap) + gap, n_cols * (w + gap) + gap, 3), gap_value, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            y, x = gap + i * (h + gap), gap + j * (w + gap)
            grid[y:y + h, x:x + w] = tile
    return grid
