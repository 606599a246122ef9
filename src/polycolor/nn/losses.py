"""The objective: loss.l1 x L1 + loss.l2 x MSE + loss.perceptual x perceptual + loss.mask x BCE(mask)
+ loss.wall x BCE(the mask before the fill layer); both BCE terms weigh the target's boundary pixels
1 + loss.boundary.

The perceptual term is `1 - SSIM` by default (differentiable, needs no weights). `vgg16` compares VGG16 relu3_3
features and loads the weights from a local file; it fails when that file is missing rather than silently using a
random-weight network, which would measure nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from polycolor.config.training import LossConfig
from polycolor.errors import PolycolorError, first_line
from polycolor.images import painted_mask
from polycolor.nn.model import UNetOutput


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, size, size)


def ssim(a: torch.Tensor, b: torch.Tensor, window: torch.Tensor | None = None) -> torch.Tensor:
    """Mean SSIM of two (B, C, H, W) batches in [0, 1], Gaussian window 11 / sigma 1.5 (Wang et al. 2004)."""
    c = a.shape[1]
    w = (window if window is not None else _gaussian_window()).to(a).expand(c, 1, -1, -1)
    pad = w.shape[-1] // 2
    mu_a = F.conv2d(a, w, padding=pad, groups=c)
    mu_b = F.conv2d(b, w, padding=pad, groups=c)
    var_a = F.conv2d(a * a, w, padding=pad, groups=c) - mu_a**2
    var_b = F.conv2d(b * b, w, padding=pad, groups=c) - mu_b**2
    cov = F.conv2d(a * b, w, padding=pad, groups=c) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()


class SSIMLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("window", _gaussian_window(), persistent=False)

    def forward(self, pred01: torch.Tensor, target01: torch.Tensor) -> torch.Tensor:
        return 1.0 - ssim(pred01, target01, self.window)


class VGGPerceptual(nn.Module):
    """L1 between VGG16 relu3_3 features; weights from a local torchvision state_dict file."""

    def __init__(self, weights_path: str):
        super().__init__()
        from torchvision.models import vgg16

        path = Path(weights_path) if weights_path else None
        if path is None or not path.is_file():
            raise PolycolorError(
                f"loss.perceptual_net is vgg16 but loss.vgg16_weights {weights_path!r} is not a file "
                "(weights cannot be downloaded here; use perceptual_net: ssim or give a local VGG16 state_dict)"
            )
        net = vgg16(weights=None)
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as e:  # a wrong or corrupt file
            raise PolycolorError(f"cannot load VGG16 weights from {path}: {first_line(e)}") from None
        self.features = net.features[:16].eval().requires_grad_(False)  # up to relu3_3
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406])[None, :, None, None], persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225])[None, :, None, None], persistent=False)

    def forward(self, pred01: torch.Tensor, target01: torch.Tensor) -> torch.Tensor:
        f = lambda x: self.features((x - self.mean) / self.std)  # noqa: E731
        return F.l1_loss(f(pred01), f(target01))


def target_mask(target: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 1, H, W) float, 1 where the pixel is painted (images.painted_mask)."""
    return painted_mask(target, channel_axis=1)[:, None].float()


def boundary_weights(mask: torch.Tensor, boost: float) -> torch.Tensor:
    """Per-pixel BCE weights (B, 1, H, W): 1 + boost on the target mask's boundary (a pixel whose 3x3 neighbourhood
    holds both painted and white pixels, both sides of the edge), 1 elsewhere. The boundary is where the mask
    can be wrong by a pixel, and a few pixels there are the difference between 40 dB and 100 dB."""
    if boost == 0:
        return torch.ones_like(mask)
    edge = F.max_pool2d(mask, 3, stride=1, padding=1) - (-F.max_pool2d(-mask, 3, stride=1, padding=1))
    return 1.0 + boost * edge


def mask_bce(logits: torch.Tensor, target: torch.Tensor, boost: float) -> torch.Tensor:
    """Mean BCE of mask logits (B, 1, H, W) against a 0/1 target of the same shape, boundary pixels weighted up."""
    return F.binary_cross_entropy_with_logits(logits.float(), target, weight=boundary_weights(target, boost))


class Objective(nn.Module):
    """Weighted sum of the configured terms; returns (total, {term: value}) for logging."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg
        self.perceptual = None
        if cfg.perceptual > 0:
            self.perceptual = SSIMLoss() if cfg.perceptual_net == "ssim" else VGGPerceptual(cfg.vgg16_weights)

    def forward(self, pred: UNetOutput, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """pred.image and target: (B, 3, H, W) in [-1, 1]."""
        terms: dict[str, torch.Tensor] = {}
        image = pred.image.float()
        if self.cfg.l1 > 0:
            terms["l1"] = F.l1_loss(image, target)
        if self.cfg.l2 > 0:
            terms["l2"] = F.mse_loss(image, target)
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual((image + 1) / 2, (target + 1) / 2)
        if self.cfg.mask > 0 and pred.mask_logits is not None:
            terms["mask"] = mask_bce(pred.mask_logits, target_mask(target), self.cfg.boundary)
        if self.cfg.wall > 0 and pred.wall_logits is not None:  # the mask before the fill layer, on its own
            terms["wall"] = mask_bce(pred.wall_logits, target_mask(target), self.cfg.boundary)
        weights = {"l1": self.cfg.l1, "l2": self.cfg.l2, "perceptual": self.cfg.perceptual, "mask": self.cfg.mask,
                   "wall": self.cfg.wall}
        total = sum(weights[k] * v for k, v in terms.items())
        return total, terms
