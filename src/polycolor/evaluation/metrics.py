"""Evaluation metrics, each defined once: per-sample values, their aggregation, and inference latency.

Everything here is pure (numpy in, numbers or a DataFrame out) except `latency_ms_p50`, which times a callable.
Images are uint8 (H, W, 3) RGB, a target and a prediction of the same size. Every aggregate reported for a set is
the mean over its samples of the per-sample value (not pooled over pixels), except `psnr_min`.

Definitions (docs/evaluation.md copies these):
  white / painted  A pixel is *white* when all three channels are >= WHITE_MIN (240); every other pixel is
                   *painted* (polycolor.images.painted_mask, the one definition, which says why 240).
  true polygon     The painted pixels of the target (fill and outline: the Ayna targets colour the outline too).
  PSNR             10 log10(255^2 / MSE) on the uint8 values (MAX = 255), per image; identical images (MSE = 0)
                   and anything above it are capped at PSNR_CAP = 100 dB so that means stay finite.
                   Reported as the mean and the minimum over images.
  SSIM             skimage.metrics.structural_similarity(target, pred, channel_axis=-1, data_range=255), defaults
                   otherwise (7x7 uniform window, shrunk to the largest odd size that fits smaller images).
  MAE, MSE         Mean absolute / squared difference over all pixels and channels, on the [0, 1] scale (value/255).
  colour accuracy  Share of samples whose *painted colour* is the requested colour. The painted colour is the mean
                   RGB of the prediction over the true polygon; it is matched to the nearest (Euclidean in RGB) of
                   these candidates: the requested colour, the 8 Ayna colours, and white (255, 255, 255). A sample
                   is correct when the nearest candidate is the requested colour; ties go to the requested colour.
                   White is a candidate so that a polygon left unpainted never counts as (say) yellow. Samples with
                   an empty true polygon have no painted colour and are left out of the mean.
  painted label    For the confusion matrix: the label of that nearest candidate, i.e. an Ayna colour name,
                   "white" (left unpainted) or "other" (the requested colour when it is not one of the 8 Ayna
                   colours: a #rrggbb or another CSS name). The requested label is the Ayna name whose RGB equals
                   the requested colour's, else "other".
  CIEDE2000        Mean over the true polygon's pixels of deltaE_ciede2000(rgb2lab(predicted pixel),
                   rgb2lab(requested colour)); 0 is a perfect colour, ~2.3 is a just-noticeable difference.
                   Left out of the mean for samples with an empty true polygon.
  IoU, Dice        Of the predicted painted mask against the true polygon: |P & T| / |P | T| and
                   2 |P & T| / (|P| + |T|); both are 1 when both masks are empty.
  bleeding         Share of the target's white (background) pixels that the prediction paints; 0 without background.
  boundary F1      Boundary pixels of each mask (skimage.segmentation.find_boundaries, mode="inner"). A predicted
                   boundary pixel is a hit when a true boundary pixel lies within BOUNDARY_TOLERANCE (2) pixels
                   in Chebyshev distance (binary dilation by a 3x3 square, twice), and the other way round for
                   recall; F1 = 2PR / (P + R). 1 when both boundaries are empty, 0 when only one is.
  latency          Milliseconds per call of the predictor on one image (batch 1), median over a few samples
                   after one warm-up call, timed with time.perf_counter; torch threads as configured.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import structural_similarity
from skimage.segmentation import find_boundaries

from polycolor.colours import AYNA_COLOURS, resolve_colour
from polycolor.images import PSNR_CAP, Predictor, painted_mask, psnr_per_image
BOUNDARY_TOLERANCE = 2  # pixels (Chebyshev) within which a boundary pixel counts as matched
WHITE_RGB = (255, 255, 255)
OTHER = "other"  # label of a requested colour that is not one of the 8 Ayna colours
UNPAINTED = "white"  # painted label of a polygon whose mean colour is nearest to white

# The per-set summary keys, in the order eval.json lists them (latency_ms_p50 and n are added by the caller).
SUMMARY_KEYS = ("psnr_mean", "psnr_min", "ssim", "mae", "mse", "colour_accuracy", "ciede2000", "iou", "dice",
                "bleeding", "boundary_f1")
# Per-sample columns that breakdowns average, and all columns of a score() table.
SAMPLE_METRICS = ("psnr", "ssim", "mae", "mse", "colour_correct", "ciede2000", "iou", "dice", "bleeding",
                  "boundary_f1")
SAMPLE_COLUMNS = ("index", "colour", "shape", "requested", "painted", *SAMPLE_METRICS)



def psnr(target: np.ndarray, pred: np.ndarray) -> float:
    """PSNR in dB on uint8 values with MAX = 255; identical images give PSNR_CAP (100 dB), the cap for all."""
    return psnr_per_image(target[None], pred[None])[0]


def ssim(target: np.ndarray, pred: np.ndarray) -> float:
    """Mean SSIM over the image and channels (skimage, channel_axis=-1, data_range=255)."""
    side = min(target.shape[0], target.shape[1])
    win = min(7, side if side % 2 else side - 1)  # skimage needs an odd window no larger than the image
    return float(structural_similarity(target, pred, channel_axis=-1, data_range=255, win_size=win))


def mae(target: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute difference on the [0, 1] scale."""
    return float(np.mean(np.abs(target.astype(np.float64) - pred.astype(np.float64)))) / 255.0


def mse(target: np.ndarray, pred: np.ndarray) -> float:
    """Mean squared difference on the [0, 1] scale."""
    return float(np.mean(((target.astype(np.float64) - pred.astype(np.float64)) / 255.0) ** 2))


def colour_label(colour: str) -> str:
    """The confusion-matrix label of a requested colour: the Ayna name with its exact RGB, else "other"."""
    rgb = resolve_colour(colour)
    for name, value in AYNA_COLOURS.items():
        if value == rgb:
            return name
    return OTHER


def colour_candidates(colour: str) -> list[tuple[str, tuple[int, int, int]]]:
    """(label, rgb) candidates a painted colour is matched against: the requested colour first (it wins ties),
    then the Ayna colours not equal to it, then white."""
    rgb = resolve_colour(colour)
    out = [(colour_label(colour), rgb)]
    out += [(name, value) for name, value in AYNA_COLOURS.items() if value != rgb]
    if rgb != WHITE_RGB:
        out.append((UNPAINTED, WHITE_RGB))
    return out


def mean_colour(pred: np.ndarray, region: np.ndarray) -> np.ndarray | None:
    """Mean RGB (3,) float of pred over region (H, W) bool; None when the region is empty."""
    if not region.any():
        return None
    return pred[region].astype(np.float64).mean(axis=0)


def painted_colour(pred: np.ndarray, region: np.ndarray, colour: str) -> tuple[str | None, bool | None]:
    """(painted label, correct) of a prediction whose true polygon is `region`; (None, None) for an empty region.

    correct is True when the mean predicted colour over the region is nearest to the requested colour among
    colour_candidates(colour).
    """
    mean = mean_colour(pred, region)
    if mean is None:
        return None, None
    candidates = colour_candidates(colour)
    dists = [float(np.sum((mean - np.asarray(rgb, dtype=np.float64)) ** 2)) for _, rgb in candidates]
    best = int(np.argmin(dists))  # argmin takes the first of equals: the requested colour wins ties
    return candidates[best][0], best == 0


def ciede2000(pred: np.ndarray, region: np.ndarray, colour: str) -> float:
    """Mean CIEDE2000 over region (H, W) bool between the predicted pixels and the requested colour; NaN if empty."""
    if not region.any():
        return float("nan")
    pixels = pred[region].astype(np.float64)[None] / 255.0  # (1, K, 3) in [0, 1]
    ref = np.asarray(resolve_colour(colour), dtype=np.float64)[None, None] / 255.0  # (1, 1, 3)
    return float(np.mean(deltaE_ciede2000(rgb2lab(pixels), rgb2lab(ref))))


def iou(true_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """|P & T| / |P | T| of two (H, W) bool masks; 1 when both are empty."""
    union = int(np.logical_or(true_mask, pred_mask).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(true_mask, pred_mask).sum()) / union


def dice(true_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """2 |P & T| / (|P| + |T|) of two (H, W) bool masks; 1 when both are empty."""
    total = int(true_mask.sum()) + int(pred_mask.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(true_mask, pred_mask).sum()) / total


def bleeding(true_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """Share of the true background (~true_mask) that the prediction paints; 0 when there is no background."""
    background = ~true_mask
    n = int(background.sum())
    if n == 0:
        return 0.0
    return int(np.logical_and(background, pred_mask).sum()) / n


def boundary_f1(true_mask: np.ndarray, pred_mask: np.ndarray, tolerance: int = BOUNDARY_TOLERANCE) -> float:
    """F1 of the masks' inner boundaries, matched within `tolerance` pixels (Chebyshev distance)."""
    tb = find_boundaries(true_mask, mode="inner")
    pb = find_boundaries(pred_mask, mode="inner")
    nt, np_ = int(tb.sum()), int(pb.sum())
    if nt == 0 and np_ == 0:
        return 1.0
    if nt == 0 or np_ == 0:
        return 0.0
    square = np.ones((3, 3), dtype=bool)  # one dilation step grows by 1 px in Chebyshev distance
    tb_near = ndimage.binary_dilation(tb, structure=square, iterations=tolerance) if tolerance else tb
    pb_near = ndimage.binary_dilation(pb, structure=square, iterations=tolerance) if tolerance else pb
    precision = int(np.logical_and(pb, tb_near).sum()) / np_
    recall = int(np.logical_and(tb, pb_near).sum()) / nt
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def sample_metrics(target: np.ndarray, pred: np.ndarray, colour: str) -> dict[str, float | str | None]:
    """Every per-sample metric of one (H, W, 3) uint8 pair, plus the requested and painted labels."""
    if target.shape != pred.shape:
        raise ValueError(f"target {target.shape} and prediction {pred.shape} differ in shape")
    true_mask = painted_mask(target)  # (H, W) the true polygon
    pred_mask = painted_mask(pred)  # (H, W)
    painted, correct = painted_colour(pred, true_mask, colour)
    return {
        "requested": colour_label(colour),
        "painted": painted,
        "psnr": psnr(target, pred),
        "ssim": ssim(target, pred),
        "mae": mae(target, pred),
        "mse": mse(target, pred),
        "colour_correct": float("nan") if correct is None else float(correct),
        "ciede2000": ciede2000(pred, true_mask, colour),
        "iou": iou(true_mask, pred_mask),
        "dice": dice(true_mask, pred_mask),
        "bleeding": bleeding(true_mask, pred_mask),
        "boundary_f1": boundary_f1(true_mask, pred_mask),
    }


def score(targets: np.ndarray, preds: np.ndarray, colours: Sequence[str],
          shapes: Sequence[str | None] | None = None) -> pd.DataFrame:
    """Per-sample metrics of (N, H, W, 3) uint8 targets and predictions: one row per sample.

    Columns (SAMPLE_COLUMNS): index, colour (as requested), shape ("unknown" when None), requested and painted
    labels, then SAMPLE_METRICS.
    """
    if targets.shape != preds.shape:
        raise ValueError(f"targets {targets.shape} and predictions {preds.shape} differ in shape")
    if len(colours) != len(targets):
        raise ValueError(f"{len(targets)} targets but {len(colours)} colours")
    shapes = list(shapes) if shapes is not None else [None] * len(targets)
    rows = []
    for i, (t, p, c) in enumerate(zip(targets, preds, colours)):
        rows.append({"index": i, "colour": c, "shape": shapes[i] or "unknown", **sample_metrics(t, p, c)})
    return pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS))


def _mean(values: pd.Series) -> float | None:
    """Mean ignoring NaN; None when nothing is left (JSON has no NaN)."""
    v = values.dropna()
    return float(v.mean()) if len(v) else None


def summarise(samples: pd.DataFrame) -> dict[str, float | None]:
    """The SUMMARY_KEYS of a set from its per-sample rows (see the module docstring for each definition)."""
    if samples.empty:
        raise ValueError("cannot summarise an empty set")
    out: dict[str, float | None] = {
        "psnr_mean": _mean(samples["psnr"]),
        "psnr_min": float(samples["psnr"].min()),
        "colour_accuracy": _mean(samples["colour_correct"]),
    }
    for key in ("ssim", "mae", "mse", "ciede2000", "iou", "dice", "bleeding", "boundary_f1"):
        out[key] = _mean(samples[key])
    return {k: out[k] for k in SUMMARY_KEYS}


def breakdown(samples: pd.DataFrame, by: str | list[str]) -> pd.DataFrame:
    """Mean of SAMPLE_METRICS per group (e.g. by="requested" or "shape"), with the group's sample count `n`."""
    grouped = samples.groupby(by, sort=True, dropna=False)
    table = grouped[list(SAMPLE_METRICS)].mean()
    table.insert(0, "n", grouped.size())
    return table.reset_index()


def latency_ms_p50(predict: Predictor, inputs: np.ndarray, colours: Sequence[str], samples: int = 3,
                   warm_up: bool = True) -> float:
    """Median milliseconds of predict() on one image (batch 1) over the first `samples` images, after a warm-up
    call unless the caller has just run predict on these inputs (first-call allocations and lazy init are not
    latency; the median drops one slow first call at a new batch shape)."""
    n = min(samples, len(inputs))
    if n == 0:
        raise ValueError("latency needs at least one image")
    if warm_up:
        predict(inputs[:1], [colours[0]])
    times = []
    for i in range(n):
        start = time.perf_counter()
        predict(inputs[i:i + 1], [colours[i]])
        times.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(times))
