"""Pixel coordinates that every CPU computes alike: the one home of the rounding that the data stages rely on.

The data stages must write the same bytes on any machine (docs/reproducibility.md). IEEE-754 float64 +, -, *, /
and sqrt, element by element, give the same bits everywhere; sin and cos do not (numpy's SIMD kernels, glibc and
other libms may differ in the last ulp), nor do BLAS / matmul and torch's float kernels (their summation order and
FMA use depend on the instruction set). So geometry is computed element-wise in float64, with sin/cos from the
scalar libm, and a coordinate that picks a pixel by rounding (augment's sample coordinates) is first snapped to a
1/GRID px grid, ties up: where exact arithmetic puts it on a pixel edge (a centre at 63.5 px, a turn by 0 or 90
degrees) float noise of either sign gives the same pixel, and elsewhere a last-ulp difference (~1e-14 px) moves a
pixel only if the exact coordinate lies within that distance of a rounding edge.
"""

from __future__ import annotations

import math

import numpy as np

# Coordinates are rounded to 1/GRID px before they pick a pixel: a power of two, so snapped values are exact in
# float64; 1e-6 px is far above float noise (~1e-14 px) and far below any distance that matters to a picture.
GRID = 2**20


def snap(x: np.ndarray | float) -> np.ndarray:
    """x (px, any shape) rounded to the nearest multiple of 1/GRID, ties up; float64, exactly representable."""
    return np.floor(np.asarray(x, dtype=np.float64) * GRID + 0.5) / GRID


def nearest_pixel(x: np.ndarray) -> np.ndarray:
    """Index of the pixel whose centre is nearest to coordinate x (px, pixel centres at integers; any shape):
    x snapped to the grid, then rounded half up. int64, same shape."""
    return np.floor(snap(x) + 0.5).astype(np.int64)


def cos_sin(angle_deg: float) -> tuple[float, float]:
    """(cos, sin) of an angle in degrees, from the scalar libm (no SIMD dispatch); exact at multiples of 90."""
    quarter, rest = divmod(float(angle_deg), 90.0)
    if rest == 0.0:  # exact turns: cos(pi / 2) would be 6e-17, not 0
        return ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))[int(quarter) % 4]
    a = math.radians(angle_deg)
    return math.cos(a), math.sin(a)


def rotate(points: np.ndarray, angle_deg: float) -> np.ndarray:
    """points (..., 2) as (x, y), y down, turned by angle_deg about the origin (counter-clockwise on screen for a
    positive angle), element-wise: no matmul, whose BLAS kernel differs per CPU."""
    c, s = cos_sin(angle_deg)
    x, y = points[..., 0], points[..., 1]
    return np.stack([x * c + y * s, y * c - x * s], axis=-1)
