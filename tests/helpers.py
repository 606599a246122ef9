"""Checks only the tests use: they describe what the data must look like, the library never needs them."""

from __future__ import annotations

import numpy as np

from polycolor.images import WHITE, painted_mask


def format_problems(inp: np.ndarray, tgt: np.ndarray) -> list[str]:
    """What makes a pair differ from the Ayna look; empty when it matches.

    inp, tgt: uint8 (H, W, 3). The Ayna look: the input holds exactly white and black; the target holds exactly
    white and one other colour; every black outline pixel of the input is coloured in the target (the fill covers
    the outline). Used on real and synthetic data alike and after augmentation.
    """
    problems = []
    if inp.shape != tgt.shape:
        return [f"input {inp.shape} and target {tgt.shape} differ in shape"]
    white = (WHITE, WHITE, WHITE)
    in_vals = np.unique(inp.reshape(-1, 3), axis=0)
    if {tuple(v) for v in in_vals.tolist()} != {(0, 0, 0), white}:
        problems.append(f"input should hold exactly black and white, holds {len(in_vals)} values")
    tgt_vals = np.unique(tgt.reshape(-1, 3), axis=0)
    if len(tgt_vals) != 2 or white not in {tuple(v) for v in tgt_vals.tolist()}:
        problems.append(f"target should hold exactly white and one colour, holds {len(tgt_vals)} values")
    uncovered = int((painted_mask(inp) & ~painted_mask(tgt)).sum())  # (H, W) outline pixels left white
    if uncovered:
        problems.append(f"{uncovered} outline pixels are not covered by the target's fill")
    return problems
