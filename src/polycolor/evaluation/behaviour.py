"""Behavioural (CheckList-style invariance) tests of a painter: what must not change when the input changes a
certain way.

  rot_flip       turning the input by 90, 180 or 270 degrees or flipping it left-right or up-down turns or flips
                 the painted mask the same way;
  colour_change  painting the same outline in another colour paints the same mask;
  all_white      an all-white input of the sample's size, in the sample's colour, paints nothing;
  shift          moving the input by a random (dy, dx) that keeps the polygon inside the frame (at least one of
                 them nonzero) moves the painted mask by the same amount.

Each behaviour is reported twice:
  <name>         the mean over samples (and, for rot_flip, over the five transforms) of how far it holds: the IoU of
                 the mask painted from the changed input and the mask the change predicts (1 when both are empty);
                 for all_white, 1 - the share of the blank image painted. A good network reads about 0.99 here, a
                 net that ignores the outline about 0.5; one pixel of 32 samples moves it by about 1e-4, so a gate
                 on it measures the network, not a coin flip.
  <name>_exact   the share of samples for which it holds exactly, every pixel (rot_flip: all five transforms).

The painted mask is metrics.painted_mask of the prediction. Pure: a predictor and arrays in, shares out.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from polycolor.data.ayna import SplitArrays
from polycolor.evaluation.metrics import Predictor, painted_mask

BEHAVIOURS = ("rot_flip", "colour_change", "all_white", "shift")

# (transform of an (N, H, W, 3) batch, the same transform of one (H, W) mask)
TRANSFORMS: tuple[tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]], ...] = (
    (lambda b: np.rot90(b, 1, axes=(1, 2)), lambda m: np.rot90(m, 1)),
    (lambda b: np.rot90(b, 2, axes=(1, 2)), lambda m: np.rot90(m, 2)),
    (lambda b: np.rot90(b, 3, axes=(1, 2)), lambda m: np.rot90(m, 3)),
    (lambda b: b[:, :, ::-1], lambda m: m[:, ::-1]),
    (lambda b: b[:, ::-1], lambda m: m[::-1]),
)


def masks(predict: Predictor, inputs: np.ndarray, colours: list[str]) -> np.ndarray:
    """(N, H, W) bool painted masks of predict(inputs, colours)."""
    preds = predict(np.ascontiguousarray(inputs), colours)
    return np.stack([painted_mask(p) for p in preds]) if len(preds) else np.zeros(inputs.shape[:3], dtype=bool)


def other_colours(colours: list[str]) -> list[str]:
    """For each sample a different colour from the same list (the next one that differs), so an embedding model
    can paint it too; the sample's own colour when the list holds only one."""
    out = []
    for i, c in enumerate(colours):
        others = [colours[(i + k) % len(colours)] for k in range(1, len(colours))]
        out.append(next((o for o in others if o != c), c))
    return out


def shifts(targets: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Per sample a (dy, dx), not both 0 where there is room, that keeps the target's painted pixels in the frame."""
    out = []
    for t in targets:
        rows, cols = np.nonzero(painted_mask(t))
        if len(rows) == 0:
            out.append((0, 0))
            continue
        h, w = t.shape[:2]
        room_y, room_x = (-int(rows.min()), h - 1 - int(rows.max())), (-int(cols.min()), w - 1 - int(cols.max()))
        for _ in range(20):  # a few redraws to avoid (0, 0)
            dy, dx = int(rng.integers(room_y[0], room_y[1] + 1)), int(rng.integers(room_x[0], room_x[1] + 1))
            if (dy, dx) != (0, 0):
                break
        out.append((dy, dx))
    return out


def agreement(got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """(N,) IoU of two (N, H, W) bool mask stacks, sample by sample; 1 where both are empty."""
    inter = (got & expected).sum(axis=(1, 2))
    union = (got | expected).sum(axis=(1, 2))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def behaviour_shares(predict: Predictor, arrays: SplitArrays, rng: np.random.Generator) -> dict[str, float]:
    """{behaviour: mean agreement, behaviour_exact: share that holds exactly} for BEHAVIOURS, plus n; see the
    module docstring."""
    inputs, colours = arrays.inputs, list(arrays.colours)
    n = len(inputs)
    base = masks(predict, inputs, colours)  # (N, H, W)
    agree: dict[str, np.ndarray] = {}  # behaviour -> (N,) or (T, N) agreement in [0, 1]
    agree["rot_flip"] = np.stack([agreement(masks(predict, batch_t(inputs), colours),
                                            np.stack([mask_t(m) for m in base]))
                                  for batch_t, mask_t in TRANSFORMS])  # (5, N)
    agree["colour_change"] = agreement(masks(predict, inputs, other_colours(colours)), base)
    white = masks(predict, np.full_like(inputs, 255), colours)
    agree["all_white"] = 1.0 - white.mean(axis=(1, 2))
    moves = shifts(arrays.targets, rng)
    # np.roll is a shift here: the polygon stays inside, so only white wraps around
    moved = np.stack([np.roll(inputs[i], moves[i], axis=(0, 1)) for i in range(n)])
    agree["shift"] = agreement(masks(predict, moved, colours),
                               np.stack([np.roll(base[i], moves[i], axis=(0, 1)) for i in range(n)]))
    out: dict[str, float] = {}
    for k in BEHAVIOURS:
        out[k] = float(agree[k].mean())
        exact = agree[k] == 1.0
        out[f"{k}_exact"] = float((exact.all(axis=0) if exact.ndim == 2 else exact).mean())
    return {**out, "n": n}
