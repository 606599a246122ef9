"""The fill layer (nn/fill.py) and the net that paints at any size: exactness on closed walls, the leak through a
gap, gradients against finite differences, and a model given inputs of several sizes."""

import numpy as np
import pytest
import torch

from polycolor.config.training import ModelConfig
from polycolor.nn import fill as fill_mod
from polycolor.nn.fill import fill
from polycolor.nn.model import ConditionalUNet, to_size
from polycolor.training.trainer import rescale_factor, rescaled


def ring(size: int, gap: bool = False) -> torch.Tensor:
    """(1, 1, size, size) walls: a 1 px square ring at a quarter of the side from each edge, a 3 px gap if asked."""
    q = torch.zeros(1, 1, size, size)
    a, b = size // 4, size - size // 4
    q[..., a:b + 1, a] = q[..., a:b + 1, b] = 1
    q[..., a, a:b + 1] = q[..., b, a:b + 1] = 1
    if gap:
        q[..., a, size // 2 - 1:size // 2 + 2] = 0
    return q


@pytest.mark.parametrize("size", [16, 40, 128, 300])
def test_a_closed_ring_is_filled_at_any_size_and_nothing_outside(size):
    p = fill(ring(size))
    a, b = size // 4, size - size // 4
    inside = torch.zeros_like(p, dtype=torch.bool)
    inside[..., a:b + 1, a:b + 1] = True
    assert torch.equal(p > 0.5, inside)


def test_a_gap_lets_the_outside_in():
    p = fill(ring(64, gap=True))
    assert p[0, 0, 32, 32] < 0.5 and p[0, 0, 16, 16] > 0.5  # the inside leaks, the wall stays painted


def test_the_fill_only_adds_paint():
    q = torch.rand(3, 1, 37, 29, generator=torch.Generator().manual_seed(0))
    assert (fill(q) >= q).all()


def test_the_coarse_to_fine_start_reaches_the_same_fixed_point_as_plain_iteration():
    q = (torch.rand(2, 1, 96, 96, generator=torch.Generator().manual_seed(3)) > 0.6).float() * 0.9
    plain = fill_mod._converge(fill_mod.border(q) * (1 - q), 1 - q, fill_mod.border(q))
    assert torch.equal(fill_mod.outside(q), plain)


def test_gradients_match_finite_differences(monkeypatch):
    # with the openness rounded to LEVELS the forward is piecewise constant and the backward passes the rounding
    # straight through; with levels far finer than eps the two agree exactly
    monkeypatch.setattr(fill_mod, "LEVELS", 2**40)
    torch.manual_seed(0)
    q = torch.rand(2, 1, 9, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 9, 9, dtype=torch.float64)
    (fill(q, grad_steps=200) * w).sum().backward()
    eps, num = 1e-6, torch.zeros_like(q)
    with torch.no_grad():
        for i in range(q.numel()):
            d = torch.zeros(q.numel(), dtype=torch.float64)
            d[i] = eps
            d = d.view_as(q)
            num.view(-1)[i] = ((fill(q + d) * w).sum() - (fill(q - d) * w).sum()) / (2 * eps)
    assert torch.allclose(q.grad, num, atol=1e-6)


def native_model(fill_on: bool) -> ConditionalUNet:
    torch.manual_seed(0)
    cfg = ModelConfig(widths=(4, 8), embed_dim=8, head="composite", work_size=16, native_width=4, fill=fill_on)
    return ConditionalUNet(cfg, ("red",), 32).eval()


@pytest.mark.parametrize("fill_on", [False, True])
@pytest.mark.parametrize("shape", [(8, 8), (32, 32), (64, 48), (97, 130)])
def test_a_native_head_paints_at_the_input_size(fill_on, shape):
    model = native_model(fill_on)
    x = torch.rand(2, 3, *shape) * 2 - 1
    with torch.no_grad():
        out = model(x, torch.zeros(2, dtype=torch.long), torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]))
    assert model.paints_at_input_size
    assert out.image.shape == (2, 3, *shape) and out.mask_logits.shape == (2, 1, *shape)
    assert (out.wall_logits is not None) == fill_on


def test_to_size_keeps_a_thin_line_when_shrinking():
    x = torch.ones(1, 3, 64, 64)
    x[..., 31, :] = -1  # a 1 px black line on an odd row: plain subsampling at stride 2 drops it
    assert (to_size(x, 32)[0, 0] < 0).any(dim=1).sum() == 1


def test_rescaled_batches_keep_inputs_and_targets_aligned():
    x = torch.ones(2, 3, 8, 8)
    y = torch.ones(2, 3, 8, 8)
    x[..., 3, 3] = -1
    y[..., 2:5, 2:5] = -1
    x2, y2 = rescaled(x, y, 2.0)
    assert x2.shape[-1] == 16 and bool((x2[..., 6:8, 6:8] == -1).all())
    xh, yh = rescaled(x, y, 0.5)
    assert xh.shape[-1] == 4 and xh[0, 0, 1, 1] == -1 and yh[0, 0, 1, 1] == -1 and yh[0, 0, 2, 2] == -1
    assert rescaled(x, y, 1.0)[0] is x


def test_the_rescale_factor_depends_on_seed_epoch_and_step_only():
    factors = (0.5, 1.0, 2.0)
    draws = [rescale_factor(factors, 0, 1, s) for s in range(60)]
    assert draws == [rescale_factor(factors, 0, 1, s) for s in range(60)]
    assert set(draws) == set(factors)
    assert rescale_factor((1.0,), 5, 5, 5) == 1.0
    assert np.isclose(np.mean([f == 2.0 for f in draws]), 1 / 3, atol=0.2)


def test_the_in_place_neighbour_max_is_the_padded_one():
    """_neighbour_max (views, no padding) gives the bytes of the max over _shifted's zero-padded neighbours."""
    g = torch.Generator().manual_seed(0)
    o = torch.rand(3, 1, 17, 23, generator=g)
    seed = fill_mod.border(o) * torch.rand(3, 1, 17, 23, generator=g)
    padded = seed
    for dy, dx in fill_mod._OFFSETS:
        padded = torch.maximum(padded, fill_mod._shifted(o, dy, dx))
    assert torch.equal(fill_mod._neighbour_max(o, seed), padded)
