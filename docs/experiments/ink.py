"""The painter's ink threshold on inputs that are not two-valued (docs/performance.md item 21).

    PYTHONPATH=src python docs/experiments/ink.py [--n 48]

JPEG: generated outlines (128 px, widths 1-6, a third gappy, a third wobbly) through PIL JPEG at quality 60 / 80 /
95; per threshold, the mean and largest number of pixels per image whose ink differs from the clean image's.
Anti-aliased: closed polygons drawn 1-3 px wide at 4x and box-downsampled (grey edges); a net's mask (the polygon's
pixels covered more than half, then shifted by a pixel, three ways) snapped at 64 px with the ink at each threshold;
pixels painted outside / missing inside the polygon's more-than-half-covered pixels, summed over the cases.
No model is needed: this measures ink detection and snapping alone.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
from PIL import Image, ImageDraw

from polycolor.config.data import IngestConfig
from polycolor.data.synth import generate
from polycolor.painting.snap import ink_mask, snap_to_outline

THRESHOLDS = (64, 128, 192, 240)  # 240: images.painted_mask, the data's definition, which the painter used before


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def anti_aliased(points: list[tuple[float, float]], width: int, fill: bool, size: int = 64, k: int = 4) -> np.ndarray:
    im = Image.new("L", (size * k, size * k), 255)
    draw = ImageDraw.Draw(im)
    pts = [(x * k, y * k) for x, y in points]
    if fill:
        draw.polygon(pts, fill=0)
    draw.line([*pts, pts[0], pts[1]], fill=0, width=width * k, joint="curve")
    return np.repeat(np.asarray(im.resize((size, size), Image.BOX))[..., None], 3, axis=-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48)
    args = ap.parse_args()
    geometry = IngestConfig(image_size=128, outline_width=(1, 6), gap_fraction=0.3, wobble_fraction=0.3)
    inputs = generate(geometry, args.n, 7).inputs
    print("JPEG: pixels per image whose ink differs from the clean image's, mean / max")
    print(f"{'quality':<9}" + "".join(f"{'< ' + str(t):>14}" for t in THRESHOLDS))
    for quality in (60, 80, 95):
        cells = []
        for t in THRESHOLDS:
            d = [int((ink_mask(jpeg(x, quality), t) != ink_mask(x, t)).sum()) for x in inputs]
            cells.append(f"{np.mean(d):.1f} / {max(d)}")
        print(f"{quality:<9}" + "".join(f"{c:>14}" for c in cells))
    polygons = ([(10.3, 12.6), (52.2, 9.1), (40.7, 50.4)], [(12.5, 12.5), (50.5, 12.5), (50.5, 50.5), (12.5, 50.5)],
                [(8.2, 30.1), (30.3, 6.4), (55.6, 30.9), (31.2, 57.7)])
    print("\nAnti-aliased, snapped at 64 px: pixels painted outside / missing inside, summed over 27 cases")
    for t in THRESHOLDS:
        extra = missing = 0
        for points in polygons:
            for width in (1, 2, 3):
                x = anti_aliased(points, width, fill=False)
                target = anti_aliased(points, width, fill=True).min(axis=-1) < 128
                for net in (target, np.roll(target, 1, 0), np.roll(target, (-1, 1), (0, 1))):
                    out = snap_to_outline(net, ink_mask(x, t), 4, resized=True)
                    extra += int((out & ~target).sum())
                    missing += int((~out & target).sum())
        print(f"< {t:<6}{extra:>8} / {missing}")


if __name__ == "__main__":
    main()
