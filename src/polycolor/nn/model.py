"""The conditional UNet: plain PyTorch, no I/O.

An outline image (B, 3, H, W) in [-1, 1] and a colour go in; the filled polygon comes out as (B, 3, H, W) in [-1, 1].
The colour enters as a vector `c` (B, embed_dim), from a learned table over a colour vocabulary (`embedding`) or an
MLP over normalised RGB (`rgb`), and conditions the net in one of three places (`model.conditioning`):
  bottleneck: `c` projected to a spatial map at the bottleneck's resolution, concatenated there, conv back to width;
  input:      `c` projected to a few channels, broadcast over the image, concatenated to the input;
  film:       every conv block scales and shifts its features with (gamma, beta) computed from `c`.
Two output heads (`model.head`):
  tanh:      a free RGB image, Tanh into [-1, 1];
  composite: a one-channel mask logit map; the image is the requested colour over white through the mask
             (white * (1 - m) + colour * m), so colour is exact by construction and the net only learns where to paint.
Two options make the net paint an input of any size at that size (docs/performance.md has the experiments):
  native_width > 0: the UNet runs at `work_size` (the input min-pooled down or grown to it, so outlines stay
             unbroken); its last features are resized to the input's own size and a small head there, which also
             sees the input's own pixels, gives the mask logits at that size;
  fill:      the fill layer (nn/fill.py) paints whatever the mask encloses, however far from the outline, so
             the inside of a large shape needs no receptive field that wide.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from polycolor.config.training import ModelConfig
from polycolor.nn.fill import fill

INPUT_COND_CHANNELS = 8  # channels the `input` conditioning adds to the 3 image channels
FILL_EPS = 1e-6  # the fill's probabilities are clamped to [eps, 1 - eps] before they become logits


class UNetOutput(NamedTuple):
    image: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    mask_logits: torch.Tensor | None  # (B, 1, H, W) for the composite head, else None
    wall_logits: torch.Tensor | None = None  # with model.fill: the mask logits before the fill layer, (B, 1, H, W)


def to_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, size, size). Shrinking takes the darkest pixel of each window (a min pool), so a thin
    outline stays unbroken instead of losing the pixels nearest sampling skips; growing is nearest."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if h >= size and w >= size:
        return -F.adaptive_max_pool2d(-x, (size, size))
    return F.interpolate(x, size=(size, size), mode="nearest")


class ColourEncoder(nn.Module):
    """Colour -> c (B, embed_dim): a learned table over `vocab`, or an MLP over RGB in [0, 1]."""

    def __init__(self, encoding: str, vocab_size: int, embed_dim: int):
        super().__init__()
        self.encoding = encoding
        if encoding == "embedding":
            self.table = nn.Embedding(max(vocab_size, 1), embed_dim)
        else:
            self.mlp = nn.Sequential(nn.Linear(3, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, colour_idx: torch.Tensor, colour_rgb: torch.Tensor) -> torch.Tensor:
        if self.encoding == "embedding":
            return self.table(colour_idx)  # (B, D)
        return self.mlp(colour_rgb * 2.0 - 1.0)  # centre the RGB cube on 0; (B, D)


class Block(nn.Module):
    """Two 3x3 conv -> BatchNorm -> ReLU; with cond_dim, FiLM after each norm: x * (1 + gamma) + beta."""

    def __init__(self, dim_in: int, dim_out: int, *, cond_dim: int | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(dim_in, dim_out, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(dim_out)
        self.conv2 = nn.Conv2d(dim_out, dim_out, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(dim_out)
        self.film = nn.Linear(cond_dim, 4 * dim_out) if cond_dim else None
        if self.film is not None:  # start near the identity modulation, but let the colour through from step 0
            nn.init.normal_(self.film.weight, std=0.02)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        mod = None
        if self.film is not None and cond is not None:
            mod = self.film(cond)[:, :, None, None].chunk(4, dim=1)  # gamma1, beta1, gamma2, beta2: (B, C, 1, 1)
        h = self.norm1(self.conv1(x))
        if mod is not None:
            h = h * (1 + mod[0]) + mod[1]
        h = self.norm2(self.conv2(F.relu(h)))
        if mod is not None:
            h = h * (1 + mod[2]) + mod[3]
        return F.relu(h)


class BottleneckAttention(nn.Module):
    """Multi-head self-attention over the bottleneck's H*W positions, residual."""

    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        heads = heads if dim % heads == 0 else 1
        self.norm = nn.GroupNorm(1, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        out, _ = self.attn(t, t, t, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class ConditionalUNet(nn.Module):
    """UNet over `len(cfg.widths)` levels at work_size (the data's image_size unless model.work_size is set); the map
    size at the bottleneck is work_size / 2**(levels - 1)."""

    def __init__(self, cfg: ModelConfig, vocab: tuple[str, ...], image_size: int):
        super().__init__()
        cfg.validate()
        levels = len(cfg.widths)
        if image_size % (2 ** (levels - 1)):
            raise ValueError(f"image_size {image_size} must be divisible by 2**{levels - 1} for {levels} levels")
        if cfg.colour_encoding == "embedding" and not vocab:
            raise ValueError("the embedding colour encoding needs a non-empty colour vocabulary")
        self.cfg, self.vocab, self.image_size = cfg, tuple(vocab), image_size
        self.work_size = cfg.work_size or image_size
        self.bottleneck_size = self.work_size // 2 ** (levels - 1)
        w, d = cfg.widths, cfg.embed_dim
        film_dim = d if cfg.conditioning == "film" else None

        self.colour = ColourEncoder(cfg.colour_encoding, len(self.vocab), d)
        in_ch = 3
        if cfg.conditioning == "input":
            self.to_input = nn.Linear(d, INPUT_COND_CHANNELS)
            in_ch += INPUT_COND_CHANNELS
        self.down = nn.ModuleList(
            [Block(in_ch, w[0], cond_dim=film_dim)] + [Block(w[i - 1], w[i], cond_dim=film_dim) for i in range(1, levels)]
        )
        if cfg.conditioning == "bottleneck":
            s = self.bottleneck_size
            self.to_map = nn.Linear(d, s * s)  # c -> one (s, s) map at the bottleneck
            self.fuse = nn.Sequential(nn.Conv2d(w[-1] + 1, w[-1], 1), nn.ReLU())
        self.attn = BottleneckAttention(w[-1]) if cfg.attention else None
        self.up = nn.ModuleList(
            [Block(w[i] + w[i - 1], w[i - 1], cond_dim=film_dim) for i in range(levels - 1, 0, -1)]
        )
        self.native = None
        if cfg.native_width:  # at the input's size: the UNet's features and the input's own pixels in
            nw = cfg.native_width
            self.native = nn.Sequential(
                nn.Conv2d(w[0] + 3, nw, 3, padding=1, bias=False), nn.BatchNorm2d(nw), nn.ReLU(),
                nn.Conv2d(nw, nw, 3, padding=1, bias=False), nn.BatchNorm2d(nw), nn.ReLU())
        self.out = nn.Conv2d(cfg.native_width or w[0], 1 if cfg.head == "composite" else 3, 1)

    @property
    def paints_at_input_size(self) -> bool:
        """True when forward takes an image of any size and paints it at that size (model.native_width)."""
        return self.native is not None

    def forward(self, x: torch.Tensor, colour_idx: torch.Tensor, colour_rgb: torch.Tensor) -> UNetOutput:
        """x (B, 3, H, W) in [-1, 1]; colour_idx (B,) long; colour_rgb (B, 3) in [0, 1]. Without a native head
        the output is at x's size, which should be the work size; with one, any H and W."""
        c = self.colour(colour_idx, colour_rgb)  # (B, D)
        x_in = x
        if self.native is not None:
            x = to_size(x, self.work_size)  # (B, 3, work, work)
        film = c if self.cfg.conditioning == "film" else None
        if self.cfg.conditioning == "input":
            cmap = self.to_input(c)[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])  # (B, 8, H, W)
            x = torch.cat([x, cmap], dim=1)

        skips = []
        h = x
        for i, block in enumerate(self.down):
            if i > 0:
                h = F.max_pool2d(h, 2)
            h = block(h, film)
            skips.append(h)  # level i: (B, w[i], H / 2**i, W / 2**i)

        if self.cfg.conditioning == "bottleneck":
            s = h.shape[-1]
            cmap = self.to_map(c).view(-1, 1, self.bottleneck_size, self.bottleneck_size)
            if s != self.bottleneck_size:  # an input of another size than trained on
                cmap = F.interpolate(cmap, size=h.shape[-2:], mode="bilinear", align_corners=False)
            h = self.fuse(torch.cat([h, cmap], dim=1))  # (B, w[-1], s, s)
        if self.attn is not None:
            h = self.attn(h)

        for block, skip in zip(self.up, reversed(skips[:-1])):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], dim=1), film)

        if self.native is not None:
            if h.shape[-2:] != x_in.shape[-2:]:
                h = F.interpolate(h, size=x_in.shape[-2:], mode="bilinear", align_corners=False)
            h = self.native(torch.cat([h, x_in.to(h.dtype)], dim=1))  # (B, native_width, H, W)
        y = self.out(h)
        if self.cfg.head == "tanh":
            return UNetOutput(torch.tanh(y), None)
        if not self.cfg.fill:
            return UNetOutput(composite(torch.sigmoid(y), colour_rgb), y)
        p = fill(torch.sigmoid(y.float()), self.cfg.fill_grad_steps).clamp(FILL_EPS, 1 - FILL_EPS)  # (B, 1, H, W)
        return UNetOutput(composite(p, colour_rgb), torch.logit(p), y)


def composite(mask: torch.Tensor, colour_rgb: torch.Tensor) -> torch.Tensor:
    """Paint `colour_rgb` (B, 3) in [0, 1] over white through `mask` (B, 1, H, W) in [0, 1], 1 = paint.
    Returns (B, 3, H, W) in [-1, 1]: white where mask = 0, the colour where mask = 1."""
    image = 1.0 - mask * (1.0 - colour_rgb[:, :, None, None])  # in [0, 1]
    return image * 2.0 - 1.0


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
