"""The fill layer: whatever the net's mask encloses is painted too, at any image size.

A polygon's inside is a global property: a pixel deep inside a 512 px shape is as far from the outline as the net's
receptive field is wide. The layer gives the net that reach without more convolutions. The net's paint
probabilities q (B, 1, H, W) are walls; "outside" starts at the image border and spreads to the 4-connected
neighbours through what the walls leave open:

    o = min(1 - q, max(border, o[up], o[down], o[left], o[right]))     iterated to its fixed point
    p = 1 - o                                                           (so p >= q everywhere)

o is the widest path from the border: how open the most open path's narrowest point is. An inside closed by walls
of q ~ 1 gets p ~ 1 however large it is; a gap in the walls lets the outside in. The iteration runs coarse to fine
(walls max-pooled 2x per level: a coarse path of open blocks is a fine path at least as open, so the coarse o is a
lower bound and a valid start), which reaches the fixed point in a few dozen steps at any size.

Backward: at the fixed point each pixel's o is either its own openness (it is the narrowest point of its path, a
"bottleneck") or its parent neighbour's o (the border is the root). dL/dq reaches the bottlenecks only: each gets
the gradient of every pixel whose path narrows there, gathered down the tree. So a leak's gradient raises the wall
at its weakest pixel, the gap. `grad_steps` bounds how many tree levels are gathered (a truncated backward, like a
DEQ's phantom gradient). No autograd graph is kept: memory is a few maps whatever the iteration count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The four neighbours as (dy, dx) offsets; index 0 in the direction maps is the border seed (a root).
_OFFSETS = ((-1, 0), (1, 0), (0, -1), (0, 1))
CHECK_EVERY = 8  # iterations between convergence checks (each check syncs)
# Openness is rounded to this many levels before the paths are found: with continuous values the widest path winds
# around differences of 1e-4 and takes hundreds of steps to settle; with levels, wide plateaus settle at once.
# The gradient passes the rounding straight through.
LEVELS = 32
MIN_LEVEL_SIDE = 16  # the coarsest level of the pyramid has a side of at least this


def _shifted(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """t's value at (y + dy, x + dx) for every (y, x), 0 beyond the edge. t: (B, 1, H, W)."""
    p = F.pad(t, (1, 1, 1, 1))
    h, w = t.shape[-2:]
    return p[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def border(like: torch.Tensor) -> torch.Tensor:
    """1 on the image's outermost ring, 0 elsewhere; like: (B, 1, H, W)."""
    b = torch.zeros_like(like)
    b[..., 0, :] = b[..., -1, :] = 1
    b[..., :, 0] = b[..., :, -1] = 1
    return b


def _neighbour_max(o: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """max(seed, o at the 4 neighbours) for o >= 0, (B, 1, H, W): _shifted's 0 beyond the edge changes no max of
    values >= 0, so each neighbour is an in-place max over two views, with no padded copy (the fill's hot loop)."""
    m = seed.clone()
    torch.maximum(m[..., 1:, :], o[..., :-1, :], out=m[..., 1:, :])
    torch.maximum(m[..., :-1, :], o[..., 1:, :], out=m[..., :-1, :])
    torch.maximum(m[..., :, 1:], o[..., :, :-1], out=m[..., :, 1:])
    torch.maximum(m[..., :, :-1], o[..., :, 1:], out=m[..., :, :-1])
    return m


def _step(o: torch.Tensor, open_: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    return torch.minimum(open_, _neighbour_max(o, seed))


def _converge(o: torch.Tensor, open_: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """Iterate _step from o (a lower bound of the fixed point) until nothing moves (o only takes values of open_,
    so it gets there exactly); at most 4 (H + W) steps."""
    limit = 4 * sum(o.shape[-2:])
    for i in range(limit):
        nxt = _step(o, open_, seed)
        if i % CHECK_EVERY == CHECK_EVERY - 1 and torch.equal(nxt, o):
            return nxt
        o = nxt
    return o


@torch.no_grad()
def outside(q: torch.Tensor) -> torch.Tensor:
    """o (B, 1, H, W): how open the best path from the border to each pixel is, through walls q (B, 1, H, W) in
    [0, 1]. Coarse to fine: a level's walls are the max-pool of the finer level's, so its o is a lower bound of the
    finer o (a coarse path of open blocks is a fine path of open pixels) and a valid start for it."""
    walls = [q]
    while min(walls[-1].shape[-2:]) >= 2 * MIN_LEVEL_SIDE:
        walls.append(F.max_pool2d(walls[-1], 2, ceil_mode=True))
    o = None
    for w in reversed(walls):
        open_, seed = 1 - w, border(w)
        start = seed * open_ if o is None else torch.minimum(
            F.interpolate(o, scale_factor=2, mode="nearest")[..., :w.shape[-2], :w.shape[-1]], open_)
        o = _converge(start, open_, seed)
    return o


def _tree(o: torch.Tensor, open_: torch.Tensor, seed: torch.Tensor, depth_limit: int) -> tuple[torch.Tensor, ...]:
    """The paths at the fixed point, as far as the backward gathers them. Returns where each pixel is its path's
    bottleneck (its o is its own openness; the border's pixels too), and for each _OFFSETS neighbour where a pixel
    takes its o from that neighbour (bool maps, (B, 1, H, W)).

    A pass-through pixel's parent is a neighbour with the same o that is one step nearer a bottleneck: o repeats
    along a path, and a parent picked by value alone could form a cycle of equal values that never reaches the
    bottleneck. Pixels more than depth_limit steps from their bottleneck get no parent (no gradient)."""
    bottleneck = open_ <= _neighbour_max(o, seed)
    far = float(depth_limit + 1)
    depth = torch.where(bottleneck, 0.0, far).to(o.dtype)
    src = torch.full_like(o, -1.0)
    same = [_shifted(o, dy, dx) == o for dy, dx in _OFFSETS]
    for _ in range(depth_limit):
        best = depth
        for k, (dy, dx) in enumerate(_OFFSETS):
            cand = torch.where(same[k], _shifted(depth, dy, dx) + 1, torch.full_like(depth, far))
            better = cand < best
            src = torch.where(better, float(k), src)
            best = torch.where(better, cand, best)
        if torch.equal(best, depth):
            break
        depth = best
    return bottleneck, *[(src == k) & ~bottleneck for k in range(len(_OFFSETS))]


class _Fill(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, grad_steps: int) -> torch.Tensor:  # type: ignore[override]
        qf = q if q.dtype in (torch.float32, torch.float64) else q.float()  # fp16 under AMP: fill in fp32
        qr = torch.round(qf * LEVELS) / LEVELS
        o = outside(qr)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(*_tree(o, 1 - qr, border(qr), grad_steps))
        ctx.grad_steps = grad_steps
        return torch.maximum(1 - o, qf).to(q.dtype)  # the rounding never takes paint away

    @staticmethod
    def backward(ctx, grad_p: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        bottleneck, *masks = ctx.saved_tensors
        g_p = grad_p.float()
        total = g_p  # dL/dp gathered from the pass-through children, grad_steps tree levels deep
        # a pass-through child c at (y, x) whose o comes from (y + dy, x + dx) hands its gathered gradient there
        zero = torch.zeros_like(g_p)
        for _ in range(ctx.grad_steps):
            acc = g_p
            for (dy, dx), mk in zip(_OFFSETS, masks):
                acc = acc + _shifted(torch.where(mk, total, zero), -dy, -dx)
            total = acc
        return torch.where(bottleneck, total, zero).to(grad_p.dtype), None


def fill(q: torch.Tensor, grad_steps: int = 16) -> torch.Tensor:
    """p = max(q, 1 - outside(q)): q (B, 1, H, W) in [0, 1] with every region it encloses painted too."""
    return _Fill.apply(q, grad_steps)
